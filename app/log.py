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


# Longest text from a client or a file that a log line quotes; the rest is cut.
MAX_QUOTED_CHARS = 256


def escape(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """Return ``text`` safe for one log line: control characters escaped, at most ``limit``.

    Newlines, escape sequences and other non-printable characters from a file name, a
    model version or a request would otherwise forge or garble log lines.
    """
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


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

    def format(self, record: logging.LogRecord) -> str:
        # The format above, spelt out: logging.Formatter.format's generic path (style
        # lookups, %-formatting of the whole line) costs microseconds per access-log line.
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        return f"{record.asctime} {record.levelname} {record.name}: {record.message}"


# Attributes of a LogRecord that change from one record to the next (set by access_record).
_DYNAMIC_FIELDS = ("msg", "args", "created", "msecs", "relativeCreated")
_record_templates: dict[tuple[str, str], dict] = {}


def access_record(name: str, pathname: str, msg: str, fields: dict) -> logging.LogRecord:
    """Return an INFO record of logger ``name`` with message ``msg`` and ``fields`` set.

    The same record ``logging.LogRecord(name, INFO, pathname, 0, msg, (), None)`` would be,
    built from a per-logger template: LogRecord's constructor recomputes the file name and
    module of ``pathname`` on every call. Only with lean records (see :func:`lean_records`,
    no thread or process names): otherwise the constructor runs as usual.
    """
    if logging.logThreads or logging.logProcesses or logging.logMultiprocessing:
        record = logging.LogRecord(name, logging.INFO, pathname, 0, msg, (), None)
    else:
        template = _record_templates.get((name, pathname))
        if template is None:
            base = logging.LogRecord(name, logging.INFO, pathname, 0, "", (), None).__dict__
            template = _record_templates[name, pathname] = {
                key: value for key, value in base.items() if key not in _DYNAMIC_FIELDS}
        record = logging.LogRecord.__new__(logging.LogRecord)
        created = time.time()
        record.__dict__.update(template)
        record.msg, record.args, record.created = msg, (), created
        record.msecs = int((created - int(created)) * 1000) + 0.0
        record.relativeCreated = (created - logging._startTime) * 1000
    record.__dict__.update(fields)
    return record


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
