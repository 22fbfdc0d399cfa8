"""Log set-up: text or JSON lines, for the service's loggers and uvicorn's."""

from __future__ import annotations

import logging
import logging.config
import time
from contextvars import ContextVar
from typing import Any

import orjson

# The model and batch size of the request being served, for its access-log line: the
# request middleware sets a fresh dict and inference fills it in, whatever the protocol.
REQUEST_INFO: ContextVar[dict | None] = ContextVar("nnserve_request_info", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_FIELDS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime",
                                                             "color_message"}


class _SecondCache:
    """strftime once per second: every access-log line needs a timestamp."""

    def __init__(self, convert, pattern: str) -> None:
        self.convert, self.pattern = convert, pattern
        self.cached: tuple[int, str] = (-1, "")

    def __call__(self, created: float) -> str:
        second = int(created)
        cached = self.cached  # one read: another thread may replace the tuple meanwhile
        if cached[0] != second:
            cached = self.cached = (second, time.strftime(self.pattern, self.convert(second)))
        return cached[1]


class TextFormatter(logging.Formatter):
    """``time level logger: message``, local time with milliseconds."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._stamp = _SecondCache(time.localtime, "%Y-%m-%d %H:%M:%S")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return f"{self._stamp(record.created)},{int(record.msecs):03d}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the ``extra`` fields."""

    def __init__(self) -> None:
        super().__init__()
        self._stamp = _SecondCache(time.gmtime, "%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": f"{self._stamp(record.created)}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def logging_config(level: str = "info", fmt: str = "text") -> dict:
    """Return a ``logging.config.dictConfig`` for nnserve's and uvicorn's loggers."""
    formatter = {"()": JsonFormatter if fmt == "json" else TextFormatter}
    handler = {"class": "logging.StreamHandler", "formatter": "default",
               "stream": "ext://sys.stderr"}
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "nnserve": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            # nnserve writes its own access line (with request id, model and batch size).
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


def lean_records() -> None:
    """Stop filling in thread and process names on log records, in this process.

    Building a record looks them up every time (about a third of the cost of an access-log
    line); the service's formats never show them.
    """
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def configure(level: str = "info", fmt: str = "text") -> None:
    """Give the ``nnserve`` loggers a handler unless a launcher already did."""
    lean_records()
    logger = logging.getLogger("nnserve")
    if logger.handlers:
        return
    config = logging_config(level, fmt)
    config["loggers"] = {"nnserve": config["loggers"]["nnserve"]}
    logging.config.dictConfig(config)
