"""Execute a resolved Plan in the guest: scheduler, cgroups, workers, holds.

Every resource has one owner in an ExitStack (scheduler, cgroup tree,
worker pool), so an exception anywhere still stops workers, removes cgroups
and stops the scheduler. Which workers an op starts, stops or moves comes
from ``spec/ledger.py``, the same bookkeeping the host uses to know which
reports a run owes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import time
from collections.abc import Callable
from typing import Any

from ktstr.errors import HostRefused
from ktstr.guest.cgroups import CgroupTree
from ktstr.guest.payloads import PayloadRun
from ktstr.guest.sched_ext import QUIRKS, Scheduler, pin_kthread, scx_ops, scx_state
from ktstr.guest.workers import WorkerPool, specs_for
from ktstr.protocol.messages import (
    Lifecycle,
    MessageKind,
    RunSummary,
    ScenarioEnd,
    ScenarioStart,
    SchedExit,
    Stimulus,
    TestResult,
    WorkerReport,
    WorkerReports,
)
from ktstr.spec.ledger import Effect, Ledger, PayloadId
from ktstr.spec.plan import Plan, PlanOp, PlanStep
from ktstr.spec.scenario import OpKind
from ktstr.spec.serde import from_data, to_data

Send = Callable[[bytes], None]

#: How long the guest waits for the host to answer a snapshot or a write.
HOST_REPLY_TIMEOUT = 60.0
#: What each refusal of a BPF write means (the host's detail is in result.json).
WRITE_REFUSED = {
    errno.EPERM: "read-only (.rodata): the verifier folded its value into the program",
    errno.ENOENT: "the scheduler has no such global in .bss, .data or its arena",
    errno.EINVAL: "the value does not fit the variable (integers, bools and enums only)",
    errno.ENODEV: "the host cannot read this guest's memory (no shared RAM or no vmlinux)",
    errno.EBUSY: "too many requests too fast",
    errno.ENOSPC: "too many requests in this run",
}


def _programs_now() -> tuple[set[int] | None, int]:
    """The BPF programs loaded before the scheduler (None: cannot tell)."""
    from ktstr.guest.bpfprogs import boottime_ns, prog_ids

    try:
        return prog_ids(), boottime_ns()
    except OSError:
        return None, 0


def _programs_since(before: set[int], started_ns: int) -> list[dict[str, Any]]:
    from ktstr.guest.bpfprogs import new_programs

    try:
        return new_programs(before, started_ns)[:256]
    except OSError:
        return []


def refused(what: str, status: int) -> HostRefused:
    why = WRITE_REFUSED.get(status, os.strerror(status))
    code = errno.errorcode.get(status, status)
    return HostRefused(f"{what}: the host refused ({code}): {why}", status)


def bpf_write(port: Any, var: str, value: int | bool) -> None:
    """Have the host write the scheduler's BPF global ``var``; HostRefused if not."""
    status = port.request_write(var, int(value), HOST_REPLY_TIMEOUT)
    if status:
        raise refused(f"bpf_write {var}={int(value)}", status)


def snapshot(port: Any, name: str) -> int:
    """Have the host freeze the guest and keep a snapshot ``name``; its status."""
    from ktstr.protocol.messages import CaptureKind

    rid = port.next_request_id()
    return int(port.request_snapshot(rid, CaptureKind.MEMORY, HOST_REPLY_TIMEOUT, name=name))


