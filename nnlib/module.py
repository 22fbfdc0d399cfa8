"""The Module base class of the course API, and Sequential."""

from __future__ import annotations

import numpy as np


def _owner(cls: type, name: str) -> type | None:
    """Return the class of ``cls.__mro__`` that defines ``name``."""
    return next((base for base in cls.__mro__ if name in vars(base)), None)


class Module:
    """Base class of every layer, activation and network.

    A module maps an input array to an output array with :meth:`forward`, and back-propagates
    with two methods that receive the *input* of the forward pass and the gradient ``delta``
    of the loss with respect to the module's *output*:

    - :meth:`backward_update_gradient` adds :math:`\\partial L / \\partial \\theta` to the
      gradients of the module's parameters (it accumulates: call :meth:`zero_grad` between
      steps);
    - :meth:`backward_delta` returns :math:`\\partial L / \\partial x`, with the shape of
      ``input``.

    Parameters and their gradients live in two dicts with the same keys; :meth:`parameters`
    and :meth:`gradients` return those live arrays, so writing into them changes the module.
    """

    def __init__(self) -> None:
        self._parameters: dict[str, np.ndarray] = {}
        self._gradients: dict[str, np.ndarray] = {}

    #: True when forward returns a new array that nothing else references, which the next
    #: module of a Sequential may then overwrite (see :meth:`Sequential.predict`).
    output_is_new: bool = False
    #: ``predict_inplace(X) -> X``: the forward pass computed by overwriting ``X``, for
    #: modules that can (ReLU); None for the others.
    predict_inplace = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # A fast path (predict, predict_inplace, output_is_new) is a promise about one
        # forward, so it is trusted only from the class that defines that forward: a
        # subclass overriding forward alone (a Clip(ReLU)) is never bypassed by one.
        forward = _owner(cls, "forward")
        inplace = _owner(cls, "predict_inplace") is forward
        cls._predict_inplace = cls.predict_inplace if inplace else None
        cls._output_is_new = cls.output_is_new and _owner(cls, "output_is_new") is forward
        if forward is cls and "predict" not in vars(cls):
            # forward *as* predict: the same answer, one Python call less per layer of
            # Sequential.predict (about 3% of a batch-1 forward pass).
            cls.predict = cls.forward

    def forward(self, X: np.ndarray) -> np.ndarray:
        """Compute the module's output for the batch ``X``."""
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Compute the output for inference: like :meth:`forward`, caching nothing."""
        return self.forward(X)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return self.forward(X)

    def backward_update_gradient(self, input: np.ndarray, delta: np.ndarray) -> None:
        """Add the gradient of the loss w.r.t. the parameters to :meth:`gradients`.

        Parameter-free modules have nothing to add.
        """

    def backward_delta(self, input: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Return the gradient of the loss w.r.t. ``input`` (same shape as ``input``)."""
        raise NotImplementedError

    def update_parameters(self, learning_rate: float = 1e-3) -> None:
        r"""Take one gradient-descent step in place.

        .. math:: \theta \leftarrow \theta - \eta \, \nabla_\theta L
        """
        for name, param in self._parameters.items():
            param -= learning_rate * self._gradients[name]

    def zero_grad(self) -> None:
        """Reset every accumulated gradient to zero, in place."""
        for grad in self._gradients.values():
            grad.fill(0)

    def parameters(self) -> dict[str, np.ndarray]:
        """Return the live parameter arrays by name."""
        return dict(self._parameters)

    def gradients(self) -> dict[str, np.ndarray]:
        """Return the live gradient arrays by name (same keys as :meth:`parameters`)."""
        return dict(self._gradients)

    def config(self) -> dict:
        """Return the constructor arguments as plain data (used to save the architecture)."""
        return {}

    def extra_repr(self) -> str:
        """Return the settings shown inside ``repr(module)``."""
        return ", ".join(f"{key}={value!r}" for key, value in self.config().items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def _add_parameter(self, name: str, value: np.ndarray) -> None:
        self._parameters[name] = value
        self._gradients[name] = np.zeros_like(value)


class Sequential(Module):
    """A chain of modules, each fed the output of the previous one.

    ``forward`` keeps the input of every module so that :meth:`backward` can run
    ``backward_update_gradient`` and ``backward_delta`` through the chain in reverse.
    :meth:`predict` runs the same chain without keeping anything, for inference.

    Parameters are named ``"<index>.<name>"`` (``"0.weight"``), as in PyTorch.
    """

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for index, module in enumerate(modules):
            if not isinstance(module, Module):
                raise TypeError(f"Sequential item {index} is not a Module: {module!r}")
        self.modules: list[Module] = list(modules)
        self._inputs: list[np.ndarray] = []

    def forward(self, X: np.ndarray) -> np.ndarray:
        """Run every module in order, keeping their inputs for :meth:`backward`."""
        inputs = []
        for module in self.modules:
            inputs.append(X)
            X = module.forward(X)
        self._inputs = inputs
        return X

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Run every module in order, keeping nothing (safe to call from several threads).

        A module with a ``predict_inplace`` (ReLU) overwrites the output of the module
        before it when that output is a new array (``output_is_new``: Linear, Conv1D, ...),
        each trusted only from the class that defines the module's ``forward``,
        so inference allocates one buffer per layer, not two; the caller's ``X`` is never
        written. (At batch 1024 the second buffer cost more in page faults than the ReLU.)
        """
        previous = None  # the module whose output X is; None: X is the caller's
        for module in self.modules:
            inplace = module._predict_inplace
            if inplace is not None and previous is not None and previous._output_is_new:
                X = inplace(X)
            else:
                X = module.predict(X)
            previous = module
        return X

    def backward(self, delta: np.ndarray, *, input_grad: bool = True) -> np.ndarray | None:
        """Back-propagate ``delta`` through the last :meth:`forward`, accumulating gradients.

        Returns the gradient of the loss w.r.t. the network's input. With
        ``input_grad=False`` it returns None and stops at the first module that has
        parameters, skipping the ``backward_delta`` calls whose result nothing would use
        (a training step's case; the first Linear's or Conv1D's is the costliest of all).
        """
        if len(self._inputs) != len(self.modules):
            raise RuntimeError("Sequential.backward needs a forward pass first")
        modules, inputs = self.modules, self._inputs
        first = 0
        if not input_grad:
            first = next((i for i, m in enumerate(modules) if m.parameters()), len(modules))
        for index in range(len(modules) - 1, first - 1, -1):
            modules[index].backward_update_gradient(inputs[index], delta)
            if input_grad or index > first:
                delta = modules[index].backward_delta(inputs[index], delta)
        return delta if input_grad else None

    def _inputs_for(self, input: np.ndarray) -> list[np.ndarray]:
        # Reuse the cached forward when it was run on this very array; otherwise rebuild it.
        if not self._inputs or self._inputs[0] is not input:
            self.forward(input)
        return self._inputs

    def backward_update_gradient(self, input: np.ndarray, delta: np.ndarray) -> None:
        """Accumulate every module's parameter gradients for the batch ``input``."""
        inputs = self._inputs_for(input)
        for module, x in zip(reversed(self.modules), reversed(inputs), strict=True):
            module.backward_update_gradient(x, delta)
            delta = module.backward_delta(x, delta)

    def backward_delta(self, input: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Return the gradient of the loss w.r.t. ``input``, leaving gradients alone."""
        inputs = self._inputs_for(input)
        for module, x in zip(reversed(self.modules), reversed(inputs), strict=True):
            delta = module.backward_delta(x, delta)
        return delta

    def update_parameters(self, learning_rate: float = 1e-3) -> None:
        for module in self.modules:
            module.update_parameters(learning_rate)

    def zero_grad(self) -> None:
        for module in self.modules:
            module.zero_grad()

    def parameters(self) -> dict[str, np.ndarray]:
        return {
            f"{index}.{name}": value
            for index, module in enumerate(self.modules)
            for name, value in module.parameters().items()
        }

    def gradients(self) -> dict[str, np.ndarray]:
        return {
            f"{index}.{name}": value
            for index, module in enumerate(self.modules)
            for name, value in module.gradients().items()
        }

    def __repr__(self) -> str:
        lines = [f"  ({index}): {module!r}" for index, module in enumerate(self.modules)]
        body = "\n".join(line.replace("\n", "\n  ") for line in lines)
        return f"Sequential(\n{body}\n)" if lines else "Sequential()"


class WeightedModule(Module):
    """A layer with a ``weight`` and an optional ``bias``, initialised as PyTorch does."""

    def _init_parameters(self, weight_shape: tuple[int, ...], fan_in: int, bias: bool,
                         dtype, rng: np.random.Generator | int | None) -> None:
        r"""Draw the weight, then the bias (the weight's last size), uniform in
        :math:`\pm 1/\sqrt{\text{fan\_in}}`."""
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(rng)
        bound = 1 / np.sqrt(fan_in)

        def draw(shape: tuple[int, ...]) -> np.ndarray:
            return rng.uniform(-bound, bound, size=shape).astype(self.dtype)

        self._add_parameter("weight", draw(weight_shape))
        if bias:
            self._add_parameter("bias", draw(weight_shape[-1:]))

    @property
    def weight(self) -> np.ndarray:
        return self._parameters["weight"]

    @property
    def bias(self) -> np.ndarray | None:
        return self._parameters.get("bias")
