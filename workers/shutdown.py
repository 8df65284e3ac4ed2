"""Handing a job back when the worker shuts down.

The worker's main process forwards RELEASE_SIGNAL to its pool children (workers/__main__.py); a
SIGTERM may also reach the training process itself. Either asks the running job (or the next one)
to stop at the end of its epoch, checkpoint and be released: queued again at once, its attempt not
spent (jobs.release).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = [
    "RELEASE_REASON",
    "RELEASE_SIGNAL",
    "clear_release_request",
    "cooperative_sigterm",
    "install_release_handler",
    "release_requested",
    "request_release",
]

RELEASE_SIGNAL = signal.SIGUSR2  # neither Celery nor billiard (without sigprotection) uses it in a pool child
RELEASE_REASON = "released: worker shutting down"
# Set once this process is asked to hand its job back; never cleared: the process is on its way out.
_release_requested = threading.Event()


def request_release(signum: int | None = None, frame: FrameType | None = None) -> None:
    """Ask the running job (or the next one) to stop at its epoch's end and be released."""
    _release_requested.set()


def release_requested() -> bool:
    """Whether this process was asked to hand its job back."""
    return _release_requested.is_set()


def clear_release_request() -> None:
    """Forget a release request: for a process that starts over as a new worker would (tests)."""
    _release_requested.clear()


def install_release_handler() -> None:
    """RELEASE_SIGNAL -> request_release, in this process (a pool child: Celery's worker_process_init)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(RELEASE_SIGNAL, request_release)


@contextmanager
def cooperative_sigterm() -> Iterator[None]:
    """While a job trains: the first SIGTERM asks for a release instead of raising SystemExit in the
    middle of an epoch (billiard's handler); a second one does what the previous handler did. The
    previous handler is back on exit. Does nothing outside the main thread (no handlers there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    received: list[int] = []

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) == 1:
            request_release()
            return
        signal.signal(signum, previous)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