class Executor:
    def __init__(self, port: Any, all_cpus: tuple[int, ...]) -> None:
        self.plan = Plan(scenario="", topology="", duration_s=0.0, steps=())
        self.port = port
        self.all_cpus = all_cpus
        self.ledger = Ledger(all_cpus)
        self.reports: list[WorkerReport] = []
        self.tree = CgroupTree()
        self.pool = WorkerPool()
        self.sched: Scheduler | None = None
        self.t0 = 0.0
        self.payloads: dict[PayloadId, PayloadRun] = {}

    def send(self, msg: Any) -> None:
        self.port.send(self.port.enc.message(msg))

    # -- scheduler --------------------------------------------------------------
    def start_scheduler(self, binary: str, args: list[str], timeout: float) -> str | None:
        def output(text: str) -> None:
            self.port.send(self.port.enc.text(MessageKind.SCHED_LOG, text))

        def death(kind: str, reason: str, dump: str, code: int | None) -> None:
            self.send(SchedExit(exit_kind=kind, reason=reason, dump=dump[-60000:], returncode=code))

        quirk = QUIRKS.get(os.path.basename(binary))
        if quirk:
            pin_kthread(*quirk)  # exists only after a first enable
        progs_before, started_ns = _programs_now()
        self.sched = Scheduler(binary, args, on_output=output, on_death=death)
        self.sched.start()
        why = self.sched.wait_attached(timeout)
        if why is not None and quirk and pin_kthread(*quirk):
            self.send(
                Lifecycle(
                    phase="scheduler_retry",
                    detail={
                        "reason": why,
                        "kernel_log": self.sched.kernel_log(),
                        "quirk": f"pinned {quirk[0]} to CPU {quirk[1]}",
                    },
                )
            )
            self.sched.stop()
            self.sched = Scheduler(binary, args, on_output=output, on_death=death)
            self.sched.start()
            why = self.sched.wait_attached(timeout)
        if why is None:
            detail: dict[str, Any] = {"ops": scx_ops(), "state": scx_state()}
            if progs_before is not None:
                detail["programs"] = _programs_since(progs_before, started_ns)
            self.send(Lifecycle(phase="scheduler_attached", detail=detail))
        return why

    def scheduler_dead(self) -> bool:
        return self.sched is not None and self.sched.dead.is_set()

    # -- ops --------------------------------------------------------------------
    def stimulus(self, op: str, **detail: Any) -> None:
        self.send(Stimulus(t_ms=(time.monotonic() - self.t0) * 1000, op=op, detail=detail))

    def _spawn(self, effect: Effect) -> dict[str, int]:
        """Fork the workers an op starts; their pids, to name them in findings."""
        pids = {}
        for sp in effect.spawn:
            procs = str(self.tree.procs_dir(sp.spec.path))
            specs = specs_for(
                sp.spec, procs, count=sp.count, first_index=sp.first, all_cpus=self.all_cpus
            )
            for w in self.pool.spawn(specs):
                pids[f"{w.spec.cgroup}[{w.spec.index}]"] = w.pid
        return pids

    def _start_payloads(self, effect: Effect) -> dict[str, int]:
        pids = {}
        for life in effect.start_payloads:
            run = PayloadRun(
                life.payload,
                life.id[0],
                life.id[1],
                str(self.tree.procs_dir(life.id[0])),
                "/tmp/ktstr-payloads",
            )
            self.payloads[life.id] = run
            run.start()
            if run.proc is not None:
                pids[f"payload {life.payload.name}"] = run.proc.pid
        return pids

    def _stop_payloads(self, ids: tuple[PayloadId, ...] | None = None) -> None:
        """Stop these payloads (or every one still owed) and send their results."""
        for pid in list(self.payloads) if ids is None else ids:
            run = self.payloads.pop(pid, None)
            if run is not None:
                run.stop()
                self.send(run.result())

    def _kill_payloads(self) -> None:
        for run in self.payloads.values():
            run.kill()

    def _stuck(self, wid: tuple[str, int], pid: int, what: str) -> None:
        """A worker did not stop: say so now, while the agent still can."""
        worker = f"{wid[0]}[{wid[1]}]"
        self.send(
            Lifecycle(phase="worker_stuck", detail={"worker": worker, "pid": pid, "task": what})
        )

    def _knobs(self, path: str, weight: int | None, cpu_max: float | None) -> None:
        """cpu.weight and cpu.max where they differ from the kernel's defaults
        (None: leave it; a mid-run op writes either, default or not)."""
        if weight is not None:
            self.tree.set_weight(path, weight)
        if cpu_max is not None:
            self.tree.set_cpu_max(path, round(cpu_max * 1000))

    def apply(self, op: PlanOp) -> None:
        """Carry out one op; the ledger (shared with the host) says which
        workers it starts, stops or moves."""
        k = op.kind
        effect = self.ledger.apply(op, time.monotonic() - self.t0)
        if k is OpKind.ADD_CGROUP:
            paths = [pc.path for pc in op.cgroups]
            for pc in op.cgroups:
                kids = any(p.startswith(pc.path + "/") for p in paths)
                self.tree.create(pc.path, pc.cpus, has_children=kids)
                self._knobs(pc.path, pc.weight if pc.weight != 100 else None, pc.cpu_max or None)
            pids = self._spawn(effect)
            pids.update(self._start_payloads(effect))
            self.stimulus(k.value, cgroups=paths, pids=pids)
        elif k in (OpKind.REMOVE_CGROUP, OpKind.STOP):
            self.reports += self.pool.stop(list(effect.stop))
            self._stop_payloads(effect.stop_payloads)
            if k is OpKind.REMOVE_CGROUP:
                self.tree.remove(op.path)
            self.stimulus(k.value, cgroup=op.path, stopped=len(effect.stop))
        elif k in (OpKind.SET_CPUSET, OpKind.CLEAR_CPUSET):
            self.tree.set_cpus(op.path, op.cpus)
            self.stimulus(k.value, cgroup=op.path, cpus=list(op.cpus or ()))
        elif k is OpKind.SWAP_CPUSETS:
            self.tree.set_cpus(op.path, self.ledger.live[op.path].cpus)
            self.tree.set_cpus(op.other, self.ledger.live[op.other].cpus)
            self.stimulus(k.value, a=op.path, b=op.other)
        elif k is OpKind.SPAWN:
            self.stimulus(k.value, cgroup=op.path, pids=self._spawn(effect))
        elif k is OpKind.SET_AFFINITY:
            ids = [w.id for w in self.ledger.running(op.path)]
            self.pool.set_affinity(ids, op.affinities, self.all_cpus)
            self.stimulus(k.value, cgroup=op.path)
        elif k is OpKind.MOVE_ALL:
            moved = self.tree.move_all(op.path, op.other)
            self.stimulus(k.value, src=op.path, dst=op.other, moved=moved)
        elif k is OpKind.MOVE_WORKER:
            w = self.pool.workers.get((op.path, op.count))
            moved = 0 if w is None else self.tree.move_pid(w.pid, op.other)
            self.stimulus(k.value, src=op.path, index=op.count, dst=op.other, moved=moved)
        elif k is OpKind.SET_WEIGHT:
            self._knobs(op.path, op.value, None)
            self.stimulus(k.value, cgroup=op.path, weight=op.value)
        elif k is OpKind.SET_CPU_MAX:
            self._knobs(op.path, None, op.value / 1000)
            self.stimulus(k.value, cgroup=op.path, cpu_max=op.value / 1000)
        elif k is OpKind.SNAPSHOT:
            self.stimulus(k.value, name=op.path, status=snapshot(self.port, op.path))
        elif k is OpKind.BPF_WRITE:
            status = self.port.request_write(op.path, op.value, HOST_REPLY_TIMEOUT)
            self.stimulus(k.value, var=op.path, value=op.value, status=status)
            if status:
                raise refused(f"bpf_write {op.path}={op.value}", status)

    def _apply_all(self, ops: tuple[PlanOp, ...]) -> None:
        for op in ops:
            self.apply(op)
        self.pool.release()  # workers an op spawned start now, together

    # -- the run ------------------------------------------------------------------
    def hold(self, step: PlanStep) -> None:
        """Hold for the step; a loop hold re-applies its ops exactly
        ``loop_count`` times (late ones still run: the host counts them)."""
        start = time.monotonic()
        end, applied = start + step.hold_s, 0
        while not self.scheduler_dead():
            now = time.monotonic()
            if step.loop_count:
                due = min(step.loop_count, int((now - start) / step.loop_interval_s))
                while applied < due:
                    self._apply_all(step.ops)
                    applied += 1
            if now >= end:
                break
            time.sleep(min(0.05, max(0.0, end - now)))
        while applied < step.loop_count and not self.scheduler_dead():
            self._apply_all(step.ops)
            applied += 1

    def run(self, plan: Plan) -> RunSummary:
        """Run one plan: fresh cgroups, workers and ledger; the scheduler stays."""
        self.plan, self.reports = plan, []
        self.ledger = Ledger(self.all_cpus)
        self.tree, self.pool, self.payloads = CgroupTree(), WorkerPool(), {}
        self.pool.on_stuck = self._stuck
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.tree)
            stack.callback(self.pool.close)
            stack.callback(self._kill_payloads)
            self.t0 = time.monotonic()
            self.send(ScenarioStart(name=plan.scenario, plan=to_data(plan)))
            for step in plan.steps:
                self._apply_all(step.ops)
                self.hold(step)
                if self.scheduler_dead():
                    break
            elapsed = time.monotonic() - self.t0
            self.send(ScenarioEnd(name=plan.scenario))
            self.reports += self.pool.stop()
            self._stop_payloads()
            self._send_reports()
            self.pool.close()
            self.tree.close()
        return RunSummary(
            runs=1,
            elapsed_s=elapsed,
            leftover_cgroups=self.tree.leftovers(),
            leftover_workers=len(self.pool.running()) + len(self.pool.unreaped),
            scheduler_died=self.scheduler_dead(),
        )

    def _send_reports(self) -> None:
        """One frame per cgroup, split so no frame nears the size bound."""
        by_cg: dict[str, list[WorkerReport]] = {}
        for r in self.reports:
            by_cg.setdefault(r.cgroup, []).append(r)
        for cg, reports in sorted(by_cg.items()):
            batch: list[WorkerReport] = []
            size = 0
            for r in reports:
                n = 200 + 12 * len(r.wake_lat_us) + 6 * len(r.cpus)
                if batch and size + n > REPORT_FRAME_BYTES:
                    self.send(WorkerReports(cgroup=cg, reports=batch))
                    batch, size = [], 0
                batch.append(r)
                size += n
            self.send(WorkerReports(cgroup=cg, reports=batch))


