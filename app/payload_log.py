"""The payload log: a sample of requests' inputs and answers, as JSON lines, off by default.

``NNSERVE_PAYLOAD_LOG=path`` turns it on: each successful inference is written with
probability ``NNSERVE_PAYLOAD_LOG_SAMPLE_RATE`` as one line ``{"time", "request_id",
"model", "version", "inputs", "probabilities"}``. Space is bounded three ways: a line over
``NNSERVE_PAYLOAD_LOG_MAX_RECORD_BYTES`` keeps its metadata but drops the arrays (and says
so), the file rotates at ``NNSERVE_PAYLOAD_LOG_MAX_BYTES`` and at most
``NNSERVE_PAYLOAD_LOG_BACKUPS`` old files are kept. Only the arrays the model saw and
returned are written: never a header, so never an Authorization header or the API key.
With several workers each writes its own file, ``path.<pid>`` (rotation is per file: two
processes cannot rotate one file safely).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import random
import time
from pathlib import Path

import numpy as np
import orjson

from app.log import REQUEST_INFO


class PayloadLog:
    """Writes sampled request payloads to a size-bounded, rotating file."""

    def __init__(self, path: str | Path, sample_rate: float = 1.0,
                 max_bytes: int = 64 * 1024 * 1024, backups: int = 3,
                 max_record_bytes: int = 64 * 1024, rng: random.Random | None = None) -> None:
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.max_record_bytes = max_record_bytes
        self.rng = rng or random.Random()
        # delay: the file is created by the first record, not by an idle server.
        self.handler = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True)
        self.handler.setFormatter(logging.Formatter("%(message)s"))

    @classmethod
    def from_settings(cls, settings) -> PayloadLog | None:
        """The payload log the settings ask for, or None when it is off."""
        if settings.payload_log is None or settings.payload_log_sample_rate <= 0:
            return None
        path = Path(settings.payload_log)
        if settings.workers > 1:
            path = path.with_name(f"{path.name}.{os.getpid()}")
        return cls(path, settings.payload_log_sample_rate, settings.payload_log_max_bytes,
                   settings.payload_log_backups, settings.payload_log_max_record_bytes)

    def record(self, model, inputs: np.ndarray, probabilities: np.ndarray) -> bool:
        """Write one request's payload if it is sampled; return whether it was."""
        if self.sample_rate < 1 and self.rng.random() >= self.sample_rate:
            return False
        info = REQUEST_INFO.get() or {}
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
            "request_id": info.get("request_id"),
            "model": model.name,
            "version": model.version,
            "inputs": inputs,
            "probabilities": probabilities,
        }
        # Converted first, checked after: the arrays' size in JSON is what is bounded.
        line = orjson.dumps(entry, option=orjson.OPT_SERIALIZE_NUMPY)
        if len(line) > self.max_record_bytes:
            entry.update(inputs=None, probabilities=None, truncated=True,
                         shape=list(inputs.shape))
            line = orjson.dumps(entry)
        self.handler.emit(logging.makeLogRecord({"msg": line.decode(), "args": ()}))
        return True

    def close(self) -> None:
        self.handler.close()


__all__ = ["PayloadLog"]
