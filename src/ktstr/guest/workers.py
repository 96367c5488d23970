"""Forked worker processes and their telemetry.

Workers are processes (cgroups are per process). Each moves itself into its
cgroup, applies policy, nice and affinity, waits on a shared start barrier
(a pipe) so a step's workers start together, runs its work kind until
SIGUSR1, and writes a JSON report to a file the agent collects.

Time is measured from the barrier's release, which the agent stamps in
shared memory before it opens the barrier: a worker that gets a CPU late
still reports the whole planned run, and the wait counts as a gap.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ktstr.guest.reaping import KILL_WAIT, STOP_LIMIT, describe_task, wait_all
from ktstr.guest.telemetry import Telemetry, schedstat
from ktstr.guest.work_types import (
    NATIVE,
    Ctx,
    Shared,
    Stop,
    make_shared,
    make_step,
    stop_deferred,
)
from ktstr.protocol.messages import WakePlace, WorkerReport, to_json
from ktstr.spec.ledger import WorkerId
from ktstr.spec.plan import PlanCgroup
from ktstr.spec.work import PolicyKind, SchedPolicy, Work, describe_work

_libc = ctypes.CDLL(None, use_errno=True)
_POLICIES = {
    PolicyKind.NORMAL: os.SCHED_OTHER, PolicyKind.BATCH: os.SCHED_BATCH,
    PolicyKind.IDLE: os.SCHED_IDLE, PolicyKind.FIFO: os.SCHED_FIFO, PolicyKind.RR: os.SCHED_RR,
}  # fmt: skip


_stop_requested = [False]


def _on_stop(signum: int, frame: object) -> None:
    # Raising breaks out of blocking calls; the flag covers a raise that gets
    # swallowed (e.g. inside an at-fork hook, which ignores exceptions).
    _stop_requested[0] = True
    raise Stop


@dataclass
class WorkerSpec:
    """What one worker runs, where, and how it reports."""

    cgroup: str
    procs_dir: str
    index: int
    work: Work
    policy: SchedPolicy
    nice: int
    affinity: tuple[int, ...] | None
    allowed: tuple[int, ...]
    role: int = 0
    shared: Shared = field(default_factory=Shared)


def _setup(spec: WorkerSpec) -> None:
    with open(os.path.join(spec.procs_dir, "cgroup.procs"), "w") as f:
        f.write("0")
    if spec.affinity is not None:
        os.sched_setaffinity(0, spec.affinity)
    if spec.nice:
        os.setpriority(os.PRIO_PROCESS, 0, spec.nice)
    if spec.policy.kind is not PolicyKind.NORMAL:
        os.sched_setscheduler(0, _POLICIES[spec.policy.kind], os.sched_param(spec.policy.priority))


def _report(
    spec: WorkerSpec, tel: Telemetry, cpu0: float, ss0: tuple[int, int, int]
) -> WorkerReport:
    ss1 = schedstat()
    desc = describe_work(spec.work)
    return WorkerReport(
        cgroup=spec.cgroup, index=spec.index, pid=os.getpid(),
        work=",".join(f"{k}={v}" for k, v in desc.items() if k != "kind") or desc["kind"],
        iterations=tel.iterations, work_units=tel.units,
        wall_s=(time.monotonic_ns() - tel.t0) / 1e9, cpu_s=_cpu_s() - cpu0,
        max_gap_ms=tel.max_gap / 1e6, max_gap_at_ms=tel.max_gap_at / 1e6,
        max_gap_cpu=tel.max_gap_cpu, cpus=sorted(tel.cpus), migrations=tel.migrations,
        wake_lat_us=[x / 1e3 for x in tel.lat], wake_samples=tel.lat_seen,
        on_cpu_ms=(ss1[0] - ss0[0]) / 1e6, run_delay_ms=(ss1[1] - ss0[1]) / 1e6,
        timeslices=ss1[2] - ss0[2], native=NATIVE and spec.work.paired,
        mem_node=tel.mem_node,
        wake_places=[WakePlace(waker_cpu=w, cpu=c, count=n) for (w, c), n in tel.places.items()],
        wake_places_lost=tel.places_lost,
    )  # fmt: skip


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def error_report(cgroup: str, index: int, pid: int, error: str) -> WorkerReport:
    return WorkerReport(cgroup=cgroup, index=index, pid=pid, error=error[:4000])


def _close_others(spec: WorkerSpec, fds: tuple[int, ...]) -> None:
    """Close the pipe ends of other pairs (and the unused ends of this pair):
    a peer's exit must reach a blocked reader as EOF."""
    keep: set[int] = set()
    if spec.shared.pipes is not None:
        (ab_r, ab_w), (ba_r, ba_w) = spec.shared.pipes
        keep = {ba_r, ab_w} if spec.role == 0 else {ab_r, ba_w}
    for fd in fds:
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _child(spec: WorkerSpec, barrier: Barrier, report_path: str, fds: tuple[int, ...]) -> None:
    """Runs in the forked worker; never returns."""
    code = 0
    report = error_report(spec.cgroup, spec.index, os.getpid(), "stopped before it started")
    try:
        signal.signal(signal.SIGUSR1, _on_stop)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _close_others(spec, fds)
        _setup(spec)
        tel: Telemetry | None = None
        ss0, cpu0 = schedstat(), _cpu_s()
        try:
            # Blocked since the fork: a stop sent before the handler was set
            # (a child the scheduler had not run yet) is taken here.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
            t0 = barrier.wait()
            ss0, cpu0 = schedstat(), _cpu_s()
            tel = Telemetry(t0)
            step = make_step(Ctx(spec.work, tel, spec.index, spec.role, spec.shared, spec.allowed))
            while not _stop_requested[0]:
                step()
        except Stop:
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        # Stopped before it ran: a report of no work, for the starvation check.
        report = _report(spec, tel or Telemetry(), cpu0, ss0)
    except BaseException as exc:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        report = error_report(spec.cgroup, spec.index, os.getpid(), f"{type(exc).__name__}: {exc}")
        code = 1
    finally:
        try:
            with open(report_path, "w") as f:
                f.write(to_json(report))
        finally:
            os._exit(code)


