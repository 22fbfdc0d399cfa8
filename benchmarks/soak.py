"""Soak test: mixed traffic against a real server for minutes; errors, latency and memory.

Starts ``python -m app`` on a free loopback port (or uses ``--url``) and keeps
``--concurrency`` clients busy for ``--duration`` seconds with valid predictions of several
batch sizes (native API, V2 JSON and V2 binary) and a share of bad requests (malformed JSON,
wrong shapes, NaN, unknown models, lying V2 headers, oversized bodies). It reports requests,
unexpected outcomes by kind, p50/p99 latency, and the server's resident memory after the
warm-up and at the end.

Targets: zero 5xx, zero connection errors, memory growth under 10 MiB after warm-up.
Exit status 1 when a target is missed.

    python benchmarks/soak.py                      # 10 minutes, concurrency 32
    python benchmarks/soak.py --duration 60 --markdown
"""

from __future__ import annotations

import sys
from pathlib import Path

# Put the checkout on sys.path so app imports uninstalled.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402

MiB = 1024 * 1024
V2_HEADER = "Inference-Header-Content-Length"


# --- the traffic -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One prepared request and the statuses that count as the right answer."""

    kind: str
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    expected: frozenset[int]
    valid: bool


def _digits(seed: int) -> np.ndarray:
    """Raw 8x8 digit images (scikit-learn's when installed, else random pixels)."""
    try:
        from sklearn.datasets import load_digits

        return load_digits().images.astype(np.float32)
    except ImportError:
        return np.random.default_rng(seed).integers(0, 17, (1797, 8, 8)).astype(np.float32)


def _json(kind: str, path: str, payload: object, expected: int, valid: bool = True,
          **headers: str) -> Request:
    return Request(kind, path, json.dumps(payload).encode(),
                   (("content-type", "application/json"), *headers.items()),
                   frozenset({expected}), valid)


def _v2_binary(kind: str, path: str, x: np.ndarray, binary_out: bool, expected: int = 200,
               size: int | None = None, header_length: int | None = None) -> Request:
    spec = {"name": "input", "shape": list(x.shape), "datatype": "FP32",
            "parameters": {"binary_data_size": x.nbytes if size is None else size}}
    request = {"inputs": [spec], "parameters": {"binary_data_output": binary_out}}
    header = json.dumps(request).encode()
    length = len(header) if header_length is None else header_length
    return Request(kind, path, header + x.astype("<f4").tobytes(),
                   (("content-type", "application/octet-stream"), (V2_HEADER, str(length))),
                   frozenset({expected}), expected == 200)


def catalogue(images: np.ndarray, rng: random.Random, max_body: int,
              variants: int = 32) -> dict[str, list[Request]]:
    """Prepared requests of every kind, ``variants`` of each, built once before the run."""
    def batch(n: int) -> np.ndarray:
        return images[[rng.randrange(len(images)) for _ in range(n)]]

    kinds: dict[str, list[Request]] = defaultdict(list)
    for _ in range(variants):
        kinds["predict mlp b1"].append(_json(
            "predict mlp b1", "/predict", {"inputs": batch(1).reshape(1, 64).tolist()}, 200))
        kinds["predict cnn b8"].append(_json(
            "predict cnn b8", "/models/digits-cnn/predict", {"inputs": batch(8).tolist()}, 200))
        kinds["predict mlp b64 top3"].append(_json(
            "predict mlp b64 top3", "/predict",
            {"inputs": batch(64).reshape(64, 64).tolist(), "model": "digits-mlp", "top_k": 3},
            200))
        kinds["predict mlp b256"].append(_json(
            "predict mlp b256", "/models/digits-mlp/predict",
            {"inputs": batch(256).reshape(256, 64).tolist()}, 200))
        kinds["v2 json cnn b4"].append(_json(
            "v2 json cnn b4", "/v2/models/digits-cnn/infer",
            {"inputs": [{"name": "input", "shape": [4, 8, 8], "datatype": "FP32",
                         "data": batch(4).tolist()}]}, 200))
        kinds["v2 binary mlp b32"].append(_v2_binary(
            "v2 binary mlp b32", "/v2/models/digits-mlp/infer", batch(32).reshape(32, 64),
            binary_out=rng.random() < 0.5))
    sample = images[0].reshape(64).tolist()
    bad = [
        Request("bad: malformed JSON", "/predict", b'{"inputs": [[1, 2',
                (("content-type", "application/json"),), frozenset({400}), False),
        _json("bad: wrong shape", "/predict", {"inputs": [[1, 2, 3]]}, 422, valid=False),
        Request("bad: NaN literal", "/predict",
                b'{"inputs": [[NaN' + b", 0" * 63 + b"]]}",
                (("content-type", "application/json"),), frozenset({400, 422}), False),
        _json("bad: unknown model", "/models/nope/predict", {"inputs": [sample]}, 404,
              valid=False),
        _json("bad: top_k 11", "/predict", {"inputs": [sample], "top_k": 11}, 422, valid=False),
        _json("bad: string pixel", "/predict", {"inputs": [["x", *sample[1:]]]}, 422,
              valid=False),
        _v2_binary("bad: V2 header length > body", "/v2/models/digits-mlp/infer",
                   images[:2].reshape(2, 64), False, expected=400, header_length=10**6),
        _v2_binary("bad: V2 binary_data_size", "/v2/models/digits-mlp/infer",
                   images[:2].reshape(2, 64), False, expected=400, size=100),
        Request("bad: body over the limit", "/predict", b" " * (max_body + 1),
                (("content-type", "application/json"),), frozenset({413}), False),
    ]
    for request in bad:
        kinds[request.kind].append(request)
    return dict(kinds)


