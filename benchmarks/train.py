"""Training speed: time per epoch of nnlib's ``fit`` against the same networks in PyTorch, on
scikit-learn's digits, batch 32, float32, Adam, one thread.

    .venv/bin/python benchmarks/train.py               # print the table
    .venv/bin/python benchmarks/train.py --write       # also update benchmarks/RESULTS.md
    .venv/bin/python benchmarks/train.py --profile     # cProfile of nnlib's epochs

- The networks, the training set (the training split and its one-pixel shifts), the losses
  and the optimiser are those of ``nnlib-train`` (``nnlib.cli``): the MLP trains its logits
  with ``CrossEntropyLoss``, the CNN its ``LogSoftmax`` output with ``NLLLoss``;
  ``Adam(1e-3)``.
- PyTorch starts from the same weights and sees the batches in the same order: epoch ``e``
  is ``fit(..., epochs=1, seed=e)`` for nnlib (one ``Adam`` object carried across the calls)
  and ``np.random.default_rng(e).permutation(n)`` for PyTorch. Its loop does what ``fit``
  does per batch: index the batch, forward, loss, zero the gradients, backward, step, and
  sum the loss and the hits for the epoch's figures. The CNN gets PyTorch's native
  (N, C, L) layout (the data is transposed once, before timing) and the Linear after
  Flatten has its rows permuted to match: the same function of the same weights.
- PyTorch runs twice, with its default Adam and with ``Adam(fused=True)``; the ratio is
  against the faster of the two.
- Epochs alternate between the runs; the figure is the median over the epochs.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys

import _util  # first: pins every thread pool to one thread before numpy loads
import numpy as np

from nnlib import (
    Adam,
    Conv1D,
    Flatten,
    Linear,
    LogSoftmax,
    MaxPool1D,
    ReLU,
    Scale,
    cli,
    fit,
    one_hot,
)

torch = _util.optional("torch")

TARGETS = {"mlp": 1.0, "cnn": 1.5}  # nnlib / PyTorch time per epoch, at most
BATCH = 32
LR = 1e-3


def training_set(arch: str) -> tuple[np.ndarray, np.ndarray]:
    """What ``nnlib-train`` trains on: the training split with its shifted copies (its
    default augmentation), raw pixels in the arch's input shape, integer labels."""
    X, y = cli.load_data()
    train_index, _ = cli.split_indices(y, 0.2, 0)
    X, y = cli.shift_augment(X[train_index], y[train_index])
    X = X.reshape(len(X), *cli.ARCHITECTURES[arch][1])
    return np.ascontiguousarray(X), y


if torch is not None:

    class TorchScale(torch.nn.Module):
        """nnlib's ``Scale``."""

        def __init__(self, factor: float) -> None:
            super().__init__()
            self.factor = factor

        def forward(self, x):
            return x * self.factor


def torch_network(modules: list, input_shape: tuple[int, ...]):
    """The same layers as ``torch.nn`` modules holding copies of the nnlib weights."""
    nn = torch.nn
    layers, length, channels, after_flatten = [], None, None, False
    if len(input_shape) == 2:
        length, channels = input_shape
    for m in modules:
        if isinstance(m, Scale):
            layers.append(TorchScale(m.factor))
        elif isinstance(m, Linear):
            weight = m.weight
            if after_flatten and length is not None:  # nnlib flattens (L, C), torch (C, L)
                weight = weight.reshape(length, channels, -1).transpose(1, 0, 2)
                weight = weight.reshape(length * channels, -1)
            after_flatten = False
            layer = nn.Linear(m.in_features, m.out_features)
            layer.weight.data = torch.from_numpy(np.ascontiguousarray(weight.T))
            layer.bias.data = torch.from_numpy(m.bias.copy())
            layers.append(layer)
        elif isinstance(m, Conv1D):
            layer = nn.Conv1d(m.chan_in, m.chan_out, m.k_size, stride=m.stride)
            layer.weight.data = torch.from_numpy(np.ascontiguousarray(m.weight.transpose(2, 1, 0)))
            layer.bias.data = torch.from_numpy(m.bias.copy())
            layers.append(layer)
            length, channels = (length - m.k_size) // m.stride + 1, m.chan_out
        elif isinstance(m, ReLU):
            layers.append(nn.ReLU())
        elif isinstance(m, MaxPool1D):
            layers.append(nn.MaxPool1d(m.k_size, m.stride))
            length = (length - m.k_size) // m.stride + 1
        elif isinstance(m, Flatten):
            layers.append(nn.Flatten())
            after_flatten = True
        elif isinstance(m, LogSoftmax):
            layers.append(nn.LogSoftmax(dim=-1))
        else:
            raise SystemExit(f"train.py: no PyTorch equivalent for {m!r}")
    return nn.Sequential(*layers)


def nnlib_epoch(net, loss, X, Y, optimizer, seed: int) -> tuple[float, float]:
    """Seconds and mean loss of one ``fit`` epoch whose order is ``default_rng(seed)``."""
    start = _util.clock()
    history = fit(net, loss, X, Y, optimizer=optimizer, epochs=1, batch_size=BATCH,
                  seed=seed, progress=False)
    return _util.clock() - start, history.loss[0]


