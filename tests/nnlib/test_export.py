"""ONNX export: checked models whose ONNX Runtime outputs match nnlib's within 1e-5."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest

import nnlib
from nnlib import cli
from nnlib.architecture import LAYERS
from nnlib.export import CONVERTERS, OPSET, to_onnx
from nnlib.preprocessing import Standardize
from tests.helpers import ROOT

TOLERANCE = 1e-5  # max abs error on probabilities


def run_onnx(proto: onnx.ModelProto, X: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, {"input": X})[0]


def max_error(model: nnlib.Sequential, metadata: dict, X: np.ndarray) -> float:
    proto = to_onnx(model, metadata)
    expected = cli.probabilities(model, metadata["output"], X)
    got = run_onnx(proto, X)
    got = np.exp(got) if metadata["output"] == "log_softmax" else got
    assert got.shape == expected.shape
    return float(np.max(np.abs(got.astype(np.float64) - expected)))


def metadata_for(input_shape: list[int], n_out: int, output: str) -> dict:
    return {"name": "random", "version": "1", "input_shape": input_shape,
            "labels": [str(i) for i in range(n_out)], "output": output,
            "description": "a random network", "dataset": {"name": "none"},
            "metrics": {}, "created": "2026-01-01T00:00:00Z"}


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn", "wine-mlp"])
def test_shipped_models_agree_with_onnx_runtime(name):
    model, metadata = nnlib.load(ROOT / "models" / f"{name}.joblib")
    if name == "wine-mlp":
        X = cli.load_bundled("wine").X
    else:
        X = cli.load_data()[0].reshape(-1, *metadata["input_shape"])
    assert max_error(model, metadata, X) <= TOLERANCE


def _random_networks() -> dict[str, tuple[nnlib.Sequential, list[int], str]]:
    rng = np.random.default_rng(0)
    standardize = Standardize(8).fit(rng.normal(3, 2, size=(50, 8)))
    activations = [nnlib.TanH(), nnlib.Sigmoid(), nnlib.StableSigmoid(), nnlib.ReLU(),
                   nnlib.LeakyReLU(0.1), nnlib.Softplus()]
    nets = {
        f"mlp-{type(a).__name__}": (nnlib.Sequential(
            nnlib.Scale(0.5), nnlib.Linear(8, 16, rng=rng), a, nnlib.Linear(16, 5, rng=rng),
            nnlib.Softmax()), [8], "softmax")
        for a in activations
    }
    nets["standardize-nested-no-bias"] = (nnlib.Sequential(
        standardize, nnlib.Sequential(nnlib.Linear(8, 6, bias=False, rng=rng), nnlib.TanH()),
        nnlib.Linear(6, 3, rng=rng), nnlib.LogSoftmax()), [8], "log_softmax")
    nets["float64"] = (nnlib.Sequential(
        nnlib.Linear(8, 6, dtype=np.float64, rng=rng), nnlib.ReLU(),
        nnlib.Linear(6, 4, dtype=np.float64, rng=rng), nnlib.Softmax()), [8], "softmax")
    nets["conv-stride-pool-flatten"] = (nnlib.Sequential(
        nnlib.Scale(1 / 16), nnlib.Conv1D(3, 8, 5, stride=2, rng=rng), nnlib.ReLU(),
        nnlib.MaxPool1D(2, stride=1), nnlib.Conv1D(2, 5, 4, bias=False, rng=rng),
        nnlib.MaxPool1D(1), nnlib.Flatten(), nnlib.Linear(12, 3, rng=rng),
        nnlib.LogSoftmax()), [11, 8], "log_softmax")
    return nets


RANDOM = _random_networks()


@pytest.mark.parametrize("name", RANDOM)
def test_random_networks_of_every_layer_type_agree_with_onnx_runtime(name):
    net, input_shape, output = RANDOM[name]
    n_out = net.predict(np.zeros((1, *input_shape), np.float32)).shape[1]
    X = np.random.default_rng(1).normal(2, 4, size=(64, *input_shape)).astype(np.float32)
    assert max_error(net, metadata_for(input_shape, n_out, output), X) <= TOLERANCE


def test_the_random_networks_cover_every_layer_type_and_every_type_has_a_mapping():
    seen = set()

    def walk(module):
        seen.add(type(module).__name__)
        for child in getattr(module, "modules", []):
            walk(child)

    for net, _, _ in RANDOM.values():
        walk(net)
    assert set(LAYERS) <= seen
    assert all(any(issubclass(layer.cls, cls) for cls in CONVERTERS)
               for layer in LAYERS.values())


def test_model_is_checked_with_opset_and_metadata_properties():
    model, metadata = nnlib.load(ROOT / "models" / "wine-mlp.joblib")
    proto = to_onnx(model, metadata)
    onnx.checker.check_model(proto, full_check=True)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", OPSET)]
    properties = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert properties == json.loads(json.dumps(metadata))
    assert proto.graph.input[0].name == "input" and proto.graph.output[0].name == "output"
    ops = {node.op_type for node in proto.graph.node}
    assert ops <= {"Sub", "Div", "MatMul", "Add", "Relu", "Softmax", "Identity"}


def test_export_command_writes_a_model_onnx_runtime_runs(tmp_path, capsys):
    out = tmp_path / "sub" / "wine.onnx"
    assert cli.main(["export", str(ROOT / "models" / "wine-mlp.joblib"), "--onnx",
                     str(out)]) == 0
    assert f"ONNX opset {OPSET}" in capsys.readouterr().out
    model, metadata = nnlib.load(ROOT / "models" / "wine-mlp.joblib")
    X = cli.load_bundled("wine").X
    expected = cli.probabilities(model, metadata["output"], X)
    assert np.max(np.abs(run_onnx(onnx.load(out), X) - expected)) <= TOLERANCE
