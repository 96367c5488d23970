"""`ktstr shell` on a real pseudo-terminal: type into the guest's shell."""

from __future__ import annotations

import os
import pty
import select
import sys
import time


def read_until(fd: int, needle: bytes, timeout: float, buf: bytearray) -> bool:
    deadline = time.monotonic() + timeout
    while needle not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the pty
                return needle in buf
            if not chunk:
                return needle in buf
            buf += chunk
    return True


def test_interactive_shell(kernel, isolated):
    pid, fd = pty.fork()
    if pid == 0:  # child: ktstr on the pty
        os.environ["TMPDIR"] = str(isolated / "tmp")
        os.execv(sys.executable, [sys.executable, "-m", "ktstr", "shell"])
    buf = bytearray()
    try:
        assert read_until(fd, b"# ", 120, buf), buf.decode(errors="replace")[-2000:]
        os.write(fd, b"echo answer=$((6*7)) cpus=$(nproc)\r")
        assert read_until(fd, b"answer=42 cpus=2", 60, buf), buf.decode(errors="replace")[-2000:]
        os.write(fd, b"exit 3\r")
        read_until(fd, b"\x00never", 60, buf)  # drain until the pty closes
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 3, buf.decode(errors="replace")[-2000:]
