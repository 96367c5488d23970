"""Execute a resolved Plan in the guest: scheduler, cgroups, workers, holds.

Every resource has one owner in an ExitStack (scheduler, cgroup tree,
worker pool), so an exception anywhere still stops workers, removes cgroups
and stops the scheduler.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ktstr.guest.cgroups import CgroupTree
from ktstr.guest.sched_ext import QUIRKS, Scheduler, pin_kthread, scx_ops, scx_state
from ktstr.guest.workers import WorkerPool, specs_for
from ktstr.protocol.messages import (
    Lifecycle,
    MessageKind,
    ScenarioEnd,
    ScenarioStart,
    SchedExit,
    Stimulus,
    TestResult,
    WorkerReports,
)
from ktstr.spec.scenario import OpKind, Plan, PlanCgroup, PlanOp
from ktstr.spec.serde import from_data

Send = Callable[[bytes], None]


@dataclass
class RunState:
    """Live view of the scenario: cgroups, cpusets ever assigned, reports."""

    cgroups: dict[str, PlanCgroup] = field(default_factory=dict)
    spawned: dict[str, int] = field(default_factory=dict)
    #: Union of the cpusets a cgroup was ever given; None = unrestricted.
    cpus_union: dict[str, set[int] | None] = field(default_factory=dict)
    reports: list[dict[str, Any]] = field(default_factory=list)


class Executor:
    def __init__(self, port: Any, all_cpus: tuple[int, ...]) -> None:
        self.plan = Plan(scenario="", topology="", duration_s=0.0, steps=())
        self.port = port
        self.all_cpus = all_cpus
        self.state = RunState()
        self.tree = CgroupTree()
        self.pool = WorkerPool()
        self.sched: Scheduler | None = None
        self.t0 = 0.0

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
            self.send(
                Lifecycle(
                    phase="scheduler_attached", detail={"ops": scx_ops(), "state": scx_state()}
                )
            )
        return why

    def scheduler_dead(self) -> bool:
        return self.sched is not None and self.sched.dead.is_set()

    # -- ops --------------------------------------------------------------------
    def stimulus(self, op: str, **detail: Any) -> None:
        self.send(Stimulus(t_ms=(time.monotonic() - self.t0) * 1000, op=op, detail=detail))

    def _set_cpus(self, path: str, cpus: tuple[int, ...] | None) -> None:
        self.tree.set_cpus(path, cpus)
        union = self.state.cpus_union.get(path, set())
        self.state.cpus_union[path] = None if cpus is None or union is None else union | set(cpus)

    def _spawn(self, pc: PlanCgroup, count: int) -> None:
        first = self.state.spawned.get(pc.path, 0)
        procs = str(self.tree.procs_dir(pc.path))
        self.pool.spawn(
            specs_for(pc, procs, count=count, first_index=first, all_cpus=self.all_cpus)
        )
        self.state.spawned[pc.path] = first + count

    def apply(self, op: PlanOp) -> None:
        st, k = self.state, op.kind
        if k is OpKind.ADD_CGROUP:
            paths = [pc.path for pc in op.cgroups]
            for pc in op.cgroups:
                kids = any(p.startswith(pc.path + "/") for p in paths)
                self.tree.create(pc.path, None, has_children=kids)
                self._set_cpus(pc.path, pc.cpus)
                st.cgroups[pc.path] = pc
                if pc.workers:
                    self._spawn(pc, pc.workers)
            self.stimulus(k.value, cgroups=paths, workers=sum(pc.workers for pc in op.cgroups))
        elif k in (OpKind.REMOVE_CGROUP, OpKind.STOP):
            st.reports += self.pool.stop(op.path)
            if k is OpKind.REMOVE_CGROUP:
                self.tree.remove(op.path)
                for p in [p for p in st.cgroups if p == op.path or p.startswith(op.path + "/")]:
                    del st.cgroups[p]
            self.stimulus(k.value, cgroup=op.path)
        elif k is OpKind.SET_CPUSET or k is OpKind.CLEAR_CPUSET:
            self._set_cpus(op.path, op.cpus)
            self.stimulus(k.value, cgroup=op.path, cpus=list(op.cpus or ()))
        elif k is OpKind.SWAP_CPUSETS:
            a, b = st.cgroups[op.path], st.cgroups[op.other]
            st.cgroups[op.path] = replace(a, cpus=b.cpus)
            st.cgroups[op.other] = replace(b, cpus=a.cpus)
            self._set_cpus(op.path, b.cpus)
            self._set_cpus(op.other, a.cpus)
            self.stimulus(k.value, a=op.path, b=op.other)
        elif k is OpKind.SPAWN:
            self._spawn(st.cgroups[op.path], op.count)
            self.stimulus(k.value, cgroup=op.path, count=op.count)
        elif k is OpKind.SET_AFFINITY:
            self.pool.set_affinity(op.path, op.affinities, self.all_cpus)
            self.stimulus(k.value, cgroup=op.path)
        elif k is OpKind.MOVE_ALL:
            moved = self.tree.move_all(op.path, op.other)
            self.stimulus(k.value, src=op.path, dst=op.other, moved=moved)

    # -- the run ------------------------------------------------------------------
    def hold(self, seconds: float, loop_ops: tuple[PlanOp, ...], interval: float) -> None:
        end = time.monotonic() + seconds
        next_loop = time.monotonic() + interval if interval else float("inf")
        while (now := time.monotonic()) < end and not self.scheduler_dead():
            if now >= next_loop:
                for op in loop_ops:
                    self.apply(op)
                next_loop += interval
            time.sleep(min(0.05, max(0.0, end - now)))

    def run(self, plan: Plan) -> dict[str, Any]:
        """Run one plan: fresh cgroups, workers and state; the scheduler stays."""
        self.plan, self.state = plan, RunState()
        self.tree, self.pool = CgroupTree(), WorkerPool()
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.tree)
            stack.callback(self.pool.close)
            self.t0 = time.monotonic()
            total = sum(step.hold_s for step in self.plan.steps)
            self.send(ScenarioStart(name=self.plan.scenario, duration_s=total))
            for step in self.plan.steps:
                for op in step.ops:
                    self.apply(op)
                self.pool.release()
                self.hold(
                    step.hold_s, step.ops if step.loop_interval_s else (), step.loop_interval_s
                )
                if self.scheduler_dead():
                    break
            elapsed = time.monotonic() - self.t0
            self.send(ScenarioEnd(name=self.plan.scenario, grace_s=30.0))
            self.state.reports += self.pool.stop()
            self._send_reports()
            self.pool.close()
            self.tree.close()
        return {
            "elapsed_s": elapsed,
            "workers": len(self.state.reports),
            "leftover_cgroups": self.tree.leftovers(),
            "leftover_workers": len(self.pool.running()),
            "scheduler_died": self.scheduler_dead(),
        }

    def _send_reports(self) -> None:
        by_cg: dict[str, list[dict[str, Any]]] = {}
        for r in self.state.reports:
            by_cg.setdefault(str(r.get("cgroup")), []).append(r)
        for cg, reports in sorted(by_cg.items()):
            union = self.state.cpus_union.get(cg)
            self.send(
                WorkerReports(
                    cgroup=cg, reports=reports, cpus=None if union is None else sorted(union)
                )
            )


def session(
    port: Any, job: dict[str, Any], name: str, body: Callable[[Executor], dict[str, Any]]
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
    ok = not summary["leftover_cgroups"] and not summary["leftover_workers"]
    ex.send(TestResult(name=name, passed=ok, data=summary))
    return 0


def run_scenario(port: Any, job: dict[str, Any]) -> int:
    """Agent entry for ``mode: scenario``."""
    plan = from_data(Plan, job["plan"])
    return session(port, job, plan.scenario, lambda ex: ex.run(plan))
