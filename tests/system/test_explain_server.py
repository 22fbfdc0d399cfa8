"""POST /explain on a real server: concurrent explanations and predictions of one network
(explanations run in worker threads, predictions inline and batched) give the serial answers:
no explanation reads another request's activations."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.helpers.servers import run_server, server_env

pytestmark = pytest.mark.system


def test_concurrent_explain_and_predict_answer_as_serial(tmp_path, digits):
    env = server_env(batch_max_size="8", batch_max_delay_ms="2")
    images = digits[0][:12].tolist()
    requests = []
    for index, image in enumerate(images):
        requests.append(("/models/digits-cnn/predict", {"inputs": [image]}))
        requests.append(("/models/digits-cnn/explain", {"inputs": [image], "steps": 64}))
        requests.append(("/models/digits-cnn/explain",
                         {"inputs": [image], "method": "gradient", "target": index % 10}))
    with run_server(tmp_path, env=env) as server, httpx.Client(base_url=server.url,
                                                               timeout=60) as client:
        def send(request):
            response = client.post(request[0], json=request[1])
            assert response.status_code == 200, response.text
            return response.json()

        serial = [send(request) for request in requests]
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(2):
                for got, expected in zip(pool.map(send, requests), serial, strict=True):
                    if "explanations" in expected:  # computed alone: the same bits
                        assert got == expected
                    else:  # merged with other requests' rows: BLAS may round differently
                        assert got["predictions"][0]["label"] == expected["predictions"][0][
                            "label"]
                        np.testing.assert_allclose(got["predictions"][0]["probabilities"],
                                                   expected["predictions"][0]["probabilities"],
                                                   rtol=1e-5, atol=1e-9)
