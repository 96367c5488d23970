"""Many VM runs, one after another or ``-j N`` at once, with progress.

Parallel runs are forked processes, each holding its vCPUs from the shared
budget (``host/slots.py``) while its VM runs, so ``ktstr run -j`` and the
pytest plugin never oversubscribe the host together. Ctrl-C reaches every
child (one process group) and each cleans up its own VM; SIGTERM to the
parent is passed on to the children. Progress is plain lines: what starts,
what ended, how many are left and an estimate of the time that takes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TextIO, TypeVar

from ktstr.errors import VmError
from ktstr.host.slots import vcpu_slots

J = TypeVar("J")
R = TypeVar("R")

#: How long children get to clean up after an interrupt before they are killed.
CLEANUP_S = 60.0


@dataclass
class Progress(Generic[J]):
    """Counts and measured durations for the ETA."""

    estimate: Callable[[J], float]
    done: int = 0
    spent: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def eta(self, pending: Sequence[J], running: Sequence[tuple[J, float]], width: int) -> float:
        """Seconds until all is done: the rest at the pace measured so far
        (each job's own estimate until a run finished), ``width`` at a time."""
        now = time.monotonic()
        scale = 1.0
        if self.spent:
            est = [self.estimate(j) for j in pending] or [1.0]
            scale = (sum(self.spent) / len(self.spent)) / max(1e-3, sum(est) / len(est))
        left = sum(self.estimate(j) * scale for j in pending)
        left += sum(max(0.0, self.estimate(j) * scale - (now - t)) for j, t in running)
        return left / max(1, min(width, len(pending) + len(running)))


@dataclass(frozen=True)
class Hooks(Generic[J, R]):
    """What the runner needs to know of a job, and whom it tells."""

    cpus: Callable[[J], int]  # vCPUs it holds from the budget
    describe: Callable[[J], str]
    estimate: Callable[[J], float]  # seconds, before anything was measured
    on_start: Callable[[str], None]  # a progress line
    on_done: Callable[[J, R], None]
    #: Where a live status line per running VM goes (a terminal), if anywhere.
    live: TextIO | None = None


class Board:
    """One status line per running job at the foot of a terminal, redrawn in
    place; other output goes above it (``clear`` first, then ``draw``)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.shown = 0

    def clear(self) -> None:
        if self.shown:
            self.out.write(f"\x1b[{self.shown}F\x1b[J")  # up to the board's top, erase below
            self.out.flush()
            self.shown = 0

    def draw(self, lines: list[str]) -> None:
        self.clear()
        width = shutil.get_terminal_size((100, 24)).columns - 1
        for line in lines:
            self.out.write(line[:width] + "\n")
        self.out.flush()
        self.shown = len(lines)


def terminal(out: TextIO) -> TextIO | None:
    """``out`` if it is a terminal that takes cursor movement, else None."""
    isatty = getattr(out, "isatty", None)
    ok = callable(isatty) and isatty() and os.environ.get("TERM", "dumb") != "dumb"
    return out if ok else None


def status(label: str, elapsed: float, expected: float) -> str:
    """A running job's line: what, for how long, of about how long."""
    return f"  > {label}  {elapsed:.0f}s of ~{expected:.0f}s"


def fmt_eta(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    return f"~{m}m{s:02d}s left" if m else f"~{s}s left"


@dataclass(frozen=True)
class Lost:
    """A job the host could not carry through (its VM never booted, or went
    silent): not a verdict. Returned by a job instead of raising, so the
    reason crosses the ``-j`` process boundary and the other jobs go on."""

    what: str
    why: str

    @classmethod
    def of(cls, what: str, exc: VmError) -> Lost:
        where = f" (evidence: {exc.artifacts})" if exc.artifacts else ""
        return cls(what, exc.message.splitlines()[0][:300] + where)

    def line(self) -> str:
        return f"{self.what}: {self.why}"


def run_jobs(
    jobs: Sequence[J], run_one: Callable[[J], R], hooks: Hooks[J, R], parallel: int = 1
) -> tuple[list[R], list[str]]:
    """Run every job, ``parallel`` at a time; results in job order, and the
    jobs whose process died without a result."""
    progress: Progress[J] = Progress(hooks.estimate)
    if parallel <= 1:
        out = []
        for i, job in enumerate(jobs):
            eta = progress.eta(list(jobs[i:]), [], 1)
            line = f"[{i + 1}/{len(jobs)}] {hooks.describe(job)}"
            hooks.on_start(line + (f" ({fmt_eta(eta)})" if i else ""))
            t = time.monotonic()
            rec = run_one(job)
            progress.spent.append(time.monotonic() - t)
            hooks.on_done(job, rec)
            out.append(rec)
        return out, []
    return _parallel(jobs, run_one, parallel, hooks, progress)


def _child(run_one: Callable[[Any], Any], job: Any, budget_cpus: int, conn: Any) -> None:
    """In the forked child: hold the job's vCPUs, run it, send the record.
    An interrupt ends it quietly once its VM is cleaned up (exit 130)."""
    try:
        with vcpu_slots(budget_cpus):
            rec = run_one(job)
        conn.send(rec)
    except BaseException:
        conn.close()
        os._exit(130)
    conn.close()


def _parallel(
    jobs: Sequence[J],
    run_one: Callable[[J], R],
    width: int,
    hooks: Hooks[J, R],
    progress: Progress[J],
) -> tuple[list[R], list[str]]:
    ctx = multiprocessing.get_context("fork")
    pending = list(enumerate(jobs))
    running: dict[Any, tuple[int, J, Any, float]] = {}  # conn -> (index, job, process, t0)
    results: dict[int, R] = {}
    lost: list[str] = []
    board = Board(hooks.live) if hooks.live is not None else None
    hooks = _above(hooks, board)
    try:
        while pending or running:
            if board is not None:
                now = time.monotonic()
                board.draw([status(hooks.describe(j), now - t, hooks.estimate(j))
                            for _, j, _, t in running.values()])  # fmt: skip
            while pending and len(running) < width:
                i, job = pending.pop(0)
                rd, wr = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_child, args=(run_one, job, hooks.cpus(job), wr))
                proc.start()
                wr.close()
                running[rd] = (i, job, proc, time.monotonic())
                hooks.on_start(f"[{i + 1}/{len(jobs)}] started {hooks.describe(job)} "
                               f"({len(running)} running)")  # fmt: skip
            for ready in multiprocessing.connection.wait(list(running), timeout=1.0):
                conn: Any = ready
                i, job, proc, t0 = running.pop(conn)
                try:
                    rec: R | None = conn.recv()
                except (EOFError, OSError):
                    rec = None
                conn.close()
                proc.join()
                progress.done += 1
                progress.spent.append(time.monotonic() - t0)
                if rec is None:
                    lost.append(
                        f"{hooks.describe(job)}: its process died (exit {proc.exitcode}); "
                        "run it alone (without -j) to see why"
                    )
                else:
                    results[i] = rec
                    hooks.on_done(job, rec)
                left = [j for _, j in pending]
                eta = progress.eta(left, [(j, t) for _, j, _, t in running.values()], width)
                hooks.on_start(f"[{progress.done}/{len(jobs)} done] " + (fmt_eta(eta) if left or
                               running else "all done"))  # fmt: skip
    except BaseException:
        _stop_children([p for _, _, p, _ in running.values()])
        raise
    finally:
        if board is not None:
            board.clear()
    return [results[i] for i in sorted(results)], lost


def _above(hooks: Hooks[J, R], board: Board | None) -> Hooks[J, R]:
    """``hooks`` whose output clears the board first (it is redrawn after)."""
    if board is None:
        return hooks

    def start(line: str) -> None:
        board.clear()
        hooks.on_start(line)

    def done(job: J, rec: R) -> None:
        board.clear()
        hooks.on_done(job, rec)

    return dataclasses.replace(hooks, on_start=start, on_done=done)


def _stop_children(procs: list[Any]) -> None:
    """On Ctrl-C the children got SIGINT too; on SIGTERM pass it on. Each
    cleans up its VM; after ``CLEANUP_S`` the rest are killed."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError, OSError):
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + CLEANUP_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
