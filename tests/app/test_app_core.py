"""Settings, registry, validation and inference, without HTTP."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

import nnlib
from app import inference
from app.__main__ import parse_settings
from app.config import Settings
from app.errors import InferenceError, InvalidInputError, ModelNotFoundError
from app.inference import InferenceRunner
from app.registry import Registry, ServedModel
from app.repository import Repository
from app.validation import batch_from_json, check_batch
from tests.helpers import tiny_cnn, tiny_mlp

# --- settings ------------------------------------------------------------------------------


def test_settings_defaults(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("NNSERVE_"):
            monkeypatch.delenv(key)
    settings = Settings()
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.model_dir is None and settings.default_model is None
    assert settings.max_batch == 1024 and settings.max_body_bytes == 8 * 1024 * 1024
    assert settings.api_key is None and settings.cors_origins == []
    assert settings.log_format == "text" and settings.log_level == "info"


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NNSERVE_PORT", "9001")
    monkeypatch.setenv("NNSERVE_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("NNSERVE_MAX_BATCH", "8")
    monkeypatch.setenv("NNSERVE_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("NNSERVE_LOG_FORMAT", "json")
    monkeypatch.setenv("NNSERVE_API_KEY", "")
    settings = Settings()
    assert settings.port == 9001 and settings.model_dir == tmp_path and settings.max_batch == 8
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.log_format == "json" and settings.api_key is None


def test_cors_origins_as_a_json_list(monkeypatch):
    monkeypatch.setenv("NNSERVE_CORS_ORIGINS", '["*"]')
    assert Settings().cors_origins == ["*"]


def test_flags_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("NNSERVE_PORT", "9001")
    monkeypatch.setenv("NNSERVE_HOST", "0.0.0.0")
    monkeypatch.setenv("NNSERVE_LOG_LEVEL", "debug")
    settings = parse_settings(
        ["--port", "9002", "--workers", "3", "--model-dir", "/m", "--log-level", "warning"]
    )
    assert settings.port == 9002 and settings.workers == 3 and str(settings.model_dir) == "/m"
    assert settings.log_level == "warning"
    assert settings.host == "0.0.0.0"  # no flag: the environment's value


@pytest.mark.parametrize("argv", [["--port", "x"], ["--workers", "0"], ["--log-level", "loud"]])
def test_bad_flags_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as raised:
        parse_settings(argv)
    assert raised.value.code == 2


# --- registry ------------------------------------------------------------------------------


def _scan(folder) -> Registry:
    """What the server serves from ``folder`` after one scan (its default versions)."""
    repository = Repository(folder)
    repository.install(repository.build())
    return repository.snapshot.registry


def test_registry_loads_every_artifact_and_skips_bad_ones(artifact_dir, caplog):
    (artifact_dir / "broken.joblib").write_bytes(b"not an artifact")
    (artifact_dir / "notes.txt").write_text("ignored")
    net, metadata = tiny_mlp("mlp", seed=5)  # a second artifact named "mlp"
    nnlib.save(artifact_dir / "zz-duplicate.joblib", net, metadata)
    with caplog.at_level(logging.INFO, logger="nnserve.registry"):
        registry = _scan(artifact_dir)
    assert registry.names() == ["cnn", "mlp"] and len(registry) == 2
    assert "mlp" in registry and "broken" not in registry
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("broken.joblib" in message for message in errors)
    assert any("zz-duplicate.joblib" in message and "already" in message for message in errors)


def test_registry_of_a_missing_folder_is_empty(tmp_path):
    registry = _scan(tmp_path / "nowhere")
    assert len(registry) == 0 and registry.default is None and registry.names() == []


def test_registry_default(served_models):
    models = list(served_models.values())
    assert Registry(models).default == "cnn"  # first name in order
    assert Registry(models, default="mlp").default == "mlp"
    assert Registry(models, default="missing").default == "cnn"
    digits = ServedModel.build(*tiny_mlp("digits-mlp"))
    assert Registry([*models, digits]).default == "digits-mlp"


def test_registry_get_is_a_dict_lookup(served_models):
    registry = Registry(served_models.values())
    assert registry.get("mlp") is served_models["mlp"]
    for name in ("nope", "../mlp", "mlp.joblib", "", "MLP"):
        with pytest.raises(ModelNotFoundError) as raised:
            registry.get(name)
        assert repr(name) in str(raised.value) and "cnn, mlp" in str(raised.value)


def test_registry_refuses_two_models_with_one_name(served_models):
    with pytest.raises(ValueError, match="two models"):
        Registry([served_models["mlp"], served_models["mlp"]])


def test_served_model_fields(served_models):
    cnn = served_models["cnn"]
    assert cnn.input_shape == (8, 8) and cnn.input_size == 64 and cnn.n_classes == 10
    assert cnn.labels == tuple(str(d) for d in range(10)) and cnn.output == "log_softmax"
    assert cnn.version == "1" and cnn.metadata["dataset"] == {"name": "none"}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"name": "../etc"}, "name"),
        ({"name": ""}, "name"),
        ({"input_shape": [0]}, "input_shape"),
        ({"input_shape": [True]}, "input_shape"),
        ({"input_shape": "64"}, "input_shape"),
        ({"input_shape": [65]}, "dry forward"),
        ({"labels": ["a", "a"] + [str(d) for d in range(8)]}, "distinct"),
        ({"labels": [1] * 10}, "labels"),
        ({"labels": ["a", "b"]}, "expected (1, 2)"),
        ({"output": "sigmoid"}, "output"),
        ({"output": "log_softmax"}, "ends in Softmax, not LogSoftmax"),
    ],
)
def test_served_model_refuses_inconsistent_artifacts(change, words):
    net, metadata = tiny_mlp()
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        ServedModel.build(net, {**metadata, **change})


def test_served_model_refuses_missing_metadata():
    net, metadata = tiny_mlp()
    del metadata["labels"]
    with pytest.raises(ValueError, match="labels"):
        ServedModel.build(net, metadata)


def test_served_model_refuses_a_non_module():
    with pytest.raises(ValueError, match="must be a non-empty Sequential"):
        ServedModel.build(object(), tiny_mlp()[1])


# --- validation ----------------------------------------------------------------------------


def test_check_batch_accepts_nested_or_flat(served_models):
    cnn = served_models["cnn"]
    nested = np.arange(2 * 64, dtype=np.float64).reshape(2, 8, 8)
    for array in (nested, nested.reshape(2, 64), nested.astype(np.int64), nested.astype(">f8")):
        batch = check_batch(array, cnn, 10)
        assert batch.dtype == np.float32 and batch.shape == (2, 8, 8)
        assert batch.flags.c_contiguous
        np.testing.assert_array_equal(batch, nested)


def test_check_batch_makes_strided_input_contiguous(served_models):
    array = np.zeros((4, 128), dtype=np.float32)[:, ::2]
    assert check_batch(array, served_models["mlp"], 10).flags.c_contiguous


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.zeros((0, 64)), "empty"),
        (np.zeros((11, 64)), "at most 10"),
        (np.zeros((2, 63)), "sample 0 has shape [63]"),
        (np.zeros((2, 8, 8)), "sample 0 has shape [8, 8]"),
        (np.zeros((2, 64), dtype=bool), "numbers"),
        (np.array(["a"] * 64).reshape(1, 64), "numbers"),
        (np.float64(3.0), "list of samples"),
    ],
)
def test_check_batch_refusals(served_models, array, words):
    with pytest.raises(InvalidInputError, match=words.replace("[", r"\[").replace("]", r"\]")):
        check_batch(array, served_models["mlp"], 10)


@pytest.mark.parametrize(
    ("value", "words"),
    [(np.nan, "NaN"), (np.inf, "NaN or infinity"), (1e39, "float32"), (-1e308, "float32")],
)
def test_check_batch_names_the_sample_with_a_bad_value(served_models, value, words):
    array = np.ones((3, 64))
    array[2, 5] = value
    with pytest.raises(InvalidInputError, match=f"sample 2.*{words}"):
        check_batch(array, served_models["mlp"], 10)


def test_float32_max_is_accepted(served_models):
    array = np.full((1, 64), np.finfo(np.float32).max, dtype=np.float64)
    assert np.isfinite(check_batch(array, served_models["mlp"], 10)).all()


def test_batch_from_json_fast_and_careful_paths_agree(served_models):
    cnn = served_models["cnn"]
    rng = np.random.default_rng(1)
    inputs = rng.integers(0, 17, size=(5, 8, 8)).tolist()
    fast = check_batch(batch_from_json(inputs, cnn, 10, may_hold_booleans=False), cnn, 10)
    careful = check_batch(batch_from_json(inputs, cnn, 10, may_hold_booleans=True), cnn, 10)
    np.testing.assert_array_equal(fast, careful)
    assert fast.dtype == np.float32 and fast.shape == (5, 8, 8)


def test_batch_from_json_careful_path_catches_mixed_booleans(served_models):
    inputs = [[1.0] * 63 + [True]]
    with pytest.raises(InvalidInputError, match=r"sample 0: inputs\[0\]\[63\] is a boolean"):
        batch_from_json(inputs, served_models["mlp"], 10)


def test_batch_from_json_huge_integers(served_models):
    inputs = [[2**64 - 1] * 64, [-(2**63)] * 64]
    batch = batch_from_json(inputs, served_models["mlp"], 10, may_hold_booleans=False)
    assert np.isfinite(check_batch(batch, served_models["mlp"], 10)).all()


def test_batch_from_json_refuses_an_oversized_list_before_converting(served_models):
    with pytest.raises(InvalidInputError, match="at most 2"):
        batch_from_json([None] * 3, served_models["mlp"], 2)


# --- inference -----------------------------------------------------------------------------


def test_predict_proba_softmax_and_log_softmax(served_models):
    rng = np.random.default_rng(0)
    for model in served_models.values():
        batch = rng.uniform(0, 16, size=(7, *model.input_shape)).astype(np.float32)
        probs = asyncio.run(InferenceRunner().predict_proba(model, batch))
        assert probs.dtype == np.float32 and probs.shape == (7, 10)
        np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
        out = model.network.predict(batch)
        expected = np.exp(out) if model.output == "log_softmax" else out
        np.testing.assert_allclose(probs, expected, rtol=1e-6, atol=1e-7)


def test_large_batches_run_in_a_worker_thread(served_models, monkeypatch):
    import threading

    model = served_models["mlp"]
    threads = []
    real = inference._run

    def spy(model, batch):
        threads.append(threading.current_thread())
        return real(model, batch)

    monkeypatch.setattr(inference, "_run", spy)
    small = np.zeros((1, 64), dtype=np.float32)
    large = np.zeros((inference.INLINE_MAX_ELEMENTS // 64 + 1, 64), dtype=np.float32)

    async def both():
        await InferenceRunner().predict_proba(model, small)
        await InferenceRunner().predict_proba(model, large)

    asyncio.run(both())
    assert threads[0] is threading.main_thread()
    assert threads[1] is not threading.main_thread()


def test_predict_proba_refuses_non_finite_output():
    linear = nnlib.Linear(64, 10, rng=0)
    linear.parameters()["weight"][...] = 1
    model = ServedModel.build(nnlib.Sequential(linear, nnlib.Softmax()), tiny_mlp("raw")[1])
    batch = np.ones((3, 64), dtype=np.float32)
    batch[1] = 3e38
    with pytest.raises(InferenceError, match="sample 1"):
        asyncio.run(InferenceRunner().predict_proba(model, batch))


def test_predict_proba_checks_the_output_shape():
    net, metadata = tiny_cnn()
    model = ServedModel.build(net, metadata)
    object.__setattr__(model, "labels", tuple("abc"))  # a network/labels mismatch
    with pytest.raises(InferenceError, match="shape"):
        asyncio.run(InferenceRunner().predict_proba(model, np.zeros((1, 8, 8), dtype=np.float32)))


def test_file_names_versions_and_reasons_are_logged_on_one_line(tmp_path, caplog):
    import logging

    forged = "\n2026-01-01 00:00:00,000 INFO nnserve.registry: loaded model forged"
    folder = tmp_path / "models"
    folder.mkdir()
    net, metadata = tiny_mlp("served")
    nnlib.save(folder / f"ok{forged}.joblib", net, {**metadata, "version": f"1{forged}"})
    (folder / f"bad{forged}.joblib").write_bytes(b"x" * 5000 + forged.encode() * 1000)
    with caplog.at_level(logging.INFO, logger="nnserve.registry"):
        registry = _scan(folder)
    assert registry.names() == ["served"]
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2 and all("\n" not in line for line in lines), lines
    assert all(len(line) < 1500 for line in lines), [len(line) for line in lines]
    assert any(line.startswith("loaded model served version 1\\n") for line in lines), lines
