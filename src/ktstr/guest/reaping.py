"""Waiting for workers to exit, and describing one that will not."""

from __future__ import annotations

import os
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
    ``idle`` seconds, or before ``limit`` in all."""
    start = last = time.monotonic()
    pending, done = set(pids), {}
    while pending:
        for pid in list(pending):
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                got, status = pid, -1
            if got:
                done[pid] = status
                pending.discard(pid)
                last = time.monotonic()
        now = time.monotonic()
        if not pending or now - last > idle or now - start > limit:
            break
        time.sleep(0.005)
    return done


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
