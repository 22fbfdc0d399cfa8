"""Inference speed of nnlib's ``predict`` against a hand-written numpy floor, PyTorch and ONNX
Runtime, on the shipped networks, at batch 1, 32 and 1024, float32, one thread.

    .venv/bin/python benchmarks/forward.py             # print the tables
    .venv/bin/python benchmarks/forward.py --write     # also update benchmarks/RESULTS.md

- *numpy floor* (the target's reference): the same operations on the same weights written
  inline by hand, in their fastest numpy form (in-place where possible, ``ndarray.dot``,
  ``ufunc.reduce``, the im2col view built on the input's buffer), with no module dispatch.
  It keeps the two operations nnlib's contract needs so that Softmax/LogSoftmax stay finite
  and silent for any finite input: the row-max subtraction under
  ``np.errstate(over="ignore")`` (about 0.9 µs, a fixed cost per call) and LogSoftmax's
  clamp at the dtype's lowest value.
- *bare numpy*: the floor without those two guards, to show what they cost.
- *PyTorch* (CPU) and *ONNX Runtime*, when installed (``pip install '.[bench]'``), run the
  same weights: PyTorch as ``torch.nn.functional`` calls in ``inference_mode`` (its
  cheapest eager path), ONNX Runtime on a graph built with ``onnx.helper``.
- Every candidate computes the same output (checked before timing). They are timed in
  alternating blocks in one process, and the figure is the median over the rounds. nnlib
  alternates with the two numpy versions in one group and with PyTorch and ONNX Runtime in
  another, each ratio coming from its own group: interleaved with the large libraries,
  whose runs evict the caches, every candidate is slower, the Python-heavy ones more
  (nnlib/floor reads 1-3% higher), which is a property of the benchmark, not of a server
  that runs one of them.
- ``Conv1D`` alone is compared with ``torch.nn.functional.conv1d`` and ONNX Runtime's
  ``Conv`` given their native (N, C, L) layout, so the transposes are not counted against
  them.
"""

from __future__ import annotations

import argparse
import sys

import _util  # first: pins every thread pool to one thread before numpy loads
import numpy as np

import nnlib
from nnlib import (
    Conv1D,
    Flatten,
    Linear,
    LogSoftmax,
    MaxPool1D,
    ReLU,
    Scale,
    Sequential,
    Softmax,
)

torch = _util.optional("torch")
ort = _util.optional("onnxruntime")
onnx = _util.optional("onnx") if ort is not None else None

BATCHES = (1, 32, 1024)
TARGET_FLOOR = 1.10
TARGET_ORT_MLP_B1 = 1.5
TARGET_TORCH_CONV_B1024 = 1.0


# --------------------------------------------------------------------------------------
# The networks


def shipped_networks() -> dict[str, tuple[Sequential, tuple[int, ...], str]]:
    """Return kind -> (network, input shape per sample, where it came from).

    The artifacts in ``models/`` when they are there; otherwise the same architectures built
    by ``nnlib.cli`` (untrained weights take the same time as trained ones).
    """
    found = {}
    for path in sorted((_util.ROOT / "models").glob("*.joblib")):
        artifact = nnlib.load(path)
        kind = "cnn" if any(isinstance(m, Conv1D) for m in _flat(artifact.model)) else "mlp"
        shape = tuple(artifact.metadata["input_shape"])
        found.setdefault(kind, (artifact.model, shape, f"models/{path.name}"))
    from nnlib import cli

    for kind in ("mlp", "cnn"):
        if kind not in found:
            found[kind] = (cli.build_network(kind, seed=0), tuple(cli.ARCHITECTURES[kind][1]),
                           f"nnlib.cli.build_network({kind!r}, seed=0)")
    return {kind: found[kind] for kind in ("mlp", "cnn")}


def _flat(net) -> list:
    if isinstance(net, Sequential):
        return [m for sub in net.modules for m in _flat(sub)]
    return [net]


