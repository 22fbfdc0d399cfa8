"""HTTP serving benchmark: nnserve's POST /predict next to a minimal FastAPI endpoint.

Both servers run in the same session, one uvicorn worker each, with the same uvicorn
settings; the minimal one parses the JSON body with orjson and runs the same numpy forward
pass of the same artifact, with no validation, metrics or logging. nnserve runs as shipped
(`python -m app`, access log on). The same nnserve process is also loaded through the Open
Inference Protocol's JSON infer (`POST /v2/models/<model>/infer`, the body tritonclient sends
for the same samples), so native and V2 are compared in the same run. The load generator is
wrk (Debian's `wrk` package) when installed, else an asyncio keep-alive client of this script;
each cell alternates the three targets `--rounds` times and keeps the median.

    .venv/bin/python benchmarks/http_load.py            # print the table
    .venv/bin/python benchmarks/http_load.py --write    # also update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# _util pins BLAS/OpenMP pools to one thread (inherited by both servers) and puts the
# checkout on sys.path: import it before numpy.
import _util
import numpy as np
import orjson
from fastapi import FastAPI, Request, Response

ROOT = _util.ROOT
TARGET_RATIO = 1.0
TARGET_V2_RATIO = 0.9  # V2 JSON infer / native /predict, same server, same run
TARGET_P99_MS = 5.0
STARTUP_TIMEOUT = 60.0


# --- the minimal endpoint ----------------------------------------------------------------


def minimal_app(model_path: str):
    """Return a FastAPI app whose POST /predict is just parse, forward, serialise."""
    import nnlib

    artifact = nnlib.load(model_path)
    net, shape = artifact.model, tuple(artifact.metadata["input_shape"])
    log_head = artifact.metadata["output"] == "log_softmax"
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        inputs = orjson.loads(await request.body())["inputs"]
        batch = np.asarray(inputs, dtype=np.float32).reshape(-1, *shape)
        out = net.predict(batch)
        probs = np.exp(out) if log_head else out
        return Response(orjson.dumps({"probabilities": probs}, option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json")

    return app


def serve_minimal(port: int, model_path: str) -> None:
    """Serve :func:`minimal_app` with the uvicorn settings nnserve uses."""
    import uvicorn

    uvicorn.run(minimal_app(model_path), host="127.0.0.1", port=port, log_level="warning",
                access_log=False, server_header=False)


# --- servers -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pin(cpu: int | None) -> list[str]:
    # On a machine with two or more CPUs the server and the load generator get one each,
    # so they do not time each other's scheduling.
    if cpu is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(cpu)]


def start_server(command: list[str], port: int, log: Path,
                 env: dict | None = None) -> subprocess.Popen:
    """Start a server and wait until /health answers."""
    import httpx

    with open(log, "wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env=env)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"http_load.py: {command} exited:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"http_load.py: {command} did not start:\n{log.read_text()}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process and its live children have used so far (Linux
    /proc): with --workers the uvicorn workers are children of the launcher."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(int(child)) for child in children)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- load generators ------------------------------------------------------------------------

_WRK_SCRIPT = """
local f = io.open("%(body)s", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, ' ..
    '"status_errors": %%d, "socket_errors": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout))
end
"""


def run_wrk(url: str, body: bytes, connections: int, duration: float, cpu: int | None,
            folder: Path) -> dict:
    """Load ``url`` with wrk (one thread, ``connections`` keep-alive connections)."""
    body_path = folder / "body.json"
    body_path.write_bytes(body)
    script = folder / "post.lua"
    script.write_text(_WRK_SCRIPT % {"body": body_path})
    command = [*_pin(cpu), "wrk", "-t1", f"-c{connections}",
               f"-d{max(1, round(duration))}s", "--timeout",
               "10s", "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return {
        "requests": result["requests"],
        "rps": result["requests"] / (result["duration_us"] / 1e6),
        "p50_ms": result["p50_us"] / 1e3,
        "p99_ms": result["p99_us"] / 1e3,
        "errors": result["status_errors"] + result["socket_errors"],
    }


async def _python_load(host: str, port: int, path: str, body: bytes, connections: int,
                       duration: float) -> dict:
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                errors += not head.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
        "errors": errors,
    }


def run_python(url: str, body: bytes, connections: int, duration: float, cpu: int | None,
               folder: Path) -> dict:
    """Load ``url`` with this script's asyncio client (used when wrk is not installed)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    match = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    return asyncio.run(_python_load(match[1], int(match[2]), match[3], body, connections,
                                    duration))


