"""The `nnlib` command: train from a table, inspect, evaluate, predict, and the wine model."""

from __future__ import annotations

import csv
import io
import json
import shlex
from pathlib import Path

import joblib
import numpy as np
import pytest

import nnlib
from nnlib import cli
from nnlib.data import load_bundled
from nnlib.preprocessing import Standardize
from tests.helpers import ROOT, tiny_cnn

WINE_MODEL = ROOT / "models" / "wine-mlp.joblib"
IRIS_FEATURES = ["sepal length", "sepal width", "petal length", "petal width"]


def write_iris_csv(path: Path, rows: slice = slice(None)) -> Path:
    """scikit-learn's iris as a CSV with string labels in a 'species' column."""
    data = load_bundled("iris")
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*IRIS_FEATURES, "species"])
        for x, y in zip(data.X[rows], data.y[rows], strict=True):
            writer.writerow([*(repr(float(v)) for v in x), data.labels[y]])
    return path


def run(*argv: str) -> int:
    return cli.main(list(argv))


def train_iris(tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / "iris.joblib"
    assert run("train", str(write_iris_csv(tmp_path / "iris.csv")), "--target", "species",
               "--arch", "mlp", "--epochs", "100", "--out", str(out), "--quiet", *extra) == 0
    return out


def test_train_on_a_csv_with_string_labels_records_everything(tmp_path, capsys):
    out = train_iris(tmp_path)
    assert "iris: validation accuracy" in capsys.readouterr().out
    model, metadata = nnlib.load(out)
    assert type(model.modules[0]) is Standardize  # clients send raw features
    assert metadata["labels"] == ["setosa", "versicolor", "virginica"]
    assert metadata["features"] == IRIS_FEATURES
    assert metadata["input_shape"] == [4] and metadata["output"] == "softmax"
    dataset = metadata["dataset"]
    assert dataset["format"] == "csv" and dataset["target"] == "species"
    assert dataset["n_samples"] == 150 and len(dataset["sha256"]) == 64
    assert (dataset["split"]["n_train"], dataset["split"]["n_test"]) == (120, 30)
    assert metadata["metrics"]["val_accuracy"] >= 0.8  # iris: 2 of its 3 classes overlap
    assert np.array(metadata["metrics"]["val_confusion_matrix"]).sum() == 30
    assert metadata["command"].startswith("nnlib train ") and "--target species" in \
        metadata["command"]
    # mean and scale are the training split's statistics, not the whole table's
    train_index, _ = cli.split_indices(load_bundled("iris").y, 0.2, 0)
    np.testing.assert_allclose(model.modules[0].mean,
                               load_bundled("iris").X[train_index].mean(axis=0), rtol=1e-5)


def test_same_command_gives_the_same_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    write_iris_csv(tmp_path / "iris.csv")
    files = []
    for folder in ("a", "b"):  # the same command (relative paths) run in two places
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "iris.csv").write_bytes((tmp_path / "iris.csv").read_bytes())
        monkeypatch.chdir(tmp_path / folder)
        assert run("train", "iris.csv", "--target", "species", "--arch", "mlp", "--epochs",
                   "3", "--seed", "7", "--out", "m.joblib", "--quiet") == 0
        files.append((tmp_path / folder / "m.joblib").read_bytes())
    assert files[0] == files[1]


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_digits_presets_train_the_same_bits_as_nnlib_train(tmp_path, arch):
    assert cli.nnlib_train_main(["--arch", arch, "--epochs", "1", "--seed", "3", "--out",
                                 str(tmp_path / "old.joblib"), "--no-progress"]) == 0
    assert run("train", "--arch", f"digits-{arch}", "--epochs", "1", "--seed", "3", "--out",
               str(tmp_path / "new.joblib"), "--quiet") == 0
    old = nnlib.load(tmp_path / "old.joblib").model.parameters()
    new = nnlib.load(tmp_path / "new.joblib").model.parameters()
    assert {k: v.tobytes() for k, v in old.items()} == {k: v.tobytes() for k, v in new.items()}


BAD_CSVS = {
    "empty": ("", "the file is empty"),
    "header only": ("a,b,y\n", "the header has no data rows"),
    "ragged row": ("a,b,y\n1,2,x\n3,y\n", "line 3: 2 fields, but the header has 3"),
    "non-numeric": ("a,b,y\n1,2,x\n3,abc,y\n", "line 3, column 'b': 'abc' is not a number"),
    "missing value": ("a,b,y\n1,2,x\n3,,y\n", "line 3, column 'b': missing value"),
    "nan": ("a,b,y\n1,2,x\nnan,4,y\n", "line 3, column 'a': 'nan' is not a finite"),
    "inf": ("a,b,y\n1,2,x\n3,-inf,y\n", "line 3, column 'b': '-inf' is not a finite"),
    "beyond float32": ("a,b,y\n1,2,x\n3,1e39,y\n", "'1e39' is not a finite float32"),
    "one class": ("a,b,y\n1,2,x\n3,4,x\n", "only one class ('x')"),
    "no such target": ("a,b,label\n1,2,x\n3,4,y\n", "there is no column 'y'"),
    "missing label": ("a,b,y\n1,2,x\n3,4,\n", "line 3, column 'y': missing label"),
    "duplicate column": ("a,a,y\n1,2,x\n3,4,y\n", "columns ['a'] more than once"),
}


