"""nnlib-train (the digits presets, kept as they were) and the shipped digit models; the
`nnlib` command's sub-commands are tested in test_cli_commands.py."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnlib
from nnlib import cli
from tests.helpers import ROOT

MODELS = ROOT / "models"
SHIPPED = {
    # name: (output head, input_shape, layer types)
    "digits-mlp": ("softmax", [64], ["Scale", "Linear", "ReLU", "Linear", "Softmax"]),
    "digits-cnn": ("log_softmax", [8, 8], ["Scale", "Conv1D", "ReLU", "MaxPool1D", "Flatten",
                                           "Linear", "LogSoftmax"]),
}


def train_cli(out: Path, *args: str) -> nnlib.Artifact:
    assert cli.nnlib_train_main([*args, "--out", str(out), "--no-progress"]) == 0
    return nnlib.load(out)


def parameter_bytes(model: nnlib.Sequential) -> dict[str, bytes]:
    return {name: value.tobytes() for name, value in model.parameters().items()}


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_same_command_and_seed_give_bit_identical_parameters(tmp_path, arch):
    command = ("--arch", arch, "--epochs", "1", "--seed", "3")
    first = train_cli(tmp_path / "a.joblib", *command)
    second = train_cli(tmp_path / "b.joblib", *command)
    assert parameter_bytes(first.model) == parameter_bytes(second.model)
    assert first.metadata["metrics"] == second.metadata["metrics"]

    other = train_cli(tmp_path / "c.joblib", "--arch", arch, "--epochs", "1", "--seed", "4")
    assert parameter_bytes(other.model) != parameter_bytes(first.model)


def test_source_date_epoch_makes_the_whole_file_reproducible(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    command = ("--arch", "mlp", "--epochs", "1", "--seed", "0", "--no-augment")
    first = train_cli(tmp_path / "a.joblib", *command)
    train_cli(tmp_path / "b.joblib", *command)
    assert (tmp_path / "a.joblib").read_bytes() == (tmp_path / "b.joblib").read_bytes()
    assert first.metadata["created"] == "2023-11-14T22:13:20+00:00"


def test_metadata_records_the_run(tmp_path, capsys):
    artifact = train_cli(tmp_path / "m.joblib", "--arch", "cnn", "--epochs", "1", "--seed",
                         "5", "--split-seed", "2", "--test-size", "0.25", "--name", "x",
                         "--version", "2.0.0", "--batch-size", "64", "--lr", "0.002")
    metadata = artifact.metadata
    assert f"x: held-out accuracy {metadata['metrics']['test_accuracy']:.4f}" in \
        capsys.readouterr().out
    assert metadata["name"] == "x" and metadata["version"] == "2.0.0"
    assert metadata["labels"] == [str(d) for d in range(10)]
    assert metadata["input_shape"] == [8, 8] and metadata["output"] == "log_softmax"
    assert metadata["nnlib_version"] == nnlib.__version__
    assert dt.datetime.fromisoformat(metadata["created"]).tzinfo is not None
    split = metadata["dataset"]["split"]
    assert (split["seed"], split["test_size"]) == (2, 0.25)
    assert split["n_train"] + split["n_test"] == metadata["dataset"]["n_samples"] == 1797
    training = metadata["training"]
    assert (training["seed"], training["epochs"], training["batch_size"]) == (5, 1, 64)
    assert training["optimizer"] == "Adam(lr=0.002)" and training["loss"] == "NLLLoss"
    assert 0 <= metadata["metrics"]["test_accuracy"] <= 1
    assert metadata["metrics"]["test_loss"] > 0


def test_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), 30)
    train, test = cli.split_indices(labels, 0.2, seed=0)
    assert len(np.intersect1d(train, test)) == 0
    assert len(train) + len(test) == len(labels)
    assert np.array_equal(np.bincount(labels[test]), np.full(10, 6))
    again, _ = cli.split_indices(labels, 0.2, seed=0)[::-1]
    assert np.array_equal(again, test)
    assert not np.array_equal(cli.split_indices(labels, 0.2, seed=1)[1], test)


def test_shift_augment_moves_each_copy_by_one_pixel():
    image = np.arange(1, 65, dtype=np.float32).reshape(1, 64)
    X, Y = cli.shift_augment(image, np.array([[7]]))
    assert X.shape == (5, 64) and Y.tolist() == [[7]] * 5
    original, up, down, left, right = X.reshape(5, 8, 8)
    assert np.array_equal(up[:-1], original[1:]) and not up[-1].any()
    assert np.array_equal(down[1:], original[:-1]) and not down[0].any()
    assert np.array_equal(left[:, :-1], original[:, 1:]) and not left[:, -1].any()
    assert np.array_equal(right[:, 1:], original[:, :-1]) and not right[:, 0].any()


def test_bad_arguments_exit_with_usage(tmp_path, capsys):
    for argv in (["--arch", "rnn", "--out", "x"], ["--arch", "mlp"],
                 ["--arch", "mlp", "--epochs", "0", "--out", str(tmp_path / "x")],
                 ["--arch", "mlp", "--test-size", "1", "--out", str(tmp_path / "x")]):
        with pytest.raises(SystemExit) as info:
            cli.nnlib_train_main(argv)
        assert info.value.code == 2
    assert "usage: nnlib-train" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_missing_train_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import now fails
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    with pytest.raises(SystemExit, match=r"pip install 'nnserve\[train\]'"):
        cli.load_data()
    with pytest.raises(SystemExit, match=r"pip install 'nnserve\[train\]'"):
        cli._one_blas_thread()


def test_nnlib_does_not_import_sklearn_or_tqdm():
    code = ("import sys, nnlib, nnlib.cli, nnlib.io, nnlib.data, nnlib.spec, nnlib.export; "
            "print(sorted(m for m in ('sklearn', 'threadpoolctl', 'tqdm', 'onnx', 'matplotlib') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_console_scripts_are_declared():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'nnlib = "nnlib.cli:main"' in pyproject
    assert 'nnlib-train = "nnlib.cli:nnlib_train_main"' in pyproject


# ---------------------------------------------------------------------------------------
# The shipped models


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return cli.load_data()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_validates_and_is_accurate(name, digits):
    path = MODELS / f"{name}.joblib"
    assert path.stat().st_size < 1_000_000
    artifact = nnlib.load(path)
    nnlib.validate(artifact, path=path)
    output, input_shape, layers = SHIPPED[name]
    metadata = artifact.metadata
    assert metadata["name"] == name
    assert (metadata["output"], metadata["input_shape"]) == (output, input_shape)
    assert [type(m).__name__ for m in artifact.model.modules] == layers
    assert type(artifact.model.modules[0]) is nnlib.Scale  # clients send raw pixels

    # Rebuild the held-out split from what the metadata records, and check it is the same.
    X, y = digits
    split = metadata["dataset"]["split"]
    _, test = cli.split_indices(y, split["test_size"], split["seed"])
    assert cli.indices_digest(test) == split["test_indices_sha256"]
    assert len(test) == split["n_test"]

    probabilities = artifact.model.predict(X[test].reshape(len(test), *input_shape))
    if output == "log_softmax":
        probabilities = np.exp(probabilities)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == y[test]))
    assert accuracy >= 0.97
    assert accuracy == pytest.approx(metadata["metrics"]["test_accuracy"], abs=1e-12)
    assert metadata["metrics"]["test_accuracy"] >= 0.97


def test_models_folder_is_data_not_a_package():
    assert not (MODELS / "__init__.py").exists()
    assert {p.name for p in MODELS.glob("*.joblib")} >= {f"{n}.joblib" for n in SHIPPED}
    card = (MODELS / "README.md").read_text()
    for name in SHIPPED:
        assert f"nnlib-train --arch {name.split('-')[1]}" in card