WEIGHTS = {  # share of the valid traffic
    "predict mlp b1": 30, "predict cnn b8": 15, "predict mlp b64 top3": 10,
    "predict mlp b256": 5, "v2 json cnn b4": 15, "v2 binary mlp b32": 25,
}


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """Everything the clients saw."""

    requests: Counter = field(default_factory=Counter)
    problems: Counter = field(default_factory=Counter)  # (kind of problem, request kind)
    latencies: list[float] = field(default_factory=list)  # valid requests, seconds
    all_latencies: list[float] = field(default_factory=list)
    problem_examples: dict[str, str] = field(default_factory=dict)


async def client_loop(http: httpx.AsyncClient, requests: dict[str, list[Request]],
                      bad_share: float, stop_at: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    valid_kinds = list(WEIGHTS)
    valid_weights = [WEIGHTS[k] for k in valid_kinds]
    bad_kinds = [kind for kind in requests if kind not in WEIGHTS]
    while time.monotonic() < stop_at:
        if rng.random() < bad_share:
            kind = rng.choice(bad_kinds)
        else:
            kind = rng.choices(valid_kinds, valid_weights)[0]
        request = rng.choice(requests[kind])
        start = time.perf_counter()
        try:
            response = await http.post(request.path, content=request.body,
                                       headers=dict(request.headers))
            await response.aread()
            status = response.status_code
        except httpx.TimeoutException as exc:
            problem, detail = "timeout", f"{type(exc).__name__}: {exc}"
        except httpx.TransportError as exc:
            problem, detail = "connection error", f"{type(exc).__name__}: {exc}"
        else:
            problem = detail = ""
            if status >= 500:
                problem, detail = "5xx", f"{status} {response.text[:200]}"
            elif status not in request.expected:
                problem, detail = "unexpected status", f"{status} {response.text[:200]}"
            elif request.valid and not _complete(response):
                problem, detail = "incomplete answer", response.text[:200]
        elapsed = time.perf_counter() - start
        tally.requests[kind] += 1
        tally.all_latencies.append(elapsed)
        if problem:
            tally.problems[(problem, kind)] += 1
            tally.problem_examples.setdefault(f"{problem} / {kind}", detail)
        elif request.valid:
            tally.latencies.append(elapsed)


def _complete(response: httpx.Response) -> bool:
    """A valid request's answer holds probability rows that sum to 1."""
    length = response.headers.get(V2_HEADER)
    raw = response.content
    try:
        header = json.loads(raw[: int(length)] if length else raw)
        if "predictions" in header:
            rows = [p["probabilities"] for p in header["predictions"]]
            return all(abs(sum(row) - 1) < 1e-3 for row in rows)
        output = header["outputs"][0]
        n, width = output["shape"]
        if length:
            probs = np.frombuffer(raw[int(length):], dtype="<f4").reshape(n, width)
        else:
            probs = np.asarray(output["data"], dtype=np.float64).reshape(n, width)
        return bool(np.allclose(probs.sum(axis=1), 1, atol=1e-3))
    except (ValueError, KeyError, IndexError, TypeError):
        return False


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its children (workers), in bytes."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(child) for child in children]
    except OSError:
        pass
    for one in pids:
        try:
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


async def sample_memory(pid: int | None, every: float, stop_at: float,
                        samples: list[tuple[float, int]], started: float) -> None:
    while pid is not None and time.monotonic() < stop_at:
        samples.append((time.monotonic() - started, rss_bytes(pid)))
        await asyncio.sleep(every)


async def run_load(url: str, pid: int | None, args: argparse.Namespace,
                   requests: dict[str, list[Request]]) -> dict:
    # The client drops idle connections before the server's keep-alive timeout (5 s), as a
    # well-behaved client should: otherwise the server may close one just as it is reused.
    limits = httpx.Limits(max_connections=args.concurrency,
                          max_keepalive_connections=args.concurrency,
                          keepalive_expiry=args.keepalive_expiry)
    timeout = httpx.Timeout(args.timeout)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as http:
        # Warm-up: the same traffic; its memory and latency are not the steady state.
        warm_tally = Tally()
        warm_end = time.monotonic() + args.warmup
        await asyncio.gather(*(client_loop(http, requests, args.bad_share, warm_end,
                                           warm_tally, args.seed + i)
                               for i in range(args.concurrency)))
        rss_after_warmup = rss_bytes(pid) if pid else None
        tally = Tally()
        started = time.monotonic()
        stop_at = started + args.duration
        samples: list[tuple[float, int]] = []
        await asyncio.gather(
            sample_memory(pid, 5.0, stop_at, samples, started),
            *(client_loop(http, requests, args.bad_share, stop_at, tally,
                          args.seed + 1000 + i) for i in range(args.concurrency)),
        )
        elapsed = time.monotonic() - started
    rss_end = rss_bytes(pid) if pid else None
    return {"tally": tally, "warm_tally": warm_tally, "elapsed": elapsed,
            "rss_after_warmup": rss_after_warmup, "rss_end": rss_end, "samples": samples}


# --- the server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NNSERVE_")}
    env["NNSERVE_MAX_BODY_BYTES"] = str(args.max_body)
    command = [sys.executable, "-m", "app", "--port", str(port), "--workers",
               str(args.workers), "--log-level", args.log_level]
    if args.model_dir:
        command += ["--model-dir", args.model_dir]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   env=env, cwd=tempfile.gettempdir())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    sys.exit(f"the server was not ready within 60 s:\n{log_path.read_text()}")


