"""Per-model statistics in Triton's shape (the statistics extension), true across workers.

Every figure is kept per (model name, version), and per batch size for executions, in a
:class:`~app.tables.CounterTable`: each worker adds to its own rows (a store through a
memoryview, tens of nanoseconds, rather than a locked write per figure) and a statistics
request sums the rows of every worker.

Columns of a row (nanoseconds are ``time.perf_counter_ns`` differences):

========================  ===================================================================
success, fail             requests answered (and failed) for the model: count, ns end to end
queue                     requests that waited for an adaptive-batching group: count, ns
compute_input             decoding and checking the request body (per request)
compute_infer             the forward pass that computed the request's rows
compute_output            encoding the answer
inference_count           samples answered successfully
execution_count           forward passes run (one per merged group)
last_inference            ms since the epoch of the last answered request (max on read)
========================  ===================================================================

A batch-size row (one per size of forward pass) uses compute_input (assembling the batch),
compute_infer, compute_output (splitting and checking the rows) and execution_count.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from app.tables import CounterTable

SUCCESS, FAIL, QUEUE, INPUT, INFER, OUTPUT = 0, 2, 4, 6, 8, 10  # (count, ns) pairs
INFERENCES, EXECUTIONS, LAST_MS = 12, 13, 14
COLUMNS = 15
# Rows are (model, version) and (model, version, batch size): at most 1 + max_batch per
# version. The table is allocated lazily (zero pages), so the bound costs nothing unused.
MAX_ROWS = 16384
_PAIRS = {"success": SUCCESS, "fail": FAIL, "queue": QUEUE, "compute_input": INPUT,
          "compute_infer": INFER, "compute_output": OUTPUT}
_BATCH_PAIRS = ("compute_input", "compute_infer", "compute_output")
FILE_PREFIX = "nnserve-stats-"


class Statistics:
    """This worker's counters, and the sum over every worker's on read.

    ``folder`` None keeps the table in anonymous memory (one worker); otherwise it is the
    file ``nnserve-stats-<pid>-<random>.bin`` there, which other workers read.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self._counters = CounterTable(folder, FILE_PREFIX, COLUMNS, MAX_ROWS, "statistics")
        self._table = self._counters.values

    # -- writing (the event loop's thread only) -------------------------------------------

    def _row(self, name: str, version: str, batch_size: int = 0) -> int | None:
        return self._counters.row((name, version, str(batch_size)))

    def success(self, name: str, version: str, samples: int, total_ns: int, decode_ns: int,
                queue_ns: int | None, infer_ns: int, encode_ns: int) -> None:
        """Count one answered request of ``samples`` rows and its phases."""
        row = self._row(name, version)
        if row is None:
            return
        table = self._table
        table[row + SUCCESS] += 1
        table[row + SUCCESS + 1] += total_ns
        if queue_ns is not None:
            table[row + QUEUE] += 1
            table[row + QUEUE + 1] += queue_ns
        table[row + INPUT] += 1
        table[row + INPUT + 1] += decode_ns
        table[row + INFER] += 1
        table[row + INFER + 1] += infer_ns
        table[row + OUTPUT] += 1
        table[row + OUTPUT + 1] += encode_ns
        table[row + INFERENCES] += samples
        table[row + LAST_MS] = time.time_ns() // 1_000_000

    def failure(self, name: str, version: str, total_ns: int) -> None:
        """Count one request for the model that was refused or failed."""
        row = self._row(name, version)
        if row is not None:
            self._table[row + FAIL] += 1
            self._table[row + FAIL + 1] += total_ns

    def execution(self, name: str, version: str, batch_size: int, input_ns: int,
                  infer_ns: int, output_ns: int) -> None:
        """Count one forward pass of ``batch_size`` rows."""
        row = self._row(name, version)
        batch_row = self._row(name, version, batch_size)
        if row is None or batch_row is None:
            return
        table = self._table
        table[row + EXECUTIONS] += 1
        table[batch_row + INPUT] += 1
        table[batch_row + INPUT + 1] += input_ns
        table[batch_row + INFER] += 1
        table[batch_row + INFER + 1] += infer_ns
        table[batch_row + OUTPUT] += 1
        table[batch_row + OUTPUT + 1] += output_ns
        table[batch_row + EXECUTIONS] += 1

    def close(self) -> None:
        self._counters.close()

    # -- reading (any worker) -------------------------------------------------------------

    def totals(self) -> dict[tuple[str, str, int], np.ndarray]:
        """Return the sum over workers of every row: (name, version, batch size) -> row."""
        return {(name, version, int(batch)): row for (name, version, batch), row
                in self._counters.totals(max_columns=(LAST_MS,)).items()}

    def model_stats(self, models: list[tuple[str, str]]) -> list[dict]:
        """Return Triton's ``model_stats`` entries for (name, version) pairs, in order."""
        totals = self.totals()
        empty = np.zeros(COLUMNS, dtype=np.int64)
        entries = []
        for name, version in models:
            row = totals.get((name, version, 0), empty)
            batches = sorted((batch, values) for (n, v, batch), values in totals.items()
                             if n == name and v == version and batch)
            entries.append({
                "name": name,
                "version": version,
                "last_inference": int(row[LAST_MS]),
                "inference_count": int(row[INFERENCES]),
                "execution_count": int(row[EXECUTIONS]),
                "inference_stats": {
                    field: {"count": int(row[column]), "ns": int(row[column + 1])}
                    for field, column in _PAIRS.items()},
                "batch_stats": [
                    {"batch_size": batch, **{
                        field: {"count": int(values[_PAIRS[field]]),
                                "ns": int(values[_PAIRS[field] + 1])}
                        for field in _BATCH_PAIRS}}
                    for batch, values in batches],
                "memory_usage": [],
            })
        return entries


__all__ = ["Statistics"]
