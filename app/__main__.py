"""``python -m app`` / ``nnserve``: serve the models with uvicorn; flags override NNSERVE_*."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

import uvicorn
from prometheus_client import multiprocess
from pydantic import ValidationError
from uvicorn.supervisors import Multiprocess

from app.config import Settings
from app.log import logging_config
from app.protocol import GuardedHttpToolsProtocol

logger = logging.getLogger("nnserve")

# Flags and the settings they set; anything else comes from NNSERVE_* variables.
FLAGS = {
    "host": "address to listen on (NNSERVE_HOST, default 127.0.0.1)",
    "port": "TCP port (NNSERVE_PORT, default 8000)",
    "workers": "worker processes (NNSERVE_WORKERS, default 1)",
    "model_dir": "folder of *.joblib artifacts (NNSERVE_MODEL_DIR, default: the shipped models)",
    "default_model": "model of POST /predict without a name (NNSERVE_DEFAULT_MODEL)",
    "log_level": "critical, error, warning, info or debug (NNSERVE_LOG_LEVEL, default info)",
    "log_format": "text or json (NNSERVE_LOG_FORMAT, default text)",
}


def parse_settings(argv: list[str] | None = None) -> Settings:
    """Read the flags and the environment into one :class:`Settings` (flags win)."""
    parser = argparse.ArgumentParser(
        prog="nnserve",
        description="Serve nnlib networks over HTTP: a native REST API and the Open Inference "
        "Protocol (V2). Every flag also reads an NNSERVE_* environment variable; flags win.",
    )
    for name, help_text in FLAGS.items():
        kind = int if name in ("port", "workers") else str
        parser.add_argument("--" + name.replace("_", "-"), type=kind, help=help_text)
    args = parser.parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    try:
        # Keyword arguments take precedence over the environment in pydantic-settings.
        return Settings(**overrides)
    except ValidationError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def _uvicorn_options(settings: Settings) -> dict:
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": logging_config(settings.log_level, settings.log_format),
        "log_level": settings.log_level,
        # nnserve logs its own access line, with request id, model and batch size.
        "access_log": False,
        "timeout_graceful_shutdown": settings.graceful_timeout,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "server_header": False,
        # httptools with read deadlines and a head size bound (see app/protocol.py).
        "http": GuardedHttpToolsProtocol,
    }


def main(argv: list[str] | None = None) -> int:
    """Start the server and return its exit status once it has shut down."""
    settings = parse_settings(argv)
    if settings.workers == 1:
        from app.main import create_app

        # After a graceful shutdown uvicorn restores the SIGTERM handler it found and raises
        # the signal again, so the process would die "by" SIGTERM (status 143). Ignoring it
        # here makes a clean shutdown exit with status 0; uvicorn's own handler is in place
        # while it serves.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        uvicorn.run(functools.partial(create_app, settings), factory=True,
                    **_uvicorn_options(settings))
        return 0

    # Workers are fresh interpreters that call app.main:create_app, which reads its
    # settings from the environment: hand the flags on through it.
    for name in FLAGS:
        value = getattr(settings, name)
        if value is not None:
            os.environ["NNSERVE_" + name.upper()] = str(value)
    with (tempfile.TemporaryDirectory(prefix="nnserve-metrics-") as metrics_dir,
          tempfile.TemporaryDirectory(prefix="nnserve-state-") as state_dir):
        # prometheus-client's multiprocess mode: every worker writes its values here and
        # /metrics on any worker adds them up. Set before a worker imports prometheus_client.
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
        # The workers share the repository API's unload list here (see app.reload).
        os.environ["NNSERVE_STATE_DIR"] = state_dir
        # What uvicorn.run does for workers > 1, with the supervisor that forwards SIGHUP.
        config = uvicorn.Config("app.main:create_app", factory=True, workers=settings.workers,
                                **_uvicorn_options(settings))
        with contextlib.suppress(KeyboardInterrupt):
            ForwardingSupervisor(config, [config.bind_socket()], Path(state_dir)).run()
    return 0


class ForwardingSupervisor(Multiprocess):
    """uvicorn's worker supervisor, with SIGHUP forwarded to the workers as a rescan.

    uvicorn's own answer to SIGHUP is to restart every worker, which closes the keep-alive
    connections of its clients (a request sent on one as it closes fails) and reloads
    every model. Here each worker rescans the folder instead, and keeps its connections.
    A worker gets the signal only once it has said (its ``ready-<pid>`` file in
    ``state_dir``) that it handles SIGHUP: the default action of SIGHUP ends a process. A
    worker still starting scans the folder itself when it starts.
    """

    def __init__(self, config: uvicorn.Config, sockets: list, state_dir: Path) -> None:
        super().__init__(config, sockets=sockets)
        self.state_dir = state_dir

    def handle_hup(self) -> None:
        forwarded = 0
        for process in self.processes:
            pid = process.pid
            if pid is not None and (self.state_dir / f"ready-{pid}").exists():
                try:
                    os.kill(pid, signal.SIGHUP)
                    forwarded += 1
                except OSError:
                    continue  # gone meanwhile: its replacement scans when it starts
        logger.info("SIGHUP: %d worker(s) rescan the model folder", forwarded)

    def keep_subprocess_alive(self) -> None:
        before = {process.pid for process in self.processes}
        super().keep_subprocess_alive()  # replaces every worker that died
        for pid in before - {process.pid for process in self.processes}:
            # A dead worker's values must leave the "live" gauges (requests in progress,
            # the oldest last scan): prometheus-client keeps its files until told.
            multiprocess.mark_process_dead(pid)
            (self.state_dir / f"ready-{pid}").unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
