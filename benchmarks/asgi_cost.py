"""CPU per request inside the application: the ASGI apps called directly, no sockets.

What ``http_load.py`` measures includes uvicorn, the kernel and the load generator; this
isolates what the application itself costs per batch-1 request: nnserve's ``POST /predict``
and V2 JSON infer (``create_app`` as shipped, access log on and written to a null handler)
next to ``http_load.py``'s minimal FastAPI endpoint, in one process, alternating rounds,
median of the rounds. Useful before and after a change to the request path, and with
``--profile`` to see where the time goes.

    .venv/bin/python benchmarks/asgi_cost.py                 # the table
    .venv/bin/python benchmarks/asgi_cost.py --profile native  # cProfile of one target
    .venv/bin/python benchmarks/asgi_cost.py --ablate          # what each feature costs

``--ablate`` times native ``/predict`` as shipped, then without each per-request feature
in turn (the access-log line, the Prometheus updates, the statistics tables) and without
all three, next to the minimal endpoint: the features are switched off by replacing their
methods with no-ops in this process only, which nnserve itself never does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import logging
import pstats
import statistics
import time

# _util pins BLAS/OpenMP pools to one thread and puts the checkout on sys.path.
import _util
import orjson
from http_load import minimal_app
from prometheus_client import Counter, Gauge, Histogram

from app.config import Settings
from app.main import create_app
from app.metrics import RequestMetrics
from app.registry import default_model_dir
from app.statistics import Statistics

SAMPLE = [0] * 64
BODIES = {
    "native": ("/predict", orjson.dumps({"inputs": [SAMPLE]})),
    "v2": ("/v2/models/digits-mlp/infer", orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": SAMPLE}]})),
    "minimal": ("/predict", orjson.dumps({"inputs": [SAMPLE]})),
}


def _scope(path: str, body: bytes) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000), "state": {},
            "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())]}


async def _cpu_per_request(app, path: str, body: bytes, requests: int) -> float:
    """Return the process CPU time per request in µs, after checking every answer is 200."""
    statuses = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = _scope(path, body)
    start = time.process_time()
    for _ in range(requests):
        await app(dict(scope), receive, send)
    elapsed = time.process_time() - start
    if set(statuses) != {200}:
        raise SystemExit(f"{path}: answers {sorted(set(statuses))}, not all 200")
    return elapsed / requests * 1e6


FEATURES = {
    # name: (class, methods) replaced by no-ops when the feature is off
    "metrics": ((Counter, ("inc",)), (Gauge, ("inc", "dec")), (Histogram, ("observe",)),
                (RequestMetrics, ("http_request", "inference", "inference_error", "queued",
                                  "request_size", "response_size"))),
    "statistics": ((Statistics, ("success", "failure", "execution")),),
}


@contextlib.contextmanager
def _without(features: tuple[str, ...]):
    """Switch per-request features off for the duration (the access log by its level)."""
    saved = []
    access = logging.getLogger("nnserve.access")
    if "log" in features:
        access.setLevel(logging.WARNING)
    for feature in features:
        for cls, names in FEATURES.get(feature, ()):
            for name in names:
                saved.append((cls, name, cls.__dict__[name]))
                setattr(cls, name, lambda *args, **kwargs: None)
    try:
        yield
    finally:
        for cls, name, method in saved:
            setattr(cls, name, method)
        access.setLevel(logging.INFO)


async def _ablate(apps: dict, rounds: int, requests: int) -> None:
    variants = {"as shipped": (), "without the access log": ("log",),
                "without metrics": ("metrics",), "without statistics": ("statistics",),
                "without all three": ("log", "metrics", "statistics")}
    path, body = BODIES["native"]
    results: dict[str, list[float]] = {name: [] for name in [*variants, "minimal"]}
    for round_ in range(rounds + 1):  # the first round warms up
        for name in results:
            app = apps["minimal" if name == "minimal" else "native"]
            with _without(variants.get(name, ())):
                cost = await _cpu_per_request(app, path, body, 200 if not round_ else requests)
            if round_:
                results[name].append(cost)
    shipped = statistics.median(results["as shipped"])
    print("| native /predict | CPU µs/request (median) | saved | rounds (µs) |")
    print("|---|---|---|---|")
    for name, values in results.items():
        median = statistics.median(values)
        label = "minimal endpoint" if name == "minimal" else name
        print(f"| {label} | {median:.1f} | {shipped - median:.1f} | "
              f"{', '.join(f'{v:.0f}' for v in values)} |")


async def _main(args: argparse.Namespace) -> None:
    model_dir = default_model_dir()
    apps = {"minimal": minimal_app(str(model_dir / "digits-mlp.joblib"))}
    served = create_app(Settings(model_dir=model_dir, poll_interval=0))
    access = logging.getLogger("nnserve.access")
    async with served.router.lifespan_context(served):
        # Formatted and handled as in a server, written nowhere.
        for handler in logging.getLogger("nnserve").handlers:
            handler.setStream(open("/dev/null", "w"))  # noqa: SIM115 - lives with the run
        access.setLevel(logging.INFO)
        apps["native"] = apps["v2"] = served
        targets = args.targets or list(BODIES)
        if args.ablate:
            await _ablate(apps, args.rounds, args.requests)
            print()
            print("Environment:", *_util.environment(), sep="\n- ")
            return
        if args.profile:
            path, body = BODIES[args.profile]
            profile = cProfile.Profile()
            profile.enable()
            await _cpu_per_request(apps[args.profile], path, body, args.requests)
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
            return
        for name in targets:  # warm-up: first calls build caches and label children
            await _cpu_per_request(apps[name], *BODIES[name], 200)
        results: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name in targets:
                results[name].append(await _cpu_per_request(apps[name], *BODIES[name],
                                                             args.requests))
    print("| target | CPU µs/request (median) | rounds (µs) |")
    print("|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.1f} | "
              f"{', '.join(f'{v:.0f}' for v in values)} |")
    print()
    print("Environment:", *_util.environment(), sep="\n- ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"what to time, of {', '.join(BODIES)} "
                        "(default: all three)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=3000, help="requests per round")
    parser.add_argument("--profile", choices=list(BODIES), help="cProfile one target instead")
    parser.add_argument("--ablate", action="store_true",
                        help="native /predict without each per-request feature in turn")
    args = parser.parse_args()
    unknown = sorted(set(args.targets) - set(BODIES))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(BODIES)}")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
