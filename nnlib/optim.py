"""Optimisers that update a module's parameters in place from its accumulated gradients."""

from __future__ import annotations

import numpy as np

from .loss import Loss
from .module import Module, Sequential

__all__ = ["SGD", "Adam", "Optim", "Optimizer"]


class Optimizer:
    """Base class: ``step(module)`` updates ``module.parameters()`` from its gradients."""

    def __init__(self, lr: float) -> None:
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        self.lr = float(lr)
        self._state: dict[str, tuple[np.ndarray, ...]] = {}

    def step(self, module: Module) -> None:
        """Apply one update to every parameter of ``module``."""
        gradients = module.gradients()
        for name, param in module.parameters().items():
            self._update(name, param, gradients[name])

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({settings})"


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum and L2 weight decay (as PyTorch).

    .. math::
        g \leftarrow \nabla_\theta L + \lambda \theta, \quad
        v \leftarrow \mu v + g, \quad
        \theta \leftarrow \theta - \eta v

    Args:
        lr: learning rate :math:`\eta`.
        momentum: :math:`\mu`. Default: 0.
        weight_decay: :math:`\lambda`. Default: 0.
    """

    def __init__(self, lr: float = 1e-2, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)

    def _update(self, name, param, grad):
        if self.weight_decay:
            grad = grad + self.weight_decay * param
        if self.momentum:
            state = self._state.get(name)
            if state is None:
                velocity = grad.copy()  # PyTorch starts the buffer at the first gradient
                self._state[name] = (velocity,)
            else:
                (velocity,) = state
                velocity *= self.momentum
                velocity += grad
            grad = velocity
        param -= self.lr * grad


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015), bias-corrected.

    .. math::
        m \leftarrow \beta_1 m + (1 - \beta_1) g, \quad
        v \leftarrow \beta_2 v + (1 - \beta_2) g^2, \quad
        \theta \leftarrow \theta - \eta \frac{m / (1 - \beta_1^t)}
            {\sqrt{v / (1 - \beta_2^t)} + \epsilon}

    Args:
        lr: learning rate :math:`\eta`. Default: 1e-3.
        betas: :math:`(\beta_1, \beta_2)`. Default: (0.9, 0.999).
        eps: :math:`\epsilon`. Default: 1e-8.
    """

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        super().__init__(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self._t = 0

    def step(self, module: Module) -> None:
        self._t += 1
        super().step(module)

    def _update(self, name, param, grad):
        beta1, beta2 = self.betas
        state = self._state.get(name)
        if state is None:
            # m, v and a scratch array that takes every temporary below: the operations of
            # the formula in the same order (so the same bits), with no allocation per step.
            state = self._state[name] = (np.zeros_like(param), np.zeros_like(param),
                                         np.empty_like(param))
        m, v, scratch = state
        m *= beta1
        m += np.multiply(grad, 1 - beta1, out=scratch)
        v *= beta2
        v += np.multiply(np.multiply(grad, grad, out=scratch), 1 - beta2, out=scratch)
        bias1 = 1 - beta1**self._t
        bias2 = 1 - beta2**self._t
        denom = np.sqrt(v, out=scratch)
        denom *= 1 / np.sqrt(bias2)
        denom += self.eps
        param -= np.multiply(np.divide(m, denom, out=denom), self.lr / bias1, out=denom)


class Optim:
    """The course's training step: forward, loss, backward, update, in one call.

    Args:
        net: the network (a :class:`~nnlib.Sequential` or any module).
        loss: the loss.
        eps: learning rate used by ``net.update_parameters`` when no optimizer is given.
        optimizer: an :class:`Optimizer` to use instead of plain gradient descent.

    The gradient is that of the **mean** loss over the batch, so the learning rate does not
    depend on the batch size.
    """

    def __init__(self, net: Module, loss: Loss, eps: float = 1e-3,
                 optimizer: Optimizer | None = None) -> None:
        self.net = net
        self.loss = loss
        self.eps = float(eps)
        self.optimizer = optimizer

    def step(self, batch_x: np.ndarray, batch_y: np.ndarray) -> float:
        """Train on one batch; return its mean loss (before the update)."""
        return float(np.mean(self.train_batch(batch_x, batch_y)[0]))

    def train_batch(self, batch_x: np.ndarray, batch_y: np.ndarray):
        """Train on one batch; return the per-sample losses and the output, before the update."""
        yhat = self.net.forward(batch_x)
        losses = self.loss.forward(batch_y, yhat)
        delta = self.loss.backward(batch_y, yhat)
        delta *= delta.dtype.type(1 / len(batch_x))
        self.net.zero_grad()
        if getattr(type(self.net), "backward", None) is Sequential.backward:
            self.net.backward(delta, input_grad=False)  # nothing uses the input's gradient
        elif hasattr(self.net, "backward"):
            self.net.backward(delta)
        else:
            self.net.backward_update_gradient(batch_x, delta)
        if self.optimizer is None:
            self.net.update_parameters(self.eps)
        else:
            self.optimizer.step(self.net)
        return losses, yhat