# --- the benchmark ---------------------------------------------------------------------------


def body_for(batch: int, input_shape: tuple[int, ...]) -> bytes:
    """A request body of ``batch`` scikit-learn-like digits (0..16 pixels)."""
    rng = np.random.default_rng(batch)
    inputs = rng.integers(0, 17, size=(batch, *input_shape)).tolist()
    return json.dumps({"inputs": inputs}).encode()


def v2_body_for(batch: int, input_shape: tuple[int, ...]) -> bytes:
    """The V2 JSON inference request tritonclient sends for the samples of :func:`body_for`."""
    inputs = json.loads(body_for(batch, input_shape))["inputs"]
    flat = np.asarray(inputs, dtype=np.float32).ravel().tolist()
    tensor = {"name": "input", "shape": [batch, *input_shape], "datatype": "FP32", "data": flat}
    return json.dumps({"inputs": [tensor]}).encode()


def check_agreement(nnserve_url: str, minimal_url: str, body: bytes) -> None:
    """Both endpoints must answer the same probabilities, or the comparison means nothing."""
    import httpx

    ours = httpx.post(nnserve_url, content=body, headers={"Content-Type": "application/json"})
    theirs = httpx.post(minimal_url, content=body, headers={"Content-Type": "application/json"})
    ours.raise_for_status()
    theirs.raise_for_status()
    a = np.array([p["probabilities"] for p in ours.json()["predictions"]])
    b = np.array(theirs.json()["probabilities"])
    if not np.allclose(a, b, atol=1e-6):
        raise SystemExit("http_load.py: nnserve and the minimal endpoint disagree")



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=4,
                        help="seconds of load per measurement (default 4)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternations of the two servers per cell (default 2)")
    parser.add_argument("--model-dir", default=None,
                        help="artifact folder (default: the shipped models)")
    parser.add_argument("--model", default="digits-mlp", help="model to load (digits-mlp)")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--batches", default="1,32",
                        help="comma-separated request batch sizes (default 1,32)")
    parser.add_argument("--concurrency", default="1,16,64",
                        help="comma-separated connection counts (default 1,16,64)")
    parser.add_argument("--workers", type=int, default=1,
                        help="nnserve worker processes (default 1; the minimal endpoint "
                        "keeps one). With more than one the server is not pinned to a CPU")
    parser.add_argument("--batch-max-size", type=int, default=None,
                        help="NNSERVE_BATCH_MAX_SIZE for nnserve (adaptive batching)")
    parser.add_argument("--batch-max-delay-ms", type=float, default=None,
                        help="NNSERVE_BATCH_MAX_DELAY_MS for nnserve (adaptive batching)")
    parser.add_argument("--tag", default="",
                        help="name of the RESULTS.md block to write (default: the main one)")
    parser.add_argument("--write", action="store_true",
                        help="write the table into benchmarks/RESULTS.md")
    parser.add_argument("--serve-minimal", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from app.registry import default_model_dir

    model_dir = Path(args.model_dir) if args.model_dir else default_model_dir()
    model_path = model_dir / f"{args.model}.joblib"
    if args.serve_minimal:
        serve_minimal(args.serve_minimal, str(model_path))
        return 0

    import nnlib

    input_shape = tuple(nnlib.load(model_path).metadata["input_shape"])
    use_wrk = args.generator == "wrk" or (args.generator == "auto" and shutil.which("wrk"))
    generator = run_wrk if use_wrk else run_python
    server_cpu, client_cpu = (1, 0) if (os.cpu_count() or 1) >= 2 else (None, None)
    batches = [int(b) for b in args.batches.split(",")]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    nnserve_env = dict(os.environ)
    for name, value in (("NNSERVE_BATCH_MAX_SIZE", args.batch_max_size),
                        ("NNSERVE_BATCH_MAX_DELAY_MS", args.batch_max_delay_ms)):
        if value is not None:
            nnserve_env[name] = str(value)

    folder = Path(tempfile.mkdtemp(prefix="nnserve-http-bench-"))
    ports = {"nnserve": _free_port(), "minimal": _free_port()}
    env_cmd = [*_pin(server_cpu), sys.executable]
    nnserve_cmd = env_cmd if args.workers == 1 else [sys.executable]
    commands = {
        "nnserve": [*nnserve_cmd, "-m", "app", "--port", str(ports["nnserve"]), "--model-dir",
                    str(model_dir), "--default-model", args.model,
                    "--workers", str(args.workers)],
        "minimal": [*env_cmd, os.path.abspath(__file__), "--serve-minimal",
                    str(ports["minimal"]), "--model-dir", str(model_dir), "--model",
                    args.model],
    }
    processes = {name: start_server(command, ports[name], folder / f"{name}.log",
                                    nnserve_env if name == "nnserve" else None)
                 for name, command in commands.items()}
    urls = {name: f"http://127.0.0.1:{port}/predict" for name, port in ports.items()}
    urls["v2"] = f"http://127.0.0.1:{ports['nnserve']}/v2/models/{args.model}/infer"
    process_of = {"nnserve": "nnserve", "minimal": "minimal", "v2": "nnserve"}
    targets = ["nnserve", "v2", "minimal"]
    results: dict[tuple[int, int, str], dict] = {}
    try:
        for batch in batches:
            native = body_for(batch, input_shape)
            bodies = {"nnserve": native, "minimal": native,
                      "v2": v2_body_for(batch, input_shape)}
            check_agreement(urls["nnserve"], urls["minimal"], bodies["nnserve"])
            for connections in concurrency:
                runs: dict[str, list[dict]] = {name: [] for name in targets}
                for round_ in range(args.rounds):
                    order = targets[round_ % 3:] + targets[:round_ % 3]
                    for name in order:
                        body = bodies[name]
                        generator(urls[name], body, connections, 1, client_cpu, folder)
                        # CPU time per request is the server's own cost, which other
                        # processes on a busy machine disturb far less than throughput.
                        pid = processes[process_of[name]].pid
                        cpu_before = cpu_seconds(pid)
                        measured = generator(urls[name], body, connections, args.duration,
                                             client_cpu, folder)
                        cpu = cpu_seconds(pid) - cpu_before
                        measured["cpu_us"] = cpu / max(measured["requests"], 1) * 1e6
                        runs[name].append(measured)
                for name, measured in runs.items():
                    results[batch, connections, name] = {
                        key: statistics.median(m[key] for m in measured)
                        for key in ("rps", "p50_ms", "p99_ms", "cpu_us")
                    } | {"errors": sum(m["errors"] for m in measured)}
                print(f"batch {batch:>2} c{connections:<3} "
                      + "  ".join(f"{name} {results[batch, connections, name]['rps']:8.0f} req/s"
                                  for name in runs), flush=True)
    finally:
        for process in processes.values():
            stop(process)

    rows, verdicts = [], []
    for batch in batches:
        for connections in concurrency:
            ours, v2, base = (results[batch, connections, n] for n in ("nnserve", "v2", "minimal"))
            ratio = ours["rps"] / base["rps"]
            v2_ratio = v2["rps"] / ours["rps"]
            cpu_ratio = base["cpu_us"] / ours["cpu_us"]
            rows.append([str(batch), str(connections),
                         f"{ours['rps']:.0f}", f"{ours['p50_ms']:.2f}", f"{ours['p99_ms']:.2f}",
                         f"{ours['cpu_us']:.0f}",
                         f"{v2['rps']:.0f}", f"{v2['p99_ms']:.2f}", f"{v2['cpu_us']:.0f}",
                         f"{base['rps']:.0f}", f"{base['p50_ms']:.2f}", f"{base['p99_ms']:.2f}",
                         f"{base['cpu_us']:.0f}",
                         f"{ratio:.2f}", f"{v2_ratio:.2f}", f"{cpu_ratio:.2f}",
                         str(ours["errors"] + v2["errors"] + base["errors"])])
            if batch == 1:
                verdicts.append(f"batch 1, c{connections}: throughput ratio {ratio:.2f} "
                                f"(target >= {TARGET_RATIO}) "
                                + ("met" if ratio >= TARGET_RATIO else "NOT met"))
                verdicts.append(f"batch 1, c{connections}: V2 JSON infer / native {v2_ratio:.2f} "
                                f"(target >= {TARGET_V2_RATIO}) "
                                + ("met" if v2_ratio >= TARGET_V2_RATIO else "NOT met"))
            if batch == 1 and connections == 16:
                verdicts.append(f"batch 1, c16: nnserve p99 {ours['p99_ms']:.2f} ms (target <= "
                                f"{TARGET_P99_MS:g} ms) "
                                + ("met" if ours["p99_ms"] <= TARGET_P99_MS else "NOT met"))
    table = _util.markdown_table(
        ["batch", "conc.", "nnserve req/s", "p50 ms", "p99 ms", "CPU µs/req", "V2 req/s",
         "V2 p99 ms", "V2 CPU µs/req", "minimal req/s", "p50 ms", "p99 ms", "CPU µs/req",
         "ratio", "V2/native", "CPU ratio", "errors"], rows)
    pinned = (f"server pinned to CPU {server_cpu}, load generator to CPU {client_cpu} "
              "(taskset)" if server_cpu is not None and _pin(server_cpu) else "no CPU pinning")
    if args.workers > 1 and server_cpu is not None:
        pinned += f"; nnserve's {args.workers} workers not pinned (they share every CPU with wrk)"
    loader = ("wrk -t1 (Debian `wrk`)" if use_wrk else "asyncio keep-alive client of http_load.py")
    command = " ".join(["python benchmarks/http_load.py", *(argv if argv is not None
                                                       else sys.argv[1:])]).strip()
    lines = ["Environment:", ""] + [f"- {line}" for line in _util.environment()]
    lines += [
        f"- command: `{command}`",
        f"- model: {args.model} {list(input_shape)}; nnserve: {args.workers} uvicorn "
        "worker(s), minimal: one (httptools, uvloop); nnserve with its defaults (access log "
        "on, metrics on)"
        + "".join(f", {name}={value}" for name, value in nnserve_env.items()
                  if name.startswith("NNSERVE_BATCH_")),
        f"- load: {loader}, keep-alive connections = concurrency, {args.duration:g} s per "
        f"measurement after 1 s of warm-up, median of {args.rounds} alternating rounds; "
        f"{pinned}",
        "- minimal: FastAPI `POST /predict` doing orjson parse, `np.asarray`, the same "
        "`predict`, orjson answer; no validation, metrics or logging",
        "- V2: the same nnserve process, `POST /v2/models/<model>/infer` with the JSON tensor "
        "tritonclient sends for the same samples; V2/native = V2 req/s / nnserve req/s",
        "- ratio = nnserve req/s / minimal req/s; CPU µs/req = the server process's user + "
        "system CPU time over the requests it answered; CPU ratio = minimal CPU / nnserve "
        "CPU per request (what the throughput ratio would be with a core to itself)",
        "",
        table,
        "",
        "Targets:",
        "",
        *[f"- {verdict}" for verdict in verdicts],
    ]
    block = "\n".join(lines)
    print()
    print(block)
    if args.write:
        if args.tag:  # a further table under the same section
            _util.write_results(f"http_load.py:{args.tag}", None, block)
        else:
            _util.write_results("http_load.py", "HTTP serving", block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
