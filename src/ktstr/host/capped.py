"""Files that stop growing: what a guest writes to the host is bounded.

``CappedFile`` keeps the first ``cap`` bytes of a stream (the start of a
console log or frame transcript is where boot and setup went wrong), then
appends one line saying how much was dropped. Private to the user (0600).
"""

from __future__ import annotations

import os
from pathlib import Path

#: Default caps (bytes): console.log and frames.bin, and each text stream.
LOG_CAP = 64 << 20
TEXT_CAP = 16 << 20


class CappedFile:
    """Append-only, at most ``cap`` bytes of data; idempotent ``close()``."""

    def __init__(self, path: Path, cap: int, *, text_note: bool = True) -> None:
        self.path = path
        self.cap = cap
        self.written = 0
        self.dropped = 0
        self._text_note = text_note
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._f = os.fdopen(fd, "ab")

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def write(self, data: bytes) -> None:
        if self._f.closed:
            return
        room = self.cap - self.written
        if room > 0:
            self._f.write(data[:room])
            self.written += min(room, len(data))
        self.dropped += max(0, len(data) - max(room, 0))

    def flush(self) -> None:
        if not self._f.closed:
            self._f.flush()

    def note(self) -> str:
        """One line for the run's notes, empty if nothing was dropped."""
        if not self.dropped:
            return ""
        return f"{self.path.name} capped at {self.cap >> 20} MiB ({self.dropped} bytes dropped)"

    def close(self) -> None:
        if self._f.closed:
            return
        if self.dropped and self._text_note:
            self._f.write(f"\n[ktstr: {self.note()}]\n".encode())
        self._f.close()
