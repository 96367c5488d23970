"""Thin typed wrapper over qemu.qmp's ``QMPClient``, every call with a deadline.

The client is asyncio-based; this owner runs it on a private event loop, so
callers stay synchronous and no QMP call can block the host's watchdog: a
QEMU that stops answering is a ``VmError`` after ``timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import QMPClient

from ktstr.errors import VmError

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Default deadline of one QMP command.
CALL_TIMEOUT = 10.0


class Qmp:
    """Connects to QEMU's QMP server socket (QEMU listens, we connect)."""

    def __init__(self, path: Path, timeout: float = CALL_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client: QMPClient | None = None

    def _run(self, coro: Awaitable[T], timeout: float, what: str) -> T:
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))
        except TimeoutError:
            raise VmError(f"QMP {what}: no answer from QEMU within {timeout:g}s") from None

    def connect(self, timeout: float = 10.0) -> None:
        """Retry until QEMU answers. qemu.qmp logs an attempt cut short (QEMU
        slow to start, as at 192 vCPUs) as an ERROR on the user's terminal;
        only the last failure is ours to tell, as a VmError."""
        quiet = logging.getLogger("qemu.qmp")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            self._connect(timeout)
        finally:
            quiet.setLevel(level)

    def _connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            client = QMPClient("ktstr")
            try:
                self._run(client.connect(str(self.path)), 2.0, "connect")
            except Exception as exc:  # qemu.qmp raises several types here
                self._run(client.disconnect(), 2.0, "disconnect")
                if time.monotonic() > deadline:
                    raise VmError(f"cannot connect to QMP at {self.path}: {exc}") from exc
                time.sleep(0.05)
                continue
            self._client = client
            return

    def cmd(self, name: str, **args: Any) -> Any:
        if self._client is None:
            raise VmError("QMP is not connected")
        return self._run(self._client.execute(name, args or None), self.timeout, name)

    def stop(self) -> None:
        """Freeze all vCPUs."""
        self.cmd("stop")

    def cont(self) -> None:
        self.cmd("cont")

    def quit(self) -> None:
        self.cmd("quit")

    def status(self) -> str:
        return str(self.cmd("query-status")["status"])

    def registers(self) -> str:
        """vCPU registers of every CPU, as the human monitor prints them."""
        return str(self.cmd("human-monitor-command", **{"command-line": "info registers -a"}))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            if self._client is not None:
                self._run(self._client.disconnect(), 2.0, "disconnect")
        except Exception as exc:  # QEMU may be gone already
            log.debug("QMP disconnect: %s", exc)
        finally:
            self._client = None
            self._loop.close()