def torch_epoch(model, loss_fn, optimizer, X, y, seed: int) -> tuple[float, float]:
    """The same epoch in PyTorch: same permutation, same per-batch work as ``fit``."""
    start = _util.clock()
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(X)))
    total, hits = 0.0, 0
    for first in range(0, len(X), BATCH):
        index = order[first : first + BATCH]
        xb, yb = X[index], y[index]
        out = model(xb)
        loss = loss_fn(out, yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(index)
        hits += int((out.argmax(dim=1) == yb).sum())
    return _util.clock() - start, total / len(X)


def setup(arch: str):
    """Both libraries' (epoch function, its arguments) for ``arch``, from the same weights."""
    X, y = training_set(arch)
    net = cli.build_network(arch, seed=0)
    trained, loss = cli._objective(net)
    Y = one_hot(y, len(cli.LABELS))
    runs = {"nnlib": (nnlib_epoch, (trained, loss, X, Y, Adam(LR)))}
    if torch is not None:
        log_probs = isinstance(trained.modules[-1], LogSoftmax)
        loss_fn = torch.nn.NLLLoss() if log_probs else torch.nn.CrossEntropyLoss()
        X_t = torch.from_numpy(np.ascontiguousarray(X.transpose(0, 2, 1)) if X.ndim == 3 else X)
        y_t = torch.from_numpy(y)
        # Adam as PyTorch runs it by default on CPU (one tensor at a time), and its fused
        # CPU kernel (fused=True), the fastest it has.
        for name, options in (("torch", {}), ("torch fused", {"fused": True})):
            model = torch_network(trained.modules, cli.ARCHITECTURES[arch][1])
            optimizer = torch.optim.Adam(model.parameters(), lr=LR, **options)
            runs[name] = (torch_epoch, (model, loss_fn, optimizer, X_t, y_t))
    return runs


def bench(arch: str, epochs: int) -> dict[str, list[float]]:
    """Alternate the libraries epoch by epoch; return their per-epoch times and losses."""
    runs = setup(arch)
    times = {name: [] for name in runs}
    losses = {name: [] for name in runs}
    for epoch in range(epochs):
        names = list(runs) if epoch % 2 == 0 else list(runs)[::-1]
        for name in names:
            fn, args = runs[name]
            seconds, loss = fn(*args, seed=epoch)
            times[name].append(seconds)
            losses[name].append(loss)
    return times, losses


def profile(arch: str, epochs: int) -> str:
    """cProfile of nnlib's epochs (on the benchmark's clock): the functions with the most
    own time, numpy's ufuncs counted in their callers'."""
    fn, args = setup(arch)["nnlib"]
    profiler = cProfile.Profile(_util.clock)
    profiler.enable()
    for epoch in range(epochs):
        fn(*args, seed=epoch)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(14)
    return out.getvalue()



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30,
                        help="epochs per library and network (default 30)")
    parser.add_argument("--clock", choices=sorted(_util.CLOCKS), default="cpu",
                        help="cpu: CPU time of the benchmark thread (default; robust on a "
                             "busy machine); wall: elapsed time")
    parser.add_argument("--write", action="store_true",
                        help="write the table into benchmarks/RESULTS.md")
    parser.add_argument("--profile", action="store_true",
                        help="print a cProfile of nnlib's epochs instead of timing")
    args = parser.parse_args(argv)
    _util.use_clock(args.clock)
    if torch is not None:
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    if args.profile:
        for arch in ("mlp", "cnn"):
            print(f"## {arch}: {args.epochs} nnlib epochs\n{profile(arch, args.epochs)}")
        return 0

    n_samples = len(training_set("mlp")[0])
    n_digits = len(cli.split_indices(cli.load_data()[1], 0.2, 0)[0])
    lines = ["Environment:", ""] + [f"- {line}" for line in _util.environment(torch)]
    if torch is None:
        lines.append("- torch not installed (`pip install '.[bench]'`): nnlib alone")
    lines += [f"- command: `.venv/bin/python benchmarks/train.py --epochs {args.epochs} "
              f"--clock {args.clock}`",
              f"- {args.clock} time, median over {args.epochs} alternating epochs of the "
              f"training set of nnlib-train ({n_samples} samples: the {n_digits} training "
              f"digits and their one-pixel shifts, {-(-n_samples // BATCH)} batches of "
              f"{BATCH})", ""]
    header = ["network", "nnlib / epoch"]
    if torch is not None:
        header += ["PyTorch / epoch", "PyTorch, fused Adam / epoch",
                   "nnlib / faster PyTorch", "target", "mean loss of the last epoch "
                   "(nnlib, PyTorch, fused)"]
    rows, verdicts = [], []
    for arch in ("mlp", "cnn"):
        times, losses = bench(arch, args.epochs)
        median = {name: float(np.median(values)) for name, values in times.items()}
        row = [arch, _util.fmt_time(median["nnlib"])]
        if torch is not None:
            best = min(median["torch"], median["torch fused"])
            ratio, target = median["nnlib"] / best, TARGETS[arch]
            ok = ratio <= target
            row += [_util.fmt_time(median["torch"]), _util.fmt_time(median["torch fused"]),
                    f"{ratio:.2f}x {'✓' if ok else '✗'}", f"<= {target}x",
                    ", ".join(f"{losses[name][-1]:.4f}" for name in
                              ("nnlib", "torch", "torch fused"))]
            verdicts.append((f"{arch}: nnlib/PyTorch {ratio:.2f}x per epoch (target <= "
                             f"{target}x)", ok))
        rows.append(row)
        print("  " + " | ".join(row), file=sys.stderr, flush=True)
    lines += [_util.markdown_table(header, rows), "", "Targets:", ""]
    lines += [f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in verdicts]
    block = "\n".join(lines)
    print(block)
    if args.write:
        _util.write_results("train.py", "nnlib training", block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
