"""Drain the guest serial console into a capped file; keep a tail and spot panics."""

from __future__ import annotations

import collections
import re
import threading
import time
from pathlib import Path
from typing import IO

from ktstr.host.capped import LOG_CAP, CappedFile

#: Console lines that mean the guest kernel is going down.
PANIC_RE = re.compile(
    rb"Kernel panic - not syncing|Oops: |BUG: kernel NULL pointer|general protection fault"
)


class Console:
    """Owns a reader thread over QEMU's stdout (the guest's ttyS0)."""

    def __init__(
        self, stream: IO[bytes], path: Path, *, tail_lines: int = 200, cap: int = LOG_CAP
    ) -> None:
        self._stream = stream
        self.path = path
        self.log = CappedFile(path, cap)
        self._tail: collections.deque[bytes] = collections.deque(maxlen=tail_lines)
        self._partial = b""
        self._lock = threading.Lock()
        self.panic = threading.Event()
        self.panic_line = ""
        self.error: BaseException | None = None
        #: time.monotonic() of the guest's first console output: an upper
        #: bound on when its kernel started, whatever the guest's clock says.
        self.first_output_at: float | None = None
        self._thread = threading.Thread(target=self._run, name="ktstr-console", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            while chunk := self._stream.read1(65536):  # type: ignore[attr-defined]
                if self.first_output_at is None:
                    self.first_output_at = time.monotonic()
                self.log.write(chunk)
                self.log.flush()
                self._absorb(chunk)
        except (OSError, ValueError) as exc:  # ValueError: stream closed under us
            self.error = exc
        finally:
            self.log.close()

    def _absorb(self, chunk: bytes) -> None:
        with self._lock:
            lines = (self._partial + chunk).split(b"\n")
            self._partial = lines.pop()[-4096:]
            for raw in lines:
                line = raw.rstrip(b"\r")
                self._tail.append(line)
                if not self.panic.is_set() and PANIC_RE.search(line):
                    self.panic_line = line.decode(errors="replace").strip()
                    self.panic.set()

    def tail(self, lines: int = 40) -> str:
        with self._lock:
            rows = list(self._tail)[-lines:]
            if self._partial:
                rows.append(self._partial)
        return "\n".join(r.decode(errors="replace") for r in rows)

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)
