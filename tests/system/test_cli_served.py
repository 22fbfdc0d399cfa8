"""A CSV with string labels, trained by `nnlib train`, served by a real server: its
/predict answers are the numbers `nnlib predict` gives offline."""

from __future__ import annotations

import json

import httpx
import numpy as np

from nnlib import cli
from tests.helpers.servers import run_server
from tests.nnlib.test_cli_commands import write_iris_csv


def test_a_trained_csv_model_serves_what_nnlib_predict_gives(tmp_path, capsys):
    folder = tmp_path / "models"
    data = write_iris_csv(tmp_path / "iris.csv")
    assert cli.main(["train", str(data), "--target", "species", "--arch", "mlp", "--epochs",
                     "30", "--name", "iris", "--out", str(folder / "iris.joblib"),
                     "--quiet"]) == 0
    assert cli.main(["predict", str(folder / "iris.joblib"), str(data), "--format",
                     "jsonl"]) == 0
    offline = [json.loads(line) for line in capsys.readouterr().out.splitlines()
               if line.startswith("{")]
    rows = [line.split(",") for line in data.read_text().splitlines()[1:]]
    samples = [[float(v) for v in row[:4]] for row in rows]  # raw features, as in the CSV

    with run_server(tmp_path, "--model-dir", str(folder)) as server:
        response = httpx.post(f"{server.url}/models/iris/predict",
                              json={"inputs": samples}, timeout=30)
        one = [httpx.post(f"{server.url}/models/iris/predict", json={"inputs": [sample]},
                          timeout=30).json()["predictions"][0] for sample in samples[:5]]
    assert response.status_code == 200, response.text
    served = response.json()["predictions"]
    assert len(served) == len(offline) == 150
    assert [p["label"] for p in served] == [p["label"] for p in offline]
    assert np.array_equal(np.array([p["probabilities"] for p in served], np.float32),
                          np.array([p["probabilities"] for p in offline], np.float32))
    # and one sample per request is `--batch-size 1`
    assert cli.main(["predict", str(folder / "iris.joblib"), str(data), "--format", "jsonl",
                     "--batch-size", "1"]) == 0
    single = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert np.array_equal(np.array([p["probabilities"] for p in one], np.float32),
                          np.array([p["probabilities"] for p in single[:5]], np.float32))