#: Target size of one WorkerReports frame (the decoder's bound is 1 MiB).
REPORT_FRAME_BYTES = 256 << 10


def session(
    port: Any, job: dict[str, Any], name: str, body: Callable[[Executor], RunSummary]
) -> int:
    """Start the job's scheduler (if any), run ``body``, stop the scheduler,
    send the TestResult. Returns the agent's exit code."""
    ex = Executor(port, tuple(sorted(os.sched_getaffinity(0))))
    sched = job.get("scheduler")
    try:
        if sched:
            why = ex.start_scheduler(
                sched["binary"], list(sched.get("args", [])), float(job.get("attach_timeout", 30.0))
            )
            if why is not None:
                assert ex.sched is not None
                klog = "\n".join(ex.sched.kernel_log())
                ex.send(
                    SchedExit(
                        exit_kind="not_attached",
                        reason=why,
                        dump=f"{ex.sched.output()}\n{klog}".strip(),
                    )
                )
                return 2
        summary = body(ex)
    finally:
        if ex.sched is not None and not ex.sched.dead.is_set():
            ex.sched.stop()
            ex.send(Lifecycle(phase="scheduler_stopped", detail={"state": scx_state()}))
        elif ex.sched is not None:
            ex.sched.stop()
    ok = not summary.leftover_cgroups and not summary.leftover_workers
    ex.send(TestResult(name=name, passed=ok, data=dataclasses.asdict(summary)))
    return 0


def run_scenario(port: Any, job: dict[str, Any]) -> int:
    """Agent entry for ``mode: scenario``."""
    plan = from_data(Plan, job["plan"])
    return session(port, job, plan.scenario, lambda ex: ex.run(plan))
