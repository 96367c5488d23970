"""A host-wide vCPU budget shared by every ktstr process (pytest-xdist
workers included): a counting semaphore made of flock()ed slot files."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path


def default_budget() -> int:
    """vCPUs are host threads; emulation tolerates some oversubscription."""
    return int(os.environ.get("KTSTR_VCPU_BUDGET") or 4 * (os.cpu_count() or 1))


def slots_dir() -> Path:
    """Host-wide, not per-process: $XDG_RUNTIME_DIR or /tmp, never $TMPDIR
    (every ktstr process must see the same slots). It persists on purpose:
    a few empty lock files, reused by every later run."""
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return Path(base) / f"ktstr-vcpu-slots-{os.getuid()}"


@contextlib.contextmanager
def vcpu_slots(
    count: int, budget: int | None = None, directory: Path | None = None, poll: float = 0.2
) -> Iterator[int]:
    """Hold ``count`` of ``budget`` slots (a VM wider than the whole budget
    takes all of it) until the block ends. Yields the number held."""
    budget = budget or default_budget()
    want = max(1, min(count, budget))
    directory = directory or slots_dir()
    directory.mkdir(exist_ok=True)
    fds: list[int] = []
    try:
        while True:
            for i in random.sample(range(budget), budget):
                fd = os.open(directory / f"slot-{i}", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                fds.append(fd)
                if len(fds) == want:
                    break
            if len(fds) == want:
                break
            for fd in fds:  # all or nothing: never sit on a partial set
                os.close(fd)
            fds.clear()
            time.sleep(poll * (0.5 + random.random()))
        yield want
    finally:
        for fd in fds:
            os.close(fd)
