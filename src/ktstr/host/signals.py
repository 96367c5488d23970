"""SIGTERM as Ctrl-C, and cleanup that a second Ctrl-C cannot cut short."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from ktstr.errors import Terminated


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def terminate_like_interrupt() -> None:
    """SIGTERM raises ``Terminated`` (a KeyboardInterrupt), so every owner's
    cleanup runs as for Ctrl-C. Only where SIGTERM still has its default."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(
        signal.SIGTERM
    ) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _terminate)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Inside the block, SIGINT and SIGTERM are remembered instead of raised;
    the first one is raised when the block ends. Cleanup runs to the end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def remember(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    old = {s: signal.signal(s, remember) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if pending:
            raise KeyboardInterrupt if pending[0] == signal.SIGINT else Terminated
