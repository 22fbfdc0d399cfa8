"""When the repository rescans: at start, on SIGHUP, every NNSERVE_POLL_INTERVAL, on the API.

One :class:`Reloader` per application (``app.state.reloader``). Scans run one at a time in a
worker thread, so the event loop keeps answering while files load; requests that ask for a
scan while one runs share the next one.

With several workers (``--workers``), each is its own process with its own repository.
They converge on the same set because every trigger reaches every worker: each polls the
folder on its own interval; SIGHUP to the launcher is forwarded to every worker
(:class:`app.__main__.ForwardingSupervisor`); and a worker that changes the set through the
repository API writes the unload list to the shared ``state_dir`` and sends SIGHUP to the
launcher, which forwards it. uvicorn's supervisor reads its signals every 0.5 s, so every
worker has started its rescan within about half a second of the change, and finished it a
file load later (well under a second for these artifacts); the poll interval bounds it
even if a signal were lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from pathlib import Path

from anyio import to_thread

from app.repository import Repository, Snapshot

logger = logging.getLogger("nnserve.repository")


class Reloader:
    """Runs :meth:`Repository.scan` on request, on SIGHUP and on a poll interval."""

    def __init__(self, repository: Repository, poll_interval: float = 0.0,
                 notify_supervisor: bool = False) -> None:
        self.repository = repository
        self.poll_interval = poll_interval
        self.notify_supervisor = notify_supervisor
        self.stopping = False
        # Also asked between two files of a scan: the dataplane's draining flag.
        self.should_stop = lambda: False
        self._lock: asyncio.Lock | None = None
        self._pending: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._previous_hup: object = None
        self._ready_file: Path | None = None

    async def rescan(self, retry: bool = True) -> Snapshot | None:
        """Scan now (after the scan already running, if any) and serve the new snapshot.

        The files load in a worker thread; the snapshot is swapped in here, on the event
        loop. ``retry`` loads again the files that failed even if they have not changed
        (SIGHUP and the API do; a poll reloads only changed files: the same bytes would
        fail the same way).
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            snapshot = await to_thread.run_sync(
                self.repository.build, retry, lambda: self.stopping or self.should_stop())
            if snapshot is not None:  # None: stopped half-way (shutting down)
                self.repository.install(snapshot)
            return snapshot

    def request_rescan(self) -> None:
        """Schedule one scan soon; requests made while one is waiting share it."""
        if self._pending is not None and not self._pending.done():
            return
        self._pending = self._spawn(self._scan_logged())

    async def _scan_logged(self, retry: bool = True) -> None:
        try:
            await self.rescan(retry)
        except Exception:  # a scan bug must not end the trigger that asked for it
            logger.exception("the folder scan failed; the served models are unchanged")

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def notify_workers(self) -> None:
        """Ask the launcher to forward SIGHUP to every worker (with several workers)."""
        if self.notify_supervisor:
            try:
                os.kill(os.getppid(), signal.SIGHUP)
            except OSError as exc:
                logger.error("cannot signal the launcher (%s); the other workers see the "
                             "change at their next poll", exc)

    def watch_hangup(self, ready_file: Path | None = None) -> None:
        """Rescan on SIGHUP (signals reach the main thread only; elsewhere nothing happens).

        ``ready_file`` is then created: the launcher forwards SIGHUP only to the workers
        that have one, since SIGHUP ends a process that has no handler for it yet.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()

        def on_hup(signum: int, frame: object) -> None:
            loop.call_soon_threadsafe(self.request_rescan)

        self._previous_hup = signal.signal(signal.SIGHUP, on_hup)
        if ready_file is not None:
            ready_file.touch()
            self._ready_file = ready_file

    def start_polling(self) -> None:
        """Scan every ``poll_interval`` seconds (0: never) from the running loop."""
        if self.poll_interval > 0:
            self._spawn(self._poll())

    async def _poll(self) -> None:
        while not self.stopping:
            await asyncio.sleep(self.poll_interval)
            await self._scan_logged(retry=False)

    def stop(self) -> None:
        """Stop polling and restore the SIGHUP handler."""
        self.stopping = True
        for task in list(self._tasks):
            task.cancel()
        if self._ready_file is not None:
            self._ready_file.unlink(missing_ok=True)
            self._ready_file = None
        if self._previous_hup is not None:
            # A SIGHUP forwarded while this worker shuts down must not end it early.
            previous = self._previous_hup
            signal.signal(signal.SIGHUP, signal.SIG_IGN if previous == signal.SIG_DFL
                          else previous)
            self._previous_hup = None