def digits_inputs(shape: tuple[int, ...], batch: int) -> np.ndarray:
    """Real inputs: the first ``batch`` scikit-learn digits (raw pixels 0..16), float32."""
    try:
        from sklearn.datasets import load_digits
        data = load_digits().data.astype(np.float32)
    except ImportError:
        data = np.random.default_rng(0).integers(0, 17, (1797, 64)).astype(np.float32)
    reps = -(-batch // len(data))
    return np.ascontiguousarray(np.tile(data, (reps, 1))[:batch].reshape(batch, *shape))


# --------------------------------------------------------------------------------------
# The hand-written numpy floor: the same operations, inline, no dispatch, no guards


def _weights(layer):
    return layer.weight, layer.bias


def mlp_floor(net: Sequential, guarded: bool = True):
    """Scale -> (Linear -> ReLU)* -> Linear -> Softmax | LogSoftmax, written by hand.

    ``guarded``: with the two operations nnlib's contract needs for extreme logits (silent
    and finite for any finite input): the row-max subtraction under
    ``np.errstate(over="ignore")`` and LogSoftmax's clamp at the dtype's lowest value.
    """
    layers = _flat(net)
    lowest = np.finfo(np.float32).min
    scale = np.float32(layers[0].factor)
    linears = [_weights(m) for m in layers if isinstance(m, Linear)]
    hidden, (w_out, b_out) = linears[:-1], linears[-1]
    log = isinstance(layers[-1], LogSoftmax)
    expected = ([Scale] + [Linear, ReLU] * len(hidden)
                + [Linear, LogSoftmax if log else Softmax])
    if [type(m) for m in layers] != expected:
        raise SystemExit(f"forward.py: unexpected MLP architecture {layers}")

    def floor(x):
        h = x * scale
        for w, b in hidden:
            h = h.dot(w)
            h += b
            np.maximum(h, 0, out=h)
        z = h.dot(w_out)
        z += b_out
        z_max = np.maximum.reduce(z, axis=-1, keepdims=True)
        if guarded:
            with np.errstate(over="ignore"):
                z -= z_max
        else:
            z -= z_max
        if log:
            z -= np.log(np.add.reduce(np.exp(z), axis=-1, keepdims=True))
            if guarded:
                np.maximum(z, lowest, out=z)
            return z
        np.exp(z, out=z)
        z /= np.add.reduce(z, axis=-1, keepdims=True)
        return z

    return floor


def conv_floor(conv: Conv1D):
    """One Conv1D: im2col as a strided view of the contiguous input, one matmul, bias."""
    k, c_in, c_out, stride = conv.k_size, conv.chan_in, conv.chan_out, conv.stride
    w, b = conv.weight.reshape(k * c_in, c_out), conv.bias

    def floor(x):
        n, length, _ = x.shape
        l_out = (length - k) // stride + 1
        s_n, s_l, s_c = x.strides
        # Window l of a contiguous x is x[n, l*stride : l*stride + k, :], k*c_in consecutive
        # numbers: a view on x's buffer (np.ndarray is 10x cheaper than as_strided).
        cols = np.ndarray((n, l_out, k * c_in), x.dtype, x, 0, (s_n, s_l * stride, s_c))
        h = cols.reshape(n * l_out, k * c_in).dot(w)
        h += b
        return h.reshape(n, l_out, c_out)

    return floor


def cnn_floor(net: Sequential, guarded: bool = True):
    """Scale -> Conv1D -> ReLU -> MaxPool1D -> Flatten -> Linear -> (Log)Softmax, by hand
    (``guarded`` as for :func:`mlp_floor`)."""
    layers = _flat(net)
    lowest = np.finfo(np.float32).min
    types = [type(m) for m in layers]
    if types[:5] != [Scale, Conv1D, ReLU, MaxPool1D, Flatten] or types[5:-1] != [Linear]:
        raise SystemExit(f"forward.py: unexpected CNN architecture {layers}")
    scale = np.float32(layers[0].factor)
    conv = layers[1]
    k, c_in, c_out, stride = conv.k_size, conv.chan_in, conv.chan_out, conv.stride
    w_conv, b_conv = conv.weight.reshape(k * c_in, c_out), conv.bias
    pool_k, pool_s = layers[3].k_size, layers[3].stride
    if pool_k < 2:
        raise SystemExit("forward.py: the CNN floor expects a pooling window of 2 or more")
    w_out, b_out = _weights(layers[5])
    log = isinstance(layers[-1], LogSoftmax)

    def floor(x):
        x = x * scale
        n, length, _ = x.shape
        l_out = (length - k) // stride + 1
        s_n, s_l, s_c = x.strides
        cols = np.ndarray((n, l_out, k * c_in), x.dtype, x, 0, (s_n, s_l * stride, s_c))
        h = cols.reshape(n * l_out, k * c_in).dot(w_conv)
        h += b_conv
        np.maximum(h, 0, out=h)
        h = h.reshape(n, l_out, c_out)
        span = pool_s * ((l_out - pool_k) // pool_s) + 1
        pooled = np.maximum(h[:, 0:span:pool_s], h[:, 1 : 1 + span : pool_s])
        for offset in range(2, pool_k):
            np.maximum(pooled, h[:, offset : offset + span : pool_s], out=pooled)
        z = pooled.reshape(n, -1).dot(w_out)
        z += b_out
        z_max = np.maximum.reduce(z, axis=-1, keepdims=True)
        if guarded:
            with np.errstate(over="ignore"):
                z -= z_max
        else:
            z -= z_max
        if log:
            z -= np.log(np.add.reduce(np.exp(z), axis=-1, keepdims=True))
            if guarded:
                np.maximum(z, lowest, out=z)
            return z
        np.exp(z, out=z)
        z /= np.add.reduce(z, axis=-1, keepdims=True)
        return z

    return floor


# --------------------------------------------------------------------------------------
# PyTorch and ONNX Runtime on the same weights


def torch_network(net: Sequential):
    """The network as a chain of ``torch.nn.functional`` calls (numpy in, numpy out)."""
    F = torch.nn.functional
    steps, channels_first = [], False
    for m in _flat(net):
        if isinstance(m, Conv1D | MaxPool1D) and not channels_first:
            steps.append(lambda t: t.transpose(1, 2))
            channels_first = True
        if isinstance(m, Flatten) and channels_first:
            steps.append(lambda t: t.transpose(1, 2))
            channels_first = False
        if isinstance(m, Scale):
            steps.append(lambda t, f=m.factor: t * f)
        elif isinstance(m, Linear):
            w = torch.from_numpy(np.ascontiguousarray(m.weight.T))
            b = torch.from_numpy(m.bias)
            steps.append(lambda t, w=w, b=b: F.linear(t, w, b))
        elif isinstance(m, Conv1D):
            steps.append(_torch_conv(m))
        elif isinstance(m, ReLU):
            steps.append(F.relu)
        elif isinstance(m, MaxPool1D):
            steps.append(lambda t, k=m.k_size, s=m.stride: F.max_pool1d(t, k, s))
        elif isinstance(m, Flatten):
            steps.append(lambda t: t.reshape(t.shape[0], -1))
        elif isinstance(m, Softmax):
            steps.append(lambda t: F.softmax(t, dim=-1))
        elif isinstance(m, LogSoftmax):
            steps.append(lambda t: F.log_softmax(t, dim=-1))
        else:
            raise SystemExit(f"forward.py: no PyTorch equivalent for {m!r}")

    def run(x):
        with torch.inference_mode():
            t = torch.from_numpy(x)
            for step in steps:
                t = step(t)
            return t.numpy()

    return run


def _torch_conv(conv: Conv1D):
    w = torch.from_numpy(np.ascontiguousarray(conv.weight.transpose(2, 1, 0)))  # (O, C, K)
    b = torch.from_numpy(conv.bias)
    return lambda t: torch.nn.functional.conv1d(t, w, b, stride=conv.stride)


def torch_conv(conv: Conv1D):
    """``conv1d`` alone, fed (N, C, L) tensors: its native layout, no transpose counted."""
    run = _torch_conv(conv)

    def call(x_ncl):
        with torch.inference_mode():
            return run(x_ncl)

    return call


def onnx_graph(net: Sequential, sample_shape: tuple[int, ...]):
    """The network as an ONNX model built node by node with ``onnx.helper``."""
    helper, numpy_helper, TensorProto = onnx.helper, onnx.numpy_helper, onnx.TensorProto
    nodes, inits, name, counter, channels_first = [], [], "x", [0], False

    def new(op, inputs, **attrs):
        counter[0] += 1
        out = f"t{counter[0]}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def const(array):
        counter[0] += 1
        key = f"c{counter[0]}"
        inits.append(numpy_helper.from_array(np.asarray(array, np.float32), key))
        return key

    for m in _flat(net):
        if isinstance(m, Conv1D | MaxPool1D) and not channels_first:
            name, channels_first = new("Transpose", [name], perm=[0, 2, 1]), True
        if isinstance(m, Flatten) and channels_first:
            name, channels_first = new("Transpose", [name], perm=[0, 2, 1]), False
        if isinstance(m, Scale):
            name = new("Mul", [name, const(np.float32(m.factor))])
        elif isinstance(m, Linear):
            name = new("Add", [new("MatMul", [name, const(m.weight)]), const(m.bias)])
        elif isinstance(m, Conv1D):
            name = new("Conv", [name, const(m.weight.transpose(2, 1, 0)), const(m.bias)],
                       kernel_shape=[m.k_size], strides=[m.stride])
        elif isinstance(m, ReLU):
            name = new("Relu", [name])
        elif isinstance(m, MaxPool1D):
            name = new("MaxPool", [name], kernel_shape=[m.k_size], strides=[m.stride])
        elif isinstance(m, Flatten):
            name = new("Flatten", [name], axis=1)
        elif isinstance(m, Softmax):
            name = new("Softmax", [name], axis=-1)
        elif isinstance(m, LogSoftmax):
            name = new("LogSoftmax", [name], axis=-1)
        else:
            raise SystemExit(f"forward.py: no ONNX equivalent for {m!r}")
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes, "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *sample_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "classes"])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every onnxruntime of the last years reads
    onnx.checker.check_model(model)
    return model


def onnx_conv(conv: Conv1D):
    """``Conv`` alone, fed (N, C, L): ONNX's native layout."""
    helper, numpy_helper, TensorProto = onnx.helper, onnx.numpy_helper, onnx.TensorProto
    inits = [numpy_helper.from_array(np.ascontiguousarray(conv.weight.transpose(2, 1, 0)), "w"),
             numpy_helper.from_array(conv.bias, "b")]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[conv.k_size],
                            strides=[conv.stride])
    graph = helper.make_graph(
        [node], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", conv.chan_in, "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", conv.chan_out, "L_out"])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def ort_session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


# --------------------------------------------------------------------------------------
# Timing


def compare(candidates: dict, x: np.ndarray, rounds: int, reference: str = "nnlib"):
    """Check every candidate agrees with the reference on ``x``, then time them."""
    expected = candidates[reference](x)
    for name, fn in candidates.items():
        got = np.asarray(fn(x))
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
            raise SystemExit(f"forward.py: {name} disagrees with {reference} "
                             f"(max |diff| {np.max(np.abs(got - expected)):.3g})")
    return _util.interleaved({name: (lambda fn=fn: fn(x)) for name, fn in candidates.items()},
                             rounds)


def _ratio(value: float, target: float | None = None) -> str:
    text = f"{value:.2f}x"
    if target is not None:
        text += " ✓" if value <= target else " ✗"
    return text


def bench_networks(nets, rounds: int) -> tuple[str, list[str]]:
    header = ["model", "batch", "nnlib predict", "numpy floor", "nnlib / floor",
              "bare numpy", "nnlib / bare"]
    if torch is not None:
        header += ["PyTorch", "nnlib / PyTorch"]
    if ort is not None:
        header += ["ONNX Runtime", "nnlib / ORT"]
    rows, verdicts = [], []
    for kind, (net, shape, _) in nets.items():
        make_floor = mlp_floor if kind == "mlp" else cnn_floor
        numpy_group = {"nnlib": net.predict, "floor": make_floor(net),
                       "bare": make_floor(net, guarded=False)}
        library_group = {"nnlib": net.predict}
        if torch is not None:
            library_group["torch"] = torch_network(net)
        if ort is not None:
            library_group["ort"] = ort_session(onnx_graph(net, shape))
        for batch in BATCHES:
            x = digits_inputs(shape, batch)
            t = compare(numpy_group, x, rounds)
            t_lib = compare(library_group, x, rounds) if len(library_group) > 1 else {}
            vs_floor = t["nnlib"] / t["floor"]
            verdicts.append((f"{kind} batch {batch}: nnlib/floor {vs_floor:.2f}x "
                             f"(target <= {TARGET_FLOOR})", vs_floor <= TARGET_FLOOR))
            row = [kind, str(batch), _util.fmt_time(t["nnlib"]), _util.fmt_time(t["floor"]),
                   _ratio(vs_floor, TARGET_FLOOR), _util.fmt_time(t["bare"]),
                   _ratio(t["nnlib"] / t["bare"])]
            if torch is not None:
                row += [_util.fmt_time(t_lib["torch"]), _ratio(t_lib["nnlib"] / t_lib["torch"])]
            if ort is not None:
                vs_ort = t_lib["nnlib"] / t_lib["ort"]
                target = TARGET_ORT_MLP_B1 if (kind, batch) == ("mlp", 1) else None
                row += [_util.fmt_time(t_lib["ort"]), _ratio(vs_ort, target)]
                if target is not None:
                    verdicts.append((f"mlp batch 1: nnlib/ORT {vs_ort:.2f}x (target <= "
                                     f"{target})", vs_ort <= target))
            rows.append(row)
            print("  " + " | ".join(row), file=sys.stderr, flush=True)
    return _util.markdown_table(header, rows), verdicts


def bench_conv(nets, rounds: int) -> tuple[str, list[str]]:
    net, shape, _ = nets["cnn"]
    conv = next(m for m in _flat(net) if isinstance(m, Conv1D))
    header = ["batch", "nnlib Conv1D.predict", "numpy floor", "nnlib / floor"]
    if torch is not None:
        header += ["torch conv1d", "nnlib / torch"]
    if ort is not None:
        header += ["ORT Conv", "nnlib / ORT"]
    floor = conv_floor(conv)
    rows, verdicts = [], []
    for batch in BATCHES:
        x = digits_inputs(shape, batch) / np.float32(16)
        x_ncl = np.ascontiguousarray(x.transpose(0, 2, 1))
        t = compare({"nnlib": conv.predict, "floor": floor}, x, rounds)
        row = [str(batch), _util.fmt_time(t["nnlib"]), _util.fmt_time(t["floor"]),
               _ratio(t["nnlib"] / t["floor"])]
        others = _native_convs(conv, x, x_ncl)
        if others:
            t2 = _util.interleaved({"nnlib": lambda x=x: conv.predict(x), **others}, rounds)
            for name in others:
                target = TARGET_TORCH_CONV_B1024 if (name, batch) == ("torch", 1024) else None
                value = t2["nnlib"] / t2[name]
                row += [_util.fmt_time(t2[name]), _ratio(value, target)]
                if target is not None:
                    verdicts.append((f"Conv1D batch 1024: nnlib/torch conv1d {value:.2f}x "
                                     f"(target <= {target})", value <= target))
        rows.append(row)
        print("  " + " | ".join(row), file=sys.stderr, flush=True)
    return _util.markdown_table(header, rows), verdicts


def bench_breakdown(nets, rounds: int) -> str:
    """Where nnlib's time over the floor goes at small batches: the layers' own Python (each
    layer's predict in a bare loop) and what Sequential.predict adds (its in-place ReLU
    bookkeeping)."""
    header = ["model", "batch", "numpy floor", "layers in a bare loop", "Sequential.predict",
              "layers' Python", "Sequential's extra"]
    rows = []
    for kind, (net, shape, _) in nets.items():
        floor = mlp_floor(net) if kind == "mlp" else cnn_floor(net)
        modules = net.modules

        def layers(x, modules=modules):
            for module in modules:
                x = module.predict(x)
            return x

        for batch in BATCHES[:2]:
            x = digits_inputs(shape, batch)
            t = compare({"floor": floor, "layers": layers, "nnlib": net.predict}, x, rounds,
                        reference="nnlib")
            rows.append([kind, str(batch)] + [_util.fmt_time(t[k])
                                              for k in ("floor", "layers", "nnlib")]
                        + [f"{(t['layers'] - t['floor']) / t['floor']:+.1%}",
                           f"{(t['nnlib'] - t['layers']) / t['floor']:+.1%}"])
            print("  " + " | ".join(rows[-1]), file=sys.stderr, flush=True)
    return _util.markdown_table(header, rows)


def _native_convs(conv: Conv1D, x: np.ndarray, x_ncl: np.ndarray) -> dict:
    """Closures running PyTorch's and ORT's convolution on ``x_ncl``, checked against nnlib."""
    others = {}
    if torch is not None:
        run_torch, x_torch = torch_conv(conv), torch.from_numpy(x_ncl)
        others["torch"] = lambda: run_torch(x_torch)
    if ort is not None:
        run_ort = ort_session(onnx_conv(conv))
        others["ort"] = lambda: run_ort(x_ncl)
    expected = conv.predict(x).transpose(0, 2, 1)
    for name, fn in others.items():
        if not np.allclose(np.asarray(fn()), expected, rtol=1e-4, atol=1e-5):
            raise SystemExit(f"forward.py: {name} conv disagrees with nnlib")
    return others



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300,
                        help="alternating timing rounds per case (default 300)")
    parser.add_argument("--clock", choices=sorted(_util.CLOCKS), default="cpu",
                        help="cpu: CPU time of the benchmark thread (default; robust on a "
                             "busy machine); wall: elapsed time")
    parser.add_argument("--malloc", choices=["keep", "default"], default="keep",
                        help="keep: stop glibc from unmapping freed arrays, so page faults "
                             "do not fall on whichever candidate allocates next (default)")
    parser.add_argument("--write", action="store_true",
                        help="write the tables into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    _util.use_clock(args.clock)
    malloc_note = (_util.keep_freed_memory() if args.malloc == "keep"
                   else "malloc: glibc defaults (--malloc default)")
    if torch is not None:
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)

    nets = shipped_networks()
    lines = ["Environment:", ""] + [f"- {line}" for line in _util.environment(torch, ort)]
    missing = [name for name, module in (("torch", torch), ("onnxruntime", ort))
               if module is None]
    if missing:
        lines.append(f"- not installed (`pip install '.[bench]'`): {', '.join(missing)}")
    lines += ["- networks: " + "; ".join(f"{kind} = {src} {shape}"
                                         for kind, (_, shape, src) in nets.items())]
    lines += [f"- {malloc_note}",
              f"- command: `.venv/bin/python benchmarks/forward.py --rounds {args.rounds} "
              f"--clock {args.clock} --malloc {args.malloc}`",
              f"- {args.clock} time, median of {args.rounds} alternating rounds of about 2 ms "
              "each per cell",
              ""]
    table, verdicts = bench_networks(nets, args.rounds)
    breakdown = bench_breakdown(nets, args.rounds)
    conv_table, conv_verdicts = bench_conv(nets, args.rounds)
    verdicts += conv_verdicts
    lines += ["Whole networks (`Sequential.predict`):", "", table, "",
              "Where nnlib's time over the floor goes (percent of the floor):", "", breakdown,
              "",
              "`Conv1D` layer alone (PyTorch and ONNX Runtime fed their native (N, C, L) "
              "layout):", "", conv_table, "", "Targets:", ""]
    lines += [f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in verdicts]
    lines += ["", "Minor page faults per call while timing (worst cell): " + ", ".join(
        f"{name} {value:.1f}" for name, value in _util.faults_per_call.items())]
    block = "\n".join(lines)
    print(block)
    if args.write:
        _util.write_results("forward.py", "nnlib forward", block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