class Barrier:
    """Start gate for one step's workers: a pipe they block on, and a
    shared page where the releaser stamps the start time first."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.stamp = mmap.mmap(-1, 8, mmap.MAP_SHARED)
        self.pending = 0

    def wait(self) -> int:
        """In a worker: block until released; the release time (ns)."""
        os.close(self.w)  # so the gate's only writer is the agent
        os.read(self.r, 1)
        os.close(self.r)
        (t0,) = struct.unpack("<q", self.stamp[:8])
        return int(t0) or time.monotonic_ns()

    def release(self) -> None:
        self.stamp[:8] = struct.pack("<q", time.monotonic_ns())
        os.write(self.w, b"g" * self.pending)
        os.close(self.w)
        os.close(self.r)
        self.stamp.close()


def _close_parent_copies(specs: list[WorkerSpec]) -> None:
    """The workers hold the pair pipes and pages now; the agent needs none."""
    seen: set[int] = set()
    for spec in specs:
        sh = spec.shared
        if id(sh) in seen:
            continue
        seen.add(id(sh))
        for fd in {fd for pair in sh.pipes or () for fd in pair}:  # a queue's ends appear twice
            os.close(fd)
        if sh.page is not None:
            sh.page.close()


@dataclass
class Worker:
    """A spawned worker: its process, and its report once stopped."""

    pid: int
    spec: WorkerSpec
    report_path: str
    report: WorkerReport | None = None

    @property
    def id(self) -> WorkerId:
        return (self.spec.cgroup, self.spec.index)


class WorkerPool:
    """Owns every worker process of a run. ``close()`` kills and reaps all."""

    def __init__(self, report_dir: str = "/tmp/ktstr-reports") -> None:
        self.report_dir = report_dir
        os.makedirs(report_dir, exist_ok=True)
        self.workers: dict[WorkerId, Worker] = {}
        self._barrier: Barrier | None = None
        #: Workers that did not stop in time, and what they were doing.
        self.stuck: list[tuple[WorkerId, str]] = []
        #: Called as (id, pid, description) when a worker does not stop.
        self.on_stuck: Callable[[WorkerId, int, str], None] | None = None
        #: Killed workers that never exited (left for the kernel to reap).
        self.unreaped: list[int] = []

    def spawn(self, specs: list[WorkerSpec]) -> list[Worker]:
        """Fork workers; they wait until ``release()``."""
        if self._barrier is None:
            self._barrier = Barrier()
        fds = tuple(fd for spec in specs for pair in spec.shared.pipes or () for fd in pair)
        out = []
        for spec in specs:
            path = os.path.join(
                self.report_dir, f"{spec.cgroup.replace('/', '.')}-{spec.index}.json"
            )
            # The child sets its SIGUSR1 handler when it first runs; until
            # then a stop would kill it (the default action), so it starts
            # with SIGUSR1 blocked and unblocks it once the handler is set.
            with stop_deferred():
                pid = os.fork()
                if pid == 0:  # pragma: no cover - child
                    _child(spec, self._barrier, path, fds)
            w = Worker(pid, spec, path)
            self.workers[w.id] = w
            out.append(w)
            self._barrier.pending += 1
        _close_parent_copies(specs)
        return out

    def release(self) -> None:
        """Start every worker spawned since the last release, together."""
        if self._barrier is not None:
            self._barrier.release()
            self._barrier = None

    def running(self, ids: list[WorkerId] | None = None) -> list[Worker]:
        chosen = self.workers.values() if ids is None else (self.workers[i] for i in ids)
        return [w for w in chosen if w.report is None]

    def stop(self, ids: list[WorkerId] | None = None, timeout: float = 10.0) -> list[WorkerReport]:
        """Stop these workers (or all), collect their reports.

        ``timeout`` bounds the time without progress, not the whole stop:
        while workers keep exiting the stop goes on (many workers writing
        their reports under one TCG thread take long, and none is stuck),
        up to STOP_LIMIT in all; those still alive ``timeout`` after the
        last one exited are stuck."""
        targets = self.running(ids)
        self.release()  # never leave a worker waiting on the barrier
        for w in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGUSR1)
        statuses = wait_all([w.pid for w in targets], timeout, STOP_LIMIT)
        stuck: dict[int, str] = {}
        for w in targets:
            if w.pid not in statuses:
                stuck[w.pid] = describe_task(w.pid)
                self.stuck.append((w.id, stuck[w.pid]))
                if self.on_stuck is not None:
                    self.on_stuck(w.id, w.pid, stuck[w.pid])
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)
        killed = wait_all(list(stuck), KILL_WAIT, KILL_WAIT)
        for w in targets:
            status = statuses.get(w.pid, -9 if w.pid in killed else None)
            self._collect(w, status, stuck.get(w.pid, ""))
        return [w.report for w in targets if w.report is not None]

    def _collect(self, w: Worker, status: int | None, stuck: str) -> None:
        """A stopped worker's report, or why there is none. A task the
        scheduler never runs cannot even die when killed (``status`` None):
        it is left behind and reported, and the agent goes on."""
        if status is None:
            why = f"did not stop, even when killed: {stuck}"
            w.report = error_report(w.spec.cgroup, w.spec.index, w.pid, why)
            self.unreaped.append(w.pid)
            return
        try:
            with open(w.report_path) as f:
                data = json.load(f)
            data["wake_places"] = [WakePlace(**p) for p in data.get("wake_places", ())]
            w.report = WorkerReport(**data)
            os.unlink(w.report_path)
        except (OSError, ValueError, TypeError):
            why = f"no report (exit status {status})"
            if stuck:
                why += f"; did not stop in time: {stuck}"
            w.report = error_report(w.spec.cgroup, w.spec.index, w.pid, why)

    def set_affinity(
        self,
        ids: list[WorkerId],
        affinities: tuple[tuple[int, ...] | None, ...],
        all_cpus: tuple[int, ...],
    ) -> None:
        for i, w in enumerate(self.running(ids)):
            cpus = affinities[i % len(affinities)] if affinities else None
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(w.pid, cpus if cpus is not None else all_cpus)

    def close(self) -> None:
        self.release()
        left = self.running()
        for w in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGKILL)
        exited = wait_all([w.pid for w in left], KILL_WAIT, KILL_WAIT)
        for w in left:
            if w.pid not in exited:
                self.unreaped.append(w.pid)
            w.report = error_report(w.spec.cgroup, w.spec.index, w.pid, "killed at teardown")


def specs_for(
    pc: PlanCgroup,
    procs_dir: str,
    *,
    count: int,
    first_index: int,
    all_cpus: tuple[int, ...],
    scratch_dir: str = "/tmp",
) -> list[WorkerSpec]:
    """Specs for ``count`` new workers of ``pc``, with their pair/cgroup resources."""
    specs = []
    work = pc.work
    allowed = pc.cpus if pc.cpus is not None else all_cpus
    # one resource per cgroup, or (paired kinds) one per pair, made below
    shared = Shared() if work.paired else make_shared(work, scratch_dir, pc.path.replace("/", "."))
    for k in range(count):
        i = first_index + k
        if work.paired and k % 2 == 0:
            shared = make_shared(work, scratch_dir, f"{pc.path}-{i}")
        aff = pc.affinities[i % len(pc.affinities)] if pc.affinities else None
        specs.append(
            WorkerSpec(
                cgroup=pc.path,
                procs_dir=procs_dir,
                index=i,
                work=work,
                policy=pc.policy,
                nice=pc.nice,
                affinity=aff,
                allowed=allowed,
                role=k % 2 if work.paired else 0,
                shared=shared,
            )
        )
    return specs
