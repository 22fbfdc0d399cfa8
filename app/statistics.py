"""Per-model statistics in Triton's shape (the statistics extension), true across workers.

Every figure is kept per (model name, version), and per batch size for executions. A worker
adds to its own table of int64 counters; a statistics request sums the tables of every
worker. With one worker the table is anonymous memory. With ``--workers`` > 1 (where
prometheus-client's ``PROMETHEUS_MULTIPROC_DIR`` is set) each worker's table is a
memory-mapped file in that folder, ``nnserve-stats-<pid>-<random>.bin``, with the keys of
its rows appended to the ``.keys`` file of the same name: the same idea as prometheus-
client's multiprocess files (one writer per file, readers sum), but an addition is a store
through a memoryview (tens of nanoseconds) rather than a locked write per figure. A row is
written by its worker's event-loop thread only; a reader may see a request half-added
(its count before its time), never a lost one.

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

import logging
import mmap
import os
import tempfile
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("nnserve.statistics")

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


def _key(name: str, version: str, batch_size: int = 0) -> str:
    # Names and versions never hold a tab or newline (the registry refuses them in names;
    # versions are escaped here), so the key is one line of the keys file.
    return f"{name}\t{version.encode('unicode_escape').decode('ascii')}\t{batch_size}"


class Statistics:
    """This worker's counters, and the sum over every worker's on read.

    ``folder`` None keeps the table in anonymous memory (one worker); otherwise it is the
    file ``nnserve-stats-<pid>-<random>.bin`` there, which other workers read. Figures are
    written through a memoryview of int64 (about 50 ns an addition, no numpy call per
    request); reads go through numpy.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder else None
        self._rows: dict[tuple[str, str, int], int] = {}  # key -> index of its first column
        self._full = False
        self._keys_file = None
        size = MAX_ROWS * COLUMNS * 8
        if self.folder is None:
            # Anonymous memory: pages are zero until touched, so the bound costs nothing.
            self._buffer = mmap.mmap(-1, size)
        else:
            # A unique name per table: one process may build several applications (tests).
            handle, name = tempfile.mkstemp(prefix=f"{FILE_PREFIX}{os.getpid()}-",
                                            suffix=".bin", dir=self.folder)
            try:
                os.ftruncate(handle, size)  # sparse: zero pages until written
                self._buffer = mmap.mmap(handle, size)
            finally:
                os.close(handle)
            self._keys_file = open(Path(name).with_suffix(".keys"), "a",  # noqa: SIM115
                                   encoding="ascii")
        self._table = memoryview(self._buffer).cast("q")

    # -- writing (the event loop's thread only) -------------------------------------------

    def _row(self, name: str, version: str, batch_size: int = 0) -> int | None:
        key = (name, version, batch_size)
        row = self._rows.get(key)
        if row is None:
            index = len(self._rows)
            if index >= MAX_ROWS:
                if not self._full:
                    self._full = True
                    logger.warning("statistics table full (%d rows): new models, versions "
                                   "or batch sizes are no longer counted", MAX_ROWS)
                return None
            row = self._rows[key] = index * COLUMNS
            if self._keys_file is not None:
                self._keys_file.write(f"{index}\t{_key(*key)}\n")
                self._keys_file.flush()
        return row

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
        if self._keys_file is not None:
            self._keys_file.close()
            self._keys_file = None

    # -- reading (any worker) -------------------------------------------------------------

    def _tables(self) -> list[tuple[dict[str, int], np.ndarray]]:
        """Every worker's (key -> row index, table); only this one's without a folder."""
        if self.folder is None:
            table = np.frombuffer(self._buffer, dtype=np.int64).reshape(MAX_ROWS, COLUMNS)
            return [({_key(*key): row // COLUMNS for key, row in self._rows.items()}, table)]
        tables = []
        for keys_path in sorted(self.folder.glob(f"{FILE_PREFIX}*.keys")):
            try:
                lines = keys_path.read_text(encoding="ascii").split("\n")[:-1]  # last: partial
                table = np.memmap(keys_path.with_suffix(".bin"), dtype=np.int64, mode="r",
                                  shape=(MAX_ROWS, COLUMNS))
            except (OSError, ValueError):  # a worker's files being created right now
                continue
            index = {}
            for line in lines:
                position, _, key = line.partition("\t")
                index[key] = int(position)
            tables.append((index, table))
        return tables

    def totals(self) -> dict[tuple[str, str, int], np.ndarray]:
        """Return the sum over workers of every row: (name, version, batch size) -> row."""
        summed: dict[tuple[str, str, int], np.ndarray] = {}
        for index, table in self._tables():
            for key, position in index.items():
                name, version, batch = key.split("\t")
                version = version.encode("ascii").decode("unicode_escape")
                values = np.array(table[position])
                found = summed.get((name, version, int(batch)))
                if found is None:
                    summed[name, version, int(batch)] = values
                else:
                    last = max(found[LAST_MS], values[LAST_MS])
                    found += values
                    found[LAST_MS] = last
        return summed

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
