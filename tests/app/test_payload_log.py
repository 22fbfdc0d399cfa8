"""The payload log: off by default, sampled, bounded per line and per file, never the key."""

from __future__ import annotations

import json
import random

import numpy as np

from app.payload_log import PayloadLog
from app.registry import Registry
from tests.helpers.http import ZERO_MLP


def _lines(folder, pattern="payload.jsonl*") -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob(pattern))
            for line in path.read_text().splitlines()]


def test_off_by_default(client):
    assert client.app.state.dataplane.payload_log is None


def test_every_request_is_written_with_its_id_model_version_and_answer(make_client, tmp_path):
    key = "s3cret-key-value"
    client = make_client(default_model="mlp", api_key=key,
                         payload_log=str(tmp_path / "payload.jsonl"))
    response = client.post("/predict", json={"inputs": [ZERO_MLP] * 2},
                           headers={"Authorization": f"Bearer {key}", "X-Request-ID": "pay-1"})
    assert response.status_code == 200
    assert client.post("/predict", json={"inputs": [[1, 2]]},
                       headers={"Authorization": f"Bearer {key}"}).status_code == 422
    client.app.state.dataplane.payload_log.close()
    (entry,) = _lines(tmp_path)
    assert entry["request_id"] == "pay-1"
    assert (entry["model"], entry["version"]) == ("mlp", "1")
    assert np.array(entry["inputs"]).shape == (2, 64)
    assert entry["inputs"][0] == [float(x) for x in ZERO_MLP]
    answered = [p["probabilities"] for p in response.json()["predictions"]]
    np.testing.assert_allclose(entry["probabilities"], answered, rtol=1e-6)
    text = (tmp_path / "payload.jsonl").read_text()
    assert key not in text and "Bearer" not in text and "uthorization" not in text


def test_the_sample_rate_is_honoured(served_models, tmp_path):
    log = PayloadLog(tmp_path / "payload.jsonl", sample_rate=0.25, rng=random.Random(7))
    model = served_models["mlp"]
    batch = np.zeros((1, 64), np.float32)
    probs = np.full((1, 10), 0.1, np.float32)
    written = sum(log.record(model, batch, probs) for _ in range(800))
    log.close()
    # Binomial(800, 0.25): mean 200, sd 12.2; 140..260 is about 5 sd either side.
    assert 140 <= written <= 260
    assert len(_lines(tmp_path)) == written


def test_files_rotate_at_the_size_bound_and_keep_a_bounded_number(served_models, tmp_path):
    log = PayloadLog(tmp_path / "payload.jsonl", max_bytes=4096, backups=2)
    model = served_models["mlp"]
    for _ in range(200):
        log.record(model, np.zeros((1, 64), np.float32), np.full((1, 10), 0.1, np.float32))
    log.close()
    files = sorted(tmp_path.glob("payload.jsonl*"))
    assert [f.name for f in files] == ["payload.jsonl", "payload.jsonl.1", "payload.jsonl.2"]
    assert all(f.stat().st_size <= 4096 for f in files)
    assert all(entry["model"] == "mlp" for entry in _lines(tmp_path))


def test_a_line_over_the_record_bound_keeps_only_its_metadata(served_models, tmp_path):
    log = PayloadLog(tmp_path / "payload.jsonl", max_record_bytes=1024)
    log.record(served_models["mlp"], np.zeros((64, 64), np.float32),
               np.full((64, 10), 0.1, np.float32))
    log.close()
    (entry,) = _lines(tmp_path)
    assert entry["truncated"] is True and entry["inputs"] is None
    assert entry["shape"] == [64, 64]
    assert (tmp_path / "payload.jsonl").stat().st_size <= 1024


def test_a_zero_sample_rate_is_off(make_client, tmp_path, served_models):
    client = make_client(registry=Registry(served_models.values()),
                         payload_log=str(tmp_path / "p.jsonl"), payload_log_sample_rate=0)
    assert client.app.state.dataplane.payload_log is None


def test_each_worker_writes_its_own_file(tmp_path):
    import os

    from app.config import Settings

    one = PayloadLog.from_settings(Settings(payload_log=str(tmp_path / "p.jsonl")))
    several = PayloadLog.from_settings(Settings(payload_log=str(tmp_path / "p.jsonl"),
                                                workers=2))
    assert one.path == tmp_path / "p.jsonl"
    assert several.path == tmp_path / f"p.jsonl.{os.getpid()}"