@pytest.mark.parametrize("case", BAD_CSVS)
def test_bad_csv_is_a_clear_error_with_status_2_and_nothing_written(tmp_path, capsys, case):
    text, message = BAD_CSVS[case]
    (tmp_path / "bad.csv").write_text(text)
    status = run("train", str(tmp_path / "bad.csv"), "--target", "y", "--arch", "mlp",
                 "--out", str(tmp_path / "out" / "m.joblib"), "--plot",
                 str(tmp_path / "out" / "p.png"), "--quiet")
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("nnlib train: error: ") and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("arch", "message"), [
    ("Standardize -> Linear(3, 8) -> ReLU -> Linear(8, 3) -> Softmax",
     "layer 1 (Linear(3, 8)) takes 3 features on its last axis, but gets samples of shape [4]"),
    ("Linear(4, 2) -> Softmax", "gives samples of shape [2], but the data has 3 classes"),
    ("Linear(4, 3) -> ReLU", "must end in Softmax or LogSoftmax"),
    ("Linear(4, 3) -> Standardize -> Softmax", "Standardize must come before every trainable"),
    ("Linear(4, 3) -> Sofmax", "did you mean 'Softmax'?"),
])
def test_bad_networks_are_refused_before_training(tmp_path, capsys, arch, message):
    status = run("train", str(write_iris_csv(tmp_path / "iris.csv")), "--target", "species",
                 "--arch", arch, "--out", str(tmp_path / "m.joblib"), "--quiet")
    assert status == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "m.joblib").exists()


def test_usage_errors(tmp_path, capsys):
    csv_file = str(write_iris_csv(tmp_path / "iris.csv"))
    for argv, message in (
            (["--arch", "mlp"], "give the training data"),
            ([csv_file, "--dataset", "wine", "--arch", "mlp"], "give the training data"),
            (["--dataset", "wine", "--arch", "digits-mlp"], "trains on --dataset digits only"),
            ([csv_file, "--arch", "mlp"], "say which column holds the classes"),
            (["--dataset", "wine", "--arch", "mlp", "--momentum", "0.9"],
             "--momentum do not apply to --optimizer adam"),
            (["--dataset", "wine", "--arch", "mlp", "--input-shape", "5"],
             "cannot be read as the network's input shape [5]")):
        assert run("train", *argv, "--out", str(tmp_path / "m.joblib"), "--quiet") == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        run("train", "--dataset", "wine", "--arch", "mlp", "--epochs", "0", "--out", "x")
    assert info.value.code == 2
    assert not (tmp_path / "m.joblib").exists()


def test_train_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        run("train", "--help")
    text = capsys.readouterr().out
    for option in ("--dataset", "--target", "--val ", "--val-split", "--split-seed", "--arch",
                   "--optimizer", "--lr", "--betas", "--momentum", "--weight-decay",
                   "--epochs", "--batch-size", "--patience", "--seed", "--out", "--plot",
                   "--quiet", "digits-mlp", "Standardize -> Linear(13, 32)",
                   "SOURCE_DATE_EPOCH"):
        assert option in text, option


def test_validation_file_sgd_early_stopping_and_plot(tmp_path):
    write_iris_csv(tmp_path / "train.csv", slice(0, None, 2))
    write_iris_csv(tmp_path / "val.csv", slice(1, None, 2))
    out, plot = tmp_path / "m.joblib", tmp_path / "curves.png"
    assert run("train", str(tmp_path / "train.csv"), "--val", str(tmp_path / "val.csv"),
               "--target", "species", "--arch", "mlp", "--optimizer", "sgd", "--lr", "0.05",
               "--momentum", "0.9", "--weight-decay", "0.01", "--epochs", "200",
               "--patience", "3", "--out", str(out), "--plot", str(plot), "--quiet") == 0
    model, metadata = nnlib.load(out)
    training = metadata["training"]
    assert training["stopped_early"] and training["epochs_run"] < 200
    assert training["optimizer"].startswith("SGD(lr=0.05, momentum=0.9, weight_decay=0.01")
    assert metadata["dataset"]["split"]["method"] == "separate file"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # weight decay shrinks weights, never the fitted statistics
    train = load_bundled("iris").X[::2]
    np.testing.assert_allclose(model.modules[0].mean, train.mean(axis=0), rtol=1e-5)


