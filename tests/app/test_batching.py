"""Adaptive batching in app.inference: merged passes give each request its own answer.

No timing asserts: groups are flushed by size or explicitly, and the delay is made long
enough never to fire during a test.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import nnlib
from app import inference
from app.errors import InferenceError
from app.inference import Batcher, InferenceRunner
from app.registry import ServedModel
from tests.helpers import tiny_mlp

NEVER = 3600.0  # seconds: a delay that never elapses within a test


def _rowwise_model() -> ServedModel:
    """A network whose rows are computed independently of each other, bit for bit.

    Its layers are elementwise or per-row (no matrix product), so a row's output cannot
    depend on the other rows of the batch: any difference would be the batcher's.
    """
    net = nnlib.Sequential(nnlib.Scale(1 / 16), nnlib.TanH(), nnlib.Softmax())
    metadata = tiny_mlp("rowwise")[1] | {"input_shape": [10]}
    return ServedModel.build(net, metadata)


def _overflowing_model() -> ServedModel:
    # Every weight 1: a sample of 3e38 values sums past float32's range, NaN after softmax.
    linear = nnlib.Linear(64, 10, rng=0)
    linear.parameters()["weight"][...] = 1
    return ServedModel.build(nnlib.Sequential(linear, nnlib.Softmax()), tiny_mlp("raw")[1])


def _batches(sizes: list[int], features: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 17, size=(n, features)).astype(np.float32) for n in sizes]


@pytest.fixture
def batching():
    """Return a factory of inference runners that batch (each one's groups its own)."""
    def configure(max_size: int, max_delay_ms: float = NEVER * 1000) -> InferenceRunner:
        return InferenceRunner(max_size, max_delay_ms)

    return configure


async def _submit_all(batcher: Batcher, batches: list[np.ndarray]) -> list:
    futures = [batcher.submit(batch) for batch in batches]
    batcher.flush()
    return await asyncio.gather(*futures, return_exceptions=True)


def test_merged_results_equal_unbatched_results_bit_for_bit():
    model = _rowwise_model()
    batches = _batches([1, 3, 1, 2, 5], 10)

    async def run() -> list:
        return await _submit_all(Batcher(model, asyncio.get_running_loop(), 64, NEVER),
                                 batches)

    for batch, probs in zip(batches, asyncio.run(run()), strict=True):
        expected = inference._run(model, batch)
        assert probs.dtype == np.float32 and probs.flags.c_contiguous
        assert probs.tobytes() == expected.tobytes()


def test_predict_proba_merges_concurrent_requests(batching, monkeypatch):
    model = _rowwise_model()
    batches = _batches([1, 2, 1, 1], 10, seed=1)
    passes: list[int] = []
    forward = inference._forward
    monkeypatch.setattr(inference, "_forward",
                        lambda m, b: passes.append(len(b)) or forward(m, b))
    runner = batching(5)  # the four requests hold 5 samples: the group runs once it is full

    async def run() -> list:
        return await asyncio.gather(*(runner.predict_proba(model, batch) for batch in batches))

    results = asyncio.run(run())
    assert passes == [5]
    for batch, probs in zip(batches, results, strict=True):
        assert probs.tobytes() == inference._run(model, batch).tobytes()


def test_shipped_architectures_agree_to_float32_precision(served_models):
    # Matrix products do not give bit-identical rows for every number of rows (BLAS picks
    # kernels and blocking by size), so a merged pass of a network with Linear or Conv1D
    # layers agrees with the lone pass to float32 rounding, not to the bit.
    for model in served_models.values():
        batches = [b.reshape(len(b), *model.input_shape) for b in _batches([1, 4, 2], 64)]

        async def run(model=model, batches=batches) -> list:
            return await _submit_all(Batcher(model, asyncio.get_running_loop(), 64, NEVER),
                                     batches)

        for batch, probs in zip(batches, asyncio.run(run()), strict=True):
            np.testing.assert_allclose(probs, inference._run(model, batch), rtol=1e-5,
                                       atol=1e-7)


def test_a_request_whose_output_overflows_fails_alone():
    model = _overflowing_model()
    good = _batches([2, 1], 64)
    bad = np.ones((3, 64), dtype=np.float32)
    bad[1] = 3e38

    async def run() -> list:
        return await _submit_all(Batcher(model, asyncio.get_running_loop(), 64, NEVER),
                                 [good[0], bad, good[1]])

    first, failed, last = asyncio.run(run())
    assert isinstance(failed, InferenceError) and "sample 1" in str(failed)
    np.testing.assert_allclose(first, inference._run(model, good[0]), rtol=1e-5)
    np.testing.assert_allclose(last, inference._run(model, good[1]), rtol=1e-5)


def test_a_failing_merged_pass_runs_each_request_alone(monkeypatch):
    model = _rowwise_model()
    batches = _batches([1, 2], 10)
    forward = inference._forward

    def refuse_merged(m, b):
        if len(b) > 2:
            raise RuntimeError("merged pass failed")
        return forward(m, b)

    monkeypatch.setattr(inference, "_forward", refuse_merged)

    async def run() -> list:
        return await _submit_all(Batcher(model, asyncio.get_running_loop(), 64, NEVER),
                                 batches)

    for batch, probs in zip(batches, asyncio.run(run()), strict=True):
        assert probs.tobytes() == forward(model, batch).tobytes()


def test_max_size_is_respected(monkeypatch):
    model = _rowwise_model()
    passes: list[int] = []
    forward = inference._forward
    monkeypatch.setattr(inference, "_forward",
                        lambda m, b: passes.append(len(b)) or forward(m, b))
    batches = _batches([3, 2, 2, 1, 4, 1], 10)

    async def run() -> list:
        return await _submit_all(Batcher(model, asyncio.get_running_loop(), 5, NEVER),
                                 batches)

    results = asyncio.run(run())
    # Requests are never split: 3+2 fills a group, 2+1 would take 4 to 7, so it runs at 3.
    assert passes == [5, 3, 5]
    assert all(len(p) == len(b) for p, b in zip(results, batches, strict=True))


def test_requests_as_large_as_the_maximum_run_alone(batching, monkeypatch):
    model = _rowwise_model()
    runner = batching(4)
    passes: list[int] = []
    forward = inference._forward
    monkeypatch.setattr(inference, "_forward",
                        lambda m, b: passes.append(len(b)) or forward(m, b))
    asyncio.run(runner.predict_proba(model, _batches([4], 10)[0]))
    assert passes == [4] and not runner._batchers


def test_pending_groups_are_flushed_at_shutdown(batching):
    model = _rowwise_model()
    batches = _batches([1, 2], 10)
    runner = batching(64)  # neither size nor delay would ever run this group

    async def run() -> list:
        tasks = [asyncio.create_task(runner.predict_proba(model, batch)) for batch in batches]
        await asyncio.sleep(0)  # both requests are now waiting in the group
        assert not any(task.done() for task in tasks)
        runner.flush()
        return await asyncio.gather(*tasks)

    for batch, probs in zip(batches, asyncio.run(run()), strict=True):
        assert probs.tobytes() == inference._run(model, batch).tobytes()


def test_the_lifespan_flushes_pending_groups(make_client, served_models):
    # A server stopping with a group pending answers it rather than dropping it: the
    # application's shutdown flushes its runner.
    model = served_models["mlp"]
    batch = _batches([1], 64)[0]
    client = make_client(batch_max_size=64, batch_max_delay_ms=NEVER * 1000)
    runner = client.app.state.dataplane.runner
    with client:
        assert runner.batching
        waiting = client.portal.start_task_soon(runner.predict_proba, model, batch)
        client.portal.call(asyncio.sleep, 0)
        assert not waiting.done()
    np.testing.assert_allclose(waiting.result(timeout=10), inference._run(model, batch),
                               rtol=1e-5)


def test_two_applications_never_share_batching(make_client):
    # Batching settings and pending groups belong to an application, not to the process.
    batched = make_client(batch_max_size=64, batch_max_delay_ms=NEVER * 1000)
    plain = make_client()
    assert batched.app.state.dataplane.runner.batching
    assert not plain.app.state.dataplane.runner.batching
    assert batched.app.state.dataplane.runner is not plain.app.state.dataplane.runner