# --- the report ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def report(result: dict, args: argparse.Namespace, rss_idle: int | None,
           server_errors: int, command: str) -> tuple[str, bool]:
    """Return the markdown report and whether every target was met."""
    tally: Tally = result["tally"]
    total = sum(tally.requests.values())
    by_problem = Counter()
    for (problem, _kind), count in tally.problems.items():
        by_problem[problem] += count
    five_xx = by_problem["5xx"]
    connection = by_problem["connection error"] + by_problem["timeout"]
    mib = lambda value: f"{value / MiB:.1f} MiB" if value is not None else "n/a"  # noqa: E731
    growth = (result["rss_end"] - result["rss_after_warmup"]
              if result["rss_end"] and result["rss_after_warmup"] else None)
    peak = max((rss for _, rss in result["samples"]), default=None)
    met = five_xx == 0 and connection == 0 and (growth is None or growth < 10 * MiB)
    valid = sum(n for kind, n in tally.requests.items() if kind in WEIGHTS)

    lines = [
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; machine: {platform.machine()}, "
        f"{os.cpu_count()} logical CPUs, Linux {platform.release()}; python "
        f"{platform.python_version()}, httpx {httpx.__version__}",
        f"- command: `{command}`",
        f"- server: `python -m app --workers {args.workers} --log-level {args.log_level}`, "
        f"NNSERVE_MAX_BODY_BYTES={args.max_body}, shipped models; load generator in the same "
        f"machine (asyncio + httpx, keep-alive connections dropped after "
        f"{args.keepalive_expiry:g} s idle), so client and server share the CPUs",
        f"- traffic: {args.concurrency} concurrent clients for {result['elapsed']:.0f} s after "
        f"a {args.warmup:.0f} s warm-up; {100 * args.bad_share:.0f} % bad requests",
        f"- load average (1 min) before / after: {result['load_before']:.2f} / "
        f"{result['load_after']:.2f} (other work on the machine shows up in the latencies)",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests | {total} ({total / result['elapsed']:.0f}/s), {valid} valid, "
        f"{total - valid} bad |",
        f"| 5xx | {five_xx} |",
        f"| connection errors (incl. timeouts) | {connection} |",
        f"| other unexpected answers | {sum(by_problem.values()) - five_xx - connection} |",
        f"| latency of valid requests p50 / p99 | {1e3 * percentile(tally.latencies, 50):.2f}"
        f" ms / {1e3 * percentile(tally.latencies, 99):.2f} ms |",
        f"| latency of all requests p50 / p99 | {1e3 * percentile(tally.all_latencies, 50):.2f}"
        f" ms / {1e3 * percentile(tally.all_latencies, 99):.2f} ms |",
        f"| server RSS idle / after warm-up / end / peak | {mib(rss_idle)} / "
        f"{mib(result['rss_after_warmup'])} / {mib(result['rss_end'])} / {mib(peak)} |",
        f"| RSS growth after warm-up | {mib(growth)} |",
        f"| ERROR lines / tracebacks in the server log | {server_errors} |",
        f"| targets (0 5xx, 0 connection errors, growth < 10 MiB) | "
        f"{'met' if met else 'MISSED'} |",
        "",
        "| request kind | count | unexpected |",
        "|---|---|---|",
    ]
    for kind in sorted(tally.requests):
        bad = sum(n for (problem, k), n in tally.problems.items() if k == kind)
        lines.append(f"| {kind} | {tally.requests[kind]} | {bad} |")
    if tally.problem_examples:
        lines += ["", "Unexpected outcomes (first example of each):", ""]
        for what, detail in sorted(tally.problem_examples.items()):
            count = tally.problems[tuple(what.split(" / ", 1))]
            lines.append(f"- {what}: {count} times: `{detail[:160]}`")
    if result["samples"]:
        lines += ["", "RSS every minute: " + ", ".join(
            f"{t / 60:.0f} min {rss / MiB:.1f}" for t, rss in result["samples"]
            if int(t) % 60 < 5)]
    return "\n".join(lines), met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds (default 600)")
    parser.add_argument("--warmup", type=float, default=30, help="seconds before measuring")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--bad-share", type=float, default=0.15,
                        help="fraction of bad requests (default 0.15)")
    parser.add_argument("--timeout", type=float, default=30, help="client timeout, seconds")
    parser.add_argument("--url", help="an already running server (no RSS unless --pid)")
    parser.add_argument("--pid", type=int, help="the server's pid, with --url")
    parser.add_argument("--model-dir", help="model folder (default: the shipped models)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="warning",
                        help="server log level; info writes one access line per request")
    parser.add_argument("--max-body", type=int, default=1 * MiB,
                        help="NNSERVE_MAX_BODY_BYTES of the server started here (the "
                        "oversized requests send one byte more)")
    parser.add_argument("--keepalive-expiry", type=float, default=2.0,
                        help="seconds a client keeps an idle connection (below the server's "
                        "NNSERVE_KEEP_ALIVE_TIMEOUT)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print only the report")
    args = parser.parse_args(argv)

    images = _digits(args.seed)
    requests = catalogue(images, random.Random(args.seed), args.max_body)
    log_path = Path(tempfile.mkstemp(prefix="nnserve-soak-", suffix=".log")[1])
    process = None
    if args.url:
        url, pid = args.url.rstrip("/"), args.pid
    else:
        process, url = start_server(args, log_path)
        pid = process.pid
    rss_idle = rss_bytes(pid) if pid else None
    command = "python benchmarks/soak.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_before = os.getloadavg()[0]
    try:
        result = asyncio.run(run_load(url, pid, args, requests))
        result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
    log = log_path.read_text(errors="replace") if process is not None else ""
    server_errors = sum(1 for line in log.splitlines()
                        if " ERROR " in line or line.startswith("Traceback"))
    text, met = report(result, args, rss_idle, server_errors, command.strip())
    if not args.markdown:
        print(f"server log: {log_path}")
    print(text)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