def test_npz_data_with_integer_labels(tmp_path):
    data = load_bundled("iris")
    np.savez(tmp_path / "iris.npz", X=data.X, y=data.y + 10)
    assert run("train", str(tmp_path / "iris.npz"), "--arch", "mlp", "--epochs", "2",
               "--out", str(tmp_path / "m.joblib"), "--quiet") == 0
    assert nnlib.load(tmp_path / "m.joblib").metadata["labels"] == ["10", "11", "12"]


# --- inspect --------------------------------------------------------------------------


def test_inspect_text_and_json(capsys):
    assert run("inspect", str(WINE_MODEL)) == 0
    text = capsys.readouterr().out
    assert "format 2, sha256 verified" in text and "Linear(13, 32)" in text
    assert "total" in text and "573" in text and '"features"' in text
    assert run("inspect", str(WINE_MODEL), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parameters"] == 573 and report["digest"] == "verified"
    assert [row["parameters"] for row in report["layers"]] == [26, 448, 0, 99, 0]
    assert report["metadata"]["name"] == "wine-mlp"


def _payload(path: Path) -> dict:
    return joblib.load(path)  # our own freshly written file: trusted


def hostile_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = tmp_path / "good.joblib"
    nnlib.save(good, *tiny_cnn())
    files = {}
    truncated = tmp_path / "truncated.joblib"
    truncated.write_bytes(good.read_bytes()[:200])
    files["truncated"] = (truncated, "pickle frame")
    payload = _payload(good)
    payload["metadata"]["name"] = "changed"  # the recorded sha256 no longer matches
    digest = tmp_path / "digest.joblib"
    joblib.dump(payload, digest, protocol=4)
    files["wrong digest"] = (digest, "sha256")
    code = tmp_path / "global.joblib"
    code.write_bytes(b"\x80\x04cos\nsystem\n(S'echo pwned'\ntR.")
    files["pickle GLOBAL"] = (code, "global")
    files["missing"] = (tmp_path / "nope.joblib", "cannot read the file")
    return files


def test_inspect_refuses_hostile_files_with_the_loaders_reason(tmp_path, capsys):
    for case, (path, reason) in hostile_files(tmp_path).items():
        with pytest.raises(nnlib.ArtifactError) as expected:
            nnlib.load(path)
        assert run("inspect", str(path)) == 1, case
        err = capsys.readouterr().err
        assert err.strip() == f"nnlib inspect: error: {expected.value}", case
        assert reason in err.lower(), (case, err)


# --- evaluate / predict ---------------------------------------------------------------


def test_evaluate_on_the_recorded_split_reproduces_the_metrics(capsys):
    assert run("evaluate", str(WINE_MODEL), "--dataset", "wine", "--split", "val",
               "--json") == 0
    report = json.loads(capsys.readouterr().out)
    metrics = nnlib.load(WINE_MODEL).metadata["metrics"]
    assert report["accuracy"] == metrics["val_accuracy"]
    assert report["confusion_matrix"] == metrics["val_confusion_matrix"]
    assert report["n_samples"] == 36
    assert run("evaluate", str(WINE_MODEL), "--dataset", "iris", "--split", "val") == 2
    assert "class 'setosa' is not one of the model's labels" in capsys.readouterr().err


def test_evaluate_text_report_on_a_csv(tmp_path, capsys):
    out = train_iris(tmp_path)
    capsys.readouterr()
    assert run("evaluate", str(out), str(tmp_path / "iris.csv")) == 0
    text = capsys.readouterr().out
    assert "(150 samples)" in text and "precision" in text and "virginica" in text
    assert "confusion matrix (rows: true class, columns: predicted)" in text


def test_predict_gives_the_served_probabilities_as_csv_and_json_lines(tmp_path, capsys):
    out = train_iris(tmp_path)
    capsys.readouterr()
    model, metadata = nnlib.load(out)
    X = load_bundled("iris").X
    expected = model.predict(X).astype(np.float32)
    # the feature columns are found by name: reorder them and drop the target
    with open(tmp_path / "features.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *IRIS_FEATURES[::-1]])
        for i, x in enumerate(X):
            writer.writerow([i, *(repr(float(v)) for v in x[::-1])])
    assert run("predict", str(out), str(tmp_path / "features.csv")) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["label", "class_index", "p_setosa", "p_versicolor", "p_virginica"]
    got = np.array([[np.float32(v) for v in row[2:]] for row in rows[1:]])
    assert np.array_equal(got, expected)
    assert [row[0] for row in rows[1:]] == [metadata["labels"][i] for i in
                                            expected.argmax(axis=1)]
    assert run("predict", str(out), str(tmp_path / "features.csv"), "--format", "jsonl",
               "--out", str(tmp_path / "p.jsonl")) == 0
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert np.array_equal(np.array([r["probabilities"] for r in lines], np.float32), expected)


def test_predict_exponentiates_a_log_softmax_head(tmp_path, capsys):
    net, metadata = tiny_cnn()
    nnlib.save(tmp_path / "cnn.joblib", net, metadata)
    X = np.random.default_rng(0).uniform(0, 16, size=(5, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", X=X)
    assert run("predict", str(tmp_path / "cnn.joblib"), str(tmp_path / "x.npz"),
               "--format", "jsonl") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = np.exp(net.predict(X)).astype(np.float32)
    assert np.array_equal(np.array([r["probabilities"] for r in lines], np.float32), expected)
    assert [r["class_index"] for r in lines] == expected.argmax(axis=1).tolist()


def test_convert_is_a_documented_sub_command(capsys):
    with pytest.raises(SystemExit):
        run("convert", "--help")
    assert "format-1 artifact" in capsys.readouterr().out


# --- the shipped wine model -----------------------------------------------------------


def test_wine_model_is_accurate_and_labels_its_features():
    model, metadata = nnlib.load(WINE_MODEL)
    for key in ("name", "version", "input_shape", "labels", "output", "description",
                "dataset", "metrics", "created", "features"):
        assert key in metadata
    assert (metadata["name"], metadata["version"]) == ("wine-mlp", "1.0.0")
    assert metadata["input_shape"] == [13] and len(metadata["features"]) == 13
    assert metadata["labels"] == ["class_0", "class_1", "class_2"]
    assert type(model.modules[0]) is Standardize
    data = load_bundled("wine")
    assert metadata["features"] == data.features
    _, test = cli.split_indices(data.y, 0.2, 0)
    assert cli.indices_digest(test) == metadata["dataset"]["split"]["test_indices_sha256"]
    accuracy = float(np.mean(model.predict(data.X[test]).argmax(axis=1) == data.y[test]))
    assert accuracy == metadata["metrics"]["val_accuracy"] >= 0.95
    assert "**1.0000**" in (ROOT / "models" / "README.md").read_text()


def test_wine_model_is_reproduced_by_its_documented_command(tmp_path, monkeypatch):
    """Byte for byte where the matrix products round as they did for the shipped file.

    numpy's OpenBLAS picks its kernels by CPU (AVX2 or AVX-512, say), and their sums round
    differently in the last bit: 100 epochs then leave parameters that differ by about 1e-7
    (measured: at most 9e-8 against weights of 0.5), which this bounds, with the same
    class for every wine. Any real change to the training (data, split, seed, optimizer)
    moves them by orders of magnitude more.
    """
    card = (ROOT / "models" / "README.md").read_text()
    block = card.split("## wine-mlp")[1].split("```sh\n")[1].split("```")[0]
    words = shlex.split(block.replace("\\\n", " "))
    assert words[0].startswith("SOURCE_DATE_EPOCH=") and words[1:3] == ["nnlib", "train"]
    monkeypatch.setenv("SOURCE_DATE_EPOCH", words[0].split("=")[1])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert cli.main(words[2:]) == 0
    rebuilt_path = tmp_path / "models" / "wine-mlp.joblib"
    rebuilt, shipped = nnlib.load(rebuilt_path), nnlib.load(WINE_MODEL)
    ours, theirs = rebuilt.model.parameters(), shipped.model.parameters()
    assert ours.keys() == theirs.keys()
    if all(np.array_equal(ours[name], theirs[name]) for name in theirs):
        assert rebuilt_path.read_bytes() == WINE_MODEL.read_bytes()
        return
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, rtol=0,
                                   atol=1e-6 * float(np.abs(value).max()), err_msg=name)
    X = load_bundled("wine").X.astype(np.float32)
    assert np.array_equal(rebuilt.model.predict(X).argmax(axis=1),
                          shipped.model.predict(X).argmax(axis=1))
    assert rebuilt.metadata.keys() == shipped.metadata.keys()
    for key in set(shipped.metadata) - {"metrics", "training"}:
        assert rebuilt.metadata[key] == shipped.metadata[key], key
    # The losses differ in their last digits; what was counted does not.
    drop = ("history",)
    assert ({k: v for k, v in rebuilt.metadata["training"].items() if k not in drop}
            == {k: v for k, v in shipped.metadata["training"].items() if k not in drop})
    for key, value in shipped.metadata["metrics"].items():
        found = rebuilt.metadata["metrics"][key]
        assert found == (pytest.approx(value, rel=1e-5) if isinstance(value, float)
                         else value), key

