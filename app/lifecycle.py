"""Start-up and shutdown: load the models, watch SIGTERM for draining, flush at the end."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

from app import log, metrics
from app.config import Settings
from app.dataplane import DataPlane
from app.protocol import READ_TIMEOUT_STATE
from app.registry import default_model_dir

logger = logging.getLogger("nnserve")


def watch_termination(dataplane: DataPlane, drain_delay: float) -> dict[int, object]:
    """Set ``dataplane.draining`` on SIGTERM/SIGINT, then hand the signal on.

    The server (uvicorn) installs its own handlers before the lifespan starts; chaining to
    them keeps its graceful shutdown (stop accepting, finish in-flight requests) while
    /ready turns 503 at the very moment the signal arrives. With ``drain_delay`` the
    hand-over of SIGTERM waits, so load balancers see 503 before the listener closes.
    Returns the replaced handlers. Signals can only be handled in the main thread: under a
    test client the lifespan runs elsewhere and this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    loop = asyncio.get_running_loop()
    replaced: dict[int, object] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if not callable(previous):
            continue

        def handler(sig: int, frame: object, previous=previous) -> None:
            first = not dataplane.draining
            dataplane.draining = True
            if first and sig == signal.SIGTERM and drain_delay > 0:
                logger.info("SIGTERM: draining for %.3g s before stopping", drain_delay)
                loop.call_soon_threadsafe(loop.call_later, drain_delay, previous, sig, None)
            else:
                previous(sig, frame)

        signal.signal(signum, handler)
        replaced[signum] = previous
    return replaced


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict]:
    """Load the model folder (unless the app was given a registry) and serve until shutdown.

    Yields the lifespan state uvicorn hands to its protocol: the read deadline of
    ``app.protocol`` comes from these settings, never from the environment.
    """
    settings: Settings = app.state.settings
    dataplane: DataPlane = app.state.dataplane
    log.configure(settings.log_level, settings.log_format)
    dataplane.draining = False  # a lifespan may start again after an earlier shutdown
    # Watched before the models load: a SIGTERM during start-up stops the loading.
    replaced = watch_termination(dataplane, settings.drain_delay)
    reloader = None
    if app.state.load_models:
        reloader = dataplane.serve_folder(settings.model_dir or default_model_dir())
        reloader.should_stop = lambda: dataplane.draining
        state_dir = settings.state_dir
        # SIGHUP is watched before the first scan, so no change falls between the two.
        reloader.watch_hangup(state_dir / f"ready-{os.getpid()}" if state_dir else None)
        # The files load in a worker thread: the event loop (and the signals) stay free.
        await reloader.rescan()
        reloader.start_polling()
    registry = dataplane.registry
    metrics.MODELS_LOADED.set(len(registry))
    metrics.REPOSITORY_SCAN_SUCCESS.set(1 if len(registry) else 0)
    # Also set by every scrape; here so a worker that answers none still reports itself.
    metrics.READY.set(0 if dataplane.not_ready_reason() else 1)
    if len(registry):
        metrics.REPOSITORY_LAST_SUCCESS.set_to_current_time()
    logger.info("serving %d model(s): %s; default %s", len(registry),
                ", ".join(registry.names()) or "none", registry.default)
    try:
        yield {READ_TIMEOUT_STATE: settings.read_timeout}
    finally:
        if reloader is not None:
            reloader.stop()
        dataplane.close()  # no request left waiting for its batching group
        metrics.READY.set(0)
        provider = getattr(app.state, "tracer_provider", None)
        if provider is not None:  # export the spans still waiting in the batch processor
            await to_thread.run_sync(provider.force_flush)
        for signum, previous in replaced.items():
            signal.signal(signum, previous)
