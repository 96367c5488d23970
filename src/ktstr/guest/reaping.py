"""Waiting for workers to exit, and describing one that will not."""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

#: After SIGKILL, how long a worker may take to die before it is left behind.
KILL_WAIT = 5.0


#: The longest a stop may take while workers keep exiting. A stop can come
#: mid-run (a scenario's stop op), where the host allows 30 s of slack past
#: the plan (runner.boot.WORKLOAD_GRACE): this, plus KILL_WAIT, stays inside.
STOP_LIMIT = 20.0


def wait_all(pids: list[int], idle: float, limit: float) -> dict[int, int]:
    """Exit statuses of the children ``pids`` that exit before none has for
    ``idle`` seconds, or before ``limit`` in all.

    It sleeps on a pidfd per child until one exits, rather than polling
    every child every few ms: a stop of hundreds of workers under one TCG
    thread must not spend that thread on waitpid(). A child that gets no
    pidfd (the fd limit) is polled."""
    start = last = time.monotonic()
    done: dict[int, int] = {}
    poller, fds, polled = select.poll(), {}, []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            polled.append(pid)
            continue
        fds[fd] = pid
        poller.register(fd, select.POLLIN)
    pending = set(pids)
    try:
        while pending:
            left = min(last + idle, start + limit) - time.monotonic()
            if left <= 0:
                break
            wait = min(left, 0.005) if polled else left
            ready = [fds[fd] for fd, _ in poller.poll(wait * 1000)]
            for pid in [*ready, *polled]:
                if pid in pending and _reaped(pid, done):
                    pending.discard(pid)
                    last = time.monotonic()
            for fd in [fd for fd, pid in fds.items() if pid in done]:
                poller.unregister(fd)
                del fds[fd]
                os.close(fd)
    finally:
        for fd in fds:
            os.close(fd)
    return done


def _reaped(pid: int, done: dict[int, int]) -> bool:
    """Reap ``pid`` if it has exited, recording its status."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # reaped elsewhere
        got, status = pid, -1
    if got:
        done[pid] = status
    return bool(got)


def describe_task(pid: int) -> str:
    """State, wait channel and kernel stack of a task that will not stop."""
    parts = []
    for name in ("status", "wchan", "stack"):
        try:
            text = Path(f"/proc/{pid}/{name}").read_text(errors="replace")
        except OSError:
            continue
        if name == "status":
            text = next((ln for ln in text.splitlines() if ln.startswith("State:")), "")
        parts.append(f"{name}: " + " | ".join(text.strip().splitlines()[:12]))
    return f"pid {pid} " + "; ".join(parts)
