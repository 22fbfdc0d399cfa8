"""Shared helpers of the benchmark scripts: one thread, interleaved timing, the environment.

Import this module before numpy or torch: it pins every BLAS/OpenMP pool to one thread,
so the libraries compared run under the same conditions (and the 2-core machines this
project runs on do not time their own scheduler).
"""

from __future__ import annotations

import os

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
for _name in THREAD_VARIABLES:
    os.environ[_name] = "1"

import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Put the checkout on sys.path so nnlib and app import uninstalled.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def optional(module: str):
    """Import ``module`` if it is installed (the ``bench`` extra), else return None."""
    try:
        return __import__(module)
    except ImportError:
        return None


CLOCKS = {
    # CPU time of the calling thread (user + system: page faults count): all the work runs
    # on it with one thread per library, and time the scheduler gives to other processes
    # does not count, so the figures hold on a busy machine.
    "cpu": time.thread_time,
    "wall": time.perf_counter,
}
clock = CLOCKS["cpu"]


def use_clock(name: str) -> None:
    """Time with ``name`` ("cpu" or "wall") from now on."""
    global clock
    clock = CLOCKS[name]


def keep_freed_memory() -> str:
    """Stop glibc's malloc from giving freed memory back to the kernel; return a note.

    By default glibc unmaps large freed blocks (and trims the heap top), so the next array
    of that size is faulted in page by page again: at batch 1024 that costs more than the
    arithmetic, and which of two alternating candidates pays for it depends on the order of
    their allocations, not on their code. Fixed thresholds keep every candidate on warm
    memory (what a long-running server reaches anyway).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "malloc: left as is (not glibc)"
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = mallopt(m_mmap_threshold, 32 << 20) and mallopt(m_trim_threshold, 1 << 30)
    if not ok:
        return "malloc: left as is (mallopt refused)"
    return ("malloc: mallopt(M_MMAP_THRESHOLD=32 MiB, M_TRIM_THRESHOLD=1 GiB), so freed "
            "arrays are reused rather than unmapped and faulted in again")


def minor_faults() -> int:
    """Minor page faults of this process so far."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def calibrate(fn: Callable[[], object], target_s: float = 2e-3) -> int:
    """Return how many calls of ``fn`` take about ``target_s`` (at least 1)."""
    fn()
    calls = 1
    while True:
        start = clock()
        for _ in range(calls):
            fn()
        elapsed = clock() - start
        if elapsed >= target_s / 4 or calls >= 1 << 16:
            return max(1, round(calls * target_s / max(elapsed, 1e-9)))
        calls *= 2


#: the most minor page faults per call seen for each candidate name by :func:`interleaved`
faults_per_call: dict[str, float] = {}


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int,
                target_s: float = 2e-3) -> dict[str, float]:
    """Median seconds per call of each candidate, timed in alternating blocks.

    Every round times one block of calls of each candidate, in an order that rotates from
    round to round, so drifts of the machine (frequency, other processes) fall on all of
    them alike. Returns the median over the rounds of the per-call time of each block.
    """
    names = list(candidates)
    calls = {name: calibrate(fn, target_s) for name, fn in candidates.items()}
    samples: dict[str, list[float]] = {name: [] for name in names}
    faults = dict.fromkeys(names, 0)
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            fn, n = candidates[name], calls[name]
            before = minor_faults()
            start = clock()
            for _ in range(n):
                fn()
            samples[name].append((clock() - start) / n)
            faults[name] += minor_faults() - before
    for name in names:
        per_call = faults[name] / (rounds * calls[name])
        faults_per_call[name] = max(faults_per_call.get(name, 0.0), per_call)
    return {name: statistics.median(values) for name, values in samples.items()}


def fmt_time(seconds: float) -> str:
    """Format a duration with a unit that keeps 3 significant figures readable."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """Return a GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor() or "unknown"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    model = fields.get("Model name", "unknown").strip()
    cores = fields.get("Core(s) per socket", "?").strip()
    sockets = fields.get("Socket(s)", "?").strip()
    threads = fields.get("Thread(s) per core", "?").strip()
    return (f"{model} (lscpu), {sockets} socket x {cores} cores x {threads} thread per core, "
            f"{os.cpu_count()} logical CPUs")


def environment(torch=None, ort=None) -> list[str]:
    """Describe the machine, the versions and the thread settings, one item a line
    (PyTorch's and ONNX Runtime's when their modules are given)."""
    lines = [
        f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; load average before the run: "
        + " ".join(f"{v:.2f}" for v in os.getloadavg()),
        f"machine: {_cpu_model()}",
        f"python {platform.python_version()}, numpy {np.__version__}"
        + (f", torch {torch.__version__}" if torch is not None else "")
        + (f", onnxruntime {ort.__version__}" if ort is not None else ""),
        "threads: " + " ".join(f"{name}={os.environ[name]}" for name in THREAD_VARIABLES)
        + (", torch.set_num_threads(1)" if torch is not None else "")
        + (", ORT intra_op_num_threads=1" if ort is not None else ""),
    ]
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return lines
    pools = [f"{p['internal_api']} {p.get('version')} ({p.get('architecture')}, "
             f"{p['num_threads']} thread)" for p in threadpool_info()]
    lines.append("BLAS/OpenMP pools: " + "; ".join(pools))
    return lines


def write_results(script: str, heading: str | None, block: str) -> None:
    """Replace the block that ``script`` generated in RESULTS.md (under ``## heading``).

    Only the text between ``<!-- script:begin -->`` and ``<!-- script:end -->`` changes, so
    the hand-written notes around it stay; a missing block is appended (after a new
    ``## heading`` unless ``heading`` is None).
    """
    path = ROOT / "benchmarks" / "RESULTS.md"
    begin, end = f"<!-- {script}:begin -->", f"<!-- {script}:end -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    generated = f"{begin}\n{block}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: generated, text,
                      flags=re.S)
    else:
        title = f"## {heading}\n\n" if heading else ""
        text = text.rstrip("\n") + f"\n\n{title}{generated}\n"
    path.write_text(text)
