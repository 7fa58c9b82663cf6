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


def serve_workers(settings: Settings) -> None:
    listeners = bind(settings)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{listeners[0].getsockname()[1]}"
    ready_read, ready_write = os.pipe()
    workers: dict[int, int] = {}  # pid -> worker number
    for number in range(settings.workers):
        workers[_fork(number, settings, listeners, ready_write)] = number

    # Each worker writes one byte once it serves; the port is "listening" when all have.
    started = 0
    while started < settings.workers:
        readable, _, _ = select.select([ready_read], [], [], 0.2)
        if readable:
            started += len(os.read(ready_read, settings.workers - started))
            continue
        pid, _status = os.waitpid(-1, os.WNOHANG)
        if pid:  # a worker died while starting (it said why): stop the others
            workers.pop(pid, None)
            for other in workers:
                os.kill(other, signal.SIGTERM)
            for other in workers:
                os.waitpid(other, 0)
            raise StartupError("a worker could not start (see its error above)")
    log.info("laf-py listening on %s with %d workers", url, settings.workers)
    _supervise(settings, listeners, ready_write, workers)


def _fork(number: int, settings: Settings, listeners: list[socket.socket], ready: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    # The worker: its own event loop, runtime and node id, and none of the parent's handlers.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    code = 0
    try:
        serve_one(settings, listeners, ready=lambda: _say_ready(ready))
    except StartupError as exc:
        print(f"laf-py: error: worker {number}: {exc}", file=sys.stderr)
        code = 1
    except BaseException:
        log.exception("worker %d crashed", number)
        code = 1
    logging.shutdown()
    os._exit(code)


def _say_ready(ready: int) -> None:
    os.write(ready, b".")


def _supervise(
    settings: Settings, listeners: list[socket.socket], ready: int, workers: dict[int, int]
) -> None:
    stopping = False
    deaths: list[float] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while workers:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        number = workers.pop(pid, None)
        if number is None or stopping:
            continue
        deaths[:] = [t for t in deaths if time.monotonic() - t < RESTART_WINDOW]
        deaths.append(time.monotonic())
        if len(deaths) > RESTART_LIMIT:
            log.error("workers keep dying; not restarting worker %d", number)
            continue
        log.warning("worker %d exited (status %d); starting a new one", number, status)
        workers[_fork(number, settings, listeners, ready)] = number
    log.info("laf-py stopped (all workers)")
