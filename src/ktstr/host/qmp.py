"""Thin typed wrapper over qemu.qmp's synchronous client."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from qemu.qmp.legacy import QEMUMonitorProtocol

from ktstr.errors import VmError


class Qmp:
    """Connects to QEMU's QMP server socket (QEMU listens, we connect)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mon: QEMUMonitorProtocol | None = None

    def connect(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            mon = QEMUMonitorProtocol(str(self.path))
            try:
                mon.connect(negotiate=True)
            except Exception as exc:  # qemu.qmp raises several types here
                mon.close()
                if time.monotonic() > deadline:
                    raise VmError(f"cannot connect to QMP at {self.path}: {exc}") from exc
                time.sleep(0.05)
                continue
            self._mon = mon
            return

    def cmd(self, name: str, **args: Any) -> Any:
        if self._mon is None:
            raise VmError("QMP is not connected")
        return self._mon.cmd(name, **args)

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
        if self._mon is not None:
            try:
                self._mon.close()
            finally:
                self._mon = None
