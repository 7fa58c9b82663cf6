"""``--workers N``: N processes serving one port, joined through Redis.

The parent binds the port, forks the workers (each inherits the listening socket, and the
kernel hands every new connection to one of them), then only supervises: it forwards SIGTERM
and SIGINT, restarts a worker that dies on its own, and exits when all have stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import time
from types import FrameType

from ..config import Settings
from ..runtime import StartupError
from .runner import bind, serve_one

__all__ = ["serve_workers"]

log = logging.getLogger("laf_py")

RESTART_LIMIT = 5  # deaths within RESTART_WINDOW seconds after which a worker is not restarted
RESTART_WINDOW = 30.0
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def serve_workers(settings: Settings) -> None:
    listeners = bind(settings)
    if not settings.metrics:
        _supervise(settings, listeners)
        return
    from ..metrics import share_between_workers, stop_sharing

    # Before forking: every worker's metrics go to files of one fresh folder, so a scrape of
    # any worker covers them all (laf_py/metrics.py).
    share_between_workers()
    try:
        _supervise(settings, listeners)
    finally:
        stop_sharing()


def _supervise(settings: Settings, listeners: list[socket.socket]) -> None:
    supervisor = _Supervisor(settings, listeners)
    supervisor.start()
    supervisor.supervise()


class _Supervisor:
    def __init__(self, settings: Settings, listeners: list[socket.socket]) -> None:
        self.settings = settings
        self.listeners = listeners
        self.workers: dict[int, int] = {}  # pid -> worker number
        self.stopping = False
        self._ready_read, self._ready_write = os.pipe()
        self._deaths: list[float] = []

    def start(self) -> None:
        """Fork every worker and wait until each serves (or one fails, or we are stopped)."""
        # Handlers first: a signal during start-up must reach the workers, not orphan them.
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        for number in range(self.settings.workers):
            self._spawn(number)
        started = 0
        while started < self.settings.workers and not self.stopping:
            readable, _, _ = select.select([self._ready_read], [], [], 0.2)
            if readable:  # each worker writes one byte once it serves
                started += len(os.read(self._ready_read, self.settings.workers - started))
                continue
            pid, _status = os.waitpid(-1, os.WNOHANG)
            if pid and not self.stopping:  # a worker died while starting (it said why)
                self.workers.pop(pid, None)
                self._exited(pid)
                self._forward(signal.SIGTERM, None)
                self._reap_all()
                raise StartupError("a worker could not start (see its error above)")
        if not self.stopping:
            host = self.settings.host
            host = f"[{host}]" if ":" in host else host
            url = f"http://{host}:{self.listeners[0].getsockname()[1]}"
            log.info("laf-py listening on %s with %d workers", url, self.settings.workers)

    def supervise(self) -> None:
        """Until every worker has exited: restart those that die on their own."""
        while self.workers:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            self._exited(pid)
            number = self.workers.pop(pid, None)
            if number is None or self.stopping:
                continue
            now = time.monotonic()
            self._deaths = [t for t in self._deaths if now - t < RESTART_WINDOW] + [now]
            if len(self._deaths) > RESTART_LIMIT:
                log.error("workers keep dying; stopping them all")
                self._forward(signal.SIGTERM, None)
                self._reap_all()
                raise StartupError(f"{len(self._deaths)} workers died in {RESTART_WINDOW:g}s")
            code = os.waitstatus_to_exitcode(status)
            log.warning("worker %d exited (%d); starting a new one", number, code)
            self._spawn(number)
        log.info("laf-py stopped (all workers)")

    def _spawn(self, number: int) -> None:
        # Stop signals wait while forking, so that a new worker is always in `workers` when
        # the handler forwards one.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._run_worker(number)  # never returns
            self.workers[pid] = number
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    def _run_worker(self, number: int) -> None:
        # Its own event loop, runtime and node id, and none of the supervisor's handlers.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        code = 0
        try:
            serve_one(self.settings, self.listeners, ready=self._say_ready, announce=number == 0)
        except StartupError as exc:
            print(f"laf-py: error: worker {number}: {exc}", file=sys.stderr)
            code = 1
        except BaseException:
            log.exception("worker %d crashed", number)
            code = 1
        logging.shutdown()
        os._exit(code)

    def _say_ready(self) -> None:
        os.write(self._ready_write, b".")

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reap_all(self) -> None:
        for pid in list(self.workers):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self._exited(pid)
        self.workers.clear()

    def _exited(self, pid: int) -> None:
        """A worker is gone: its open connections leave laf_websocket_connections."""
        if self.settings.metrics:
            from ..metrics import worker_exited

            worker_exited(pid)
