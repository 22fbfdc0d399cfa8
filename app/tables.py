"""Rows of int64 counters that one worker writes and any worker sums: the store behind the
statistics extension (:mod:`app.statistics`) and the per-request metrics (:mod:`app.metrics`).

A worker adds to its own table; a read sums the tables of every worker. With one worker the
table is anonymous memory. With ``--workers`` > 1 (where prometheus-client's
``PROMETHEUS_MULTIPROC_DIR`` is set) each worker's table is a memory-mapped file in that
folder, ``<prefix><pid>-<random>.bin``, with the keys of its rows appended to the ``.keys``
file of the same name: the same idea as prometheus-client's multiprocess files (one writer
per file, readers sum), but an addition is a store through a memoryview (tens of
nanoseconds) rather than a locked write per figure. A row is written by its worker's
event-loop thread only; a reader may see an update half-done (a count before its time),
never a lost one. A table of a worker that has stopped keeps being read: its counts stay.
"""

from __future__ import annotations

import logging
import mmap
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

logger = logging.getLogger("nnserve.tables")

Key = tuple[str, ...]


def _encode(key: Key) -> str:
    # One line of the keys file: each part with its tabs, newlines and backslashes escaped.
    return "\t".join(part.encode("unicode_escape").decode("ascii") for part in key)


def _decode(line: str) -> Key:
    return tuple(part.encode("ascii").decode("unicode_escape") for part in line.split("\t"))


class CounterTable:
    """This worker's rows of ``columns`` int64 counters, and the sum over workers on read.

    ``folder`` None keeps the table in anonymous memory; otherwise it is a file in that
    folder named after ``prefix``, which the other workers read. At most ``max_rows`` keys
    are counted: the table is allocated lazily (zero pages), so the bound costs nothing
    unused. ``what`` names the table in the warning logged when it is full.
    """

    def __init__(self, folder: str | Path | None, prefix: str, columns: int, max_rows: int,
                 what: str) -> None:
        self.folder = Path(folder) if folder else None
        self.prefix, self.columns, self.max_rows, self.what = prefix, columns, max_rows, what
        self._rows: dict[Key, int] = {}  # key -> index of its first column
        self._full = False
        self._keys_file = None
        size = max_rows * columns * 8
        if self.folder is None:
            self._buffer = mmap.mmap(-1, size)
        else:
            # A unique name per table: one process may build several applications (tests).
            handle, name = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}-", suffix=".bin",
                                            dir=self.folder)
            try:
                os.ftruncate(handle, size)  # sparse: zero pages until written
                self._buffer = mmap.mmap(handle, size)
            finally:
                os.close(handle)
            self._keys_file = open(Path(name).with_suffix(".keys"), "a",  # noqa: SIM115
                                   encoding="ascii")
        #: The counters, written as ``values[row + column] += n`` (event-loop thread only).
        self.values = memoryview(self._buffer).cast("q")

    def row(self, key: Key) -> int | None:
        """Return the index of the first column of ``key``'s row (made on first use), or
        None once the table is full."""
        row = self._rows.get(key)
        if row is None:
            index = len(self._rows)
            if index >= self.max_rows:
                if not self._full:
                    self._full = True
                    logger.warning("%s table full (%d rows): new keys are no longer counted",
                                   self.what, self.max_rows)
                return None
            row = self._rows[key] = index * self.columns
            if self._keys_file is not None:
                self._keys_file.write(f"{index}\t{_encode(key)}\n")
                self._keys_file.flush()
        return row

    def close(self) -> None:
        if self._keys_file is not None:
            self._keys_file.close()
            self._keys_file = None

    # -- reading (any worker) -------------------------------------------------------------

    def _tables(self) -> Iterable[tuple[dict[Key, int], np.ndarray]]:
        """Every worker's (key -> row index, rows); only this one's without a folder."""
        shape = (self.max_rows, self.columns)
        if self.folder is None:
            rows = np.frombuffer(self._buffer, dtype=np.int64).reshape(shape)
            yield {key: row // self.columns for key, row in self._rows.items()}, rows
            return
        for keys_path in sorted(self.folder.glob(f"{self.prefix}*.keys")):
            try:
                lines = keys_path.read_text(encoding="ascii").split("\n")[:-1]  # last: partial
                rows = np.memmap(keys_path.with_suffix(".bin"), dtype=np.int64, mode="r",
                                 shape=shape)
            except (OSError, ValueError):  # a worker's files being created right now
                continue
            index = {}
            for line in lines:
                position, _, key = line.partition("\t")
                index[_decode(key)] = int(position)
            yield index, rows

    def totals(self, max_columns: tuple[int, ...] = ()) -> dict[Key, np.ndarray]:
        """Return every key's row summed over the workers (``max_columns``: the largest)."""
        summed: dict[Key, np.ndarray] = {}
        for index, rows in self._tables():
            for key, position in index.items():
                values = np.array(rows[position])
                found = summed.get(key)
                if found is None:
                    summed[key] = values
                else:
                    largest = [max(found[column], values[column]) for column in max_columns]
                    found += values
                    found[list(max_columns)] = largest
        return summed


__all__ = ["CounterTable"]
