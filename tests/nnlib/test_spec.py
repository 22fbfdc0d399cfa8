"""Network specs: the text form, JSON/TOML files, and the shape check before training."""

from __future__ import annotations

import json

import numpy as np
import pytest

import nnlib
from nnlib.architecture import LAYERS
from nnlib.spec import SpecError, build, format_spec, load_spec, parse_spec

WINE = "Standardize -> Linear(13, 32) -> ReLU -> Linear(32, 3) -> Softmax"


def test_text_form_builds_the_network_and_infers_standardize_size():
    net, out = build(parse_spec(WINE), [13], rng=0)
    assert out == [3]
    assert [type(m).__name__ for m in net.modules] == \
        ["Standardize", "Linear", "ReLU", "Linear", "Softmax"]
    assert net.modules[0].features == 13
    assert format_spec(net) == \
        "Standardize(13) -> Linear(13, 32) -> ReLU -> Linear(32, 3) -> Softmax"


def test_keywords_literals_and_a_convolution_chain():
    spec = ("Scale(0.0625) -> Conv1D(3, 8, 4, stride=2) -> LeakyReLU(alpha=0.2) -> "
            "MaxPool1D(2) -> Flatten -> Linear(4, 10, dtype='float64') -> LogSoftmax")
    net, out = build(parse_spec(spec), [8, 8], rng=0)
    assert out == [10]
    assert net.modules[5].weight.dtype == np.float64
    assert net.modules[2].alpha == 0.2


def test_same_seed_same_weights():
    first, _ = build(parse_spec(WINE), [13], rng=5)
    second, _ = build(parse_spec(WINE), [13], rng=5)
    for name, value in first.parameters().items():
        assert value.tobytes() == second.parameters()[name].tobytes()


def test_every_nnlib_layer_is_allowed():
    for name in LAYERS:
        assert parse_spec(name if name != "Linear" else "Linear(1, 1)")


@pytest.mark.parametrize(("spec", "message"), [
    ("", "the spec is empty"),
    ("Linear(13, 3) -> -> Softmax", "layer 1: empty"),
    ("Linear(13, 3) ->", "layer 1: empty"),
    ("Lineer(13, 3)", "unknown layer type 'Lineer' (did you mean 'Linear'?)"),
    ("Linear(13, n)", "layer 0 (Linear): 'Linear(13, n)' has an argument that is not a literal"),
    ("Linear(13, 3 + 1)", "not a literal"),
    ("Linear(**{'in_features': 1})", "not a literal"),
    ("__import__('os').system('true')", "is not Name or Name(arguments)"),
    ("Linear(13, 3)[0]", "is not Name or Name(arguments)"),
    ("ReLU(3)", "layer 0 (ReLU): too many positional arguments"),
    ("Linear(13, 3, colour=1)", "unexpected keyword argument 'colour'"),
    ("Linear(13, 3, rng=1)", "rng is not a spec argument"),
    ("Sequential", "Sequential cannot be nested in the text form"),
])
def test_parse_errors_name_the_layer(spec, message):
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert message in str(info.value)


@pytest.mark.parametrize(("spec", "shape", "message"), [
    ("Standardize -> Linear(12, 32) -> ReLU", [13],
     "layer 1 (Linear(12, 32)) takes 12 features on its last axis, but gets samples of "
     "shape [13]"),
    ("Linear(13, 32) -> ReLU -> Linear(16, 3)", [13], "layer 2 (Linear(16, 3))"),
    ("Conv1D(3, 8, 4)", [64], "layer 0 (Conv1D(3, 8, 4)) takes samples of shape [length, "
                              "channels], but gets [64]"),
    ("Conv1D(3, 4, 4)", [8, 8], "takes 4 channels"),
    ("Conv1D(9, 8, 4)", [8, 8], "has a window of 9, longer than the input length 8"),
    ("Flatten -> MaxPool1D(2)", [8, 8], "layer 1 (MaxPool1D(2, stride=2))"),
    ("Linear(13, -1)", [13], "layer 0 (Linear): Linear needs positive sizes"),
    ("Linear(13.5, 3)", [13], "layer 0 (Linear): in_features=13.5 is not allowed"),
    ("Linear(13, 3, dtype='int8')", [13], "dtype='int8' is not allowed"),
])
def test_shapes_that_do_not_chain_are_refused_naming_the_layer(spec, shape, message):
    with pytest.raises(SpecError) as info:
        build(parse_spec(spec), shape, rng=0)
    assert message in str(info.value)


def test_json_and_toml_files_in_the_artifact_form(tmp_path):
    layers = [{"type": "Standardize", "config": {"features": 13}},
              {"type": "Sequential", "config": {"modules": [
                  {"type": "Linear", "config": {"in_features": 13, "out_features": 3}},
                  {"type": "TanH"}]}},
              {"type": "Softmax", "config": {}}]
    (tmp_path / "a.json").write_text(json.dumps(layers))
    (tmp_path / "b.json").write_text(json.dumps({"architecture": layers}))
    (tmp_path / "c.toml").write_text(
        '[[architecture]]\ntype = "Standardize"\n'
        '[[architecture]]\ntype = "Linear"\nconfig = {in_features = 13, out_features = 3}\n'
        '[[architecture]]\ntype = "Softmax"\n')
    for name in ("a.json", "b.json", "c.toml"):
        net, out = build(load_spec(str(tmp_path / name)), [13], rng=0)
        assert out == [3] and type(net.modules[-1]) is nnlib.Softmax


def test_an_artifacts_own_architecture_is_a_spec(tmp_path):
    net = nnlib.Sequential(nnlib.Linear(4, 3, rng=0), nnlib.Softmax())
    from nnlib.architecture import describe

    (tmp_path / "arch.json").write_text(json.dumps(describe(net.modules)))
    rebuilt, out = build(load_spec(str(tmp_path / "arch.json")), [4], rng=0)
    assert out == [3] and format_spec(rebuilt) == format_spec(net)


@pytest.mark.parametrize(("text", "message"), [
    ("[1, 2]", "layer 0 must be"),
    ('{"layers": []}', "expected a list of layers"),
    ('[{"type": "Linear", "config": [13, 3]}]', "config must be a table"),
    ('[{"type": "Sequential", "config": {}}]', "Sequential): config must be"),
    ('[{"type": "Sequential", "config": {"modules": [{"type": "Nope"}]}}]',
     "layer 0.0: unknown layer type 'Nope'"),
    ("{", "not valid JSON"),
])
def test_bad_spec_files(tmp_path, text, message):
    (tmp_path / "s.json").write_text(text)
    with pytest.raises(SpecError, match=r"s\.json") as info:
        load_spec(str(tmp_path / "s.json"))
    assert message in str(info.value)
