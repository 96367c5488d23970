"""Who runs where as a plan unfolds. Pure.

Host and guest apply the same ops to a ``Ledger``: the guest to number, stop
and move its workers, the host to know which worker reports a run owes it,
which CPUs each worker may use (the union of its cgroups' effective cpusets
while it was in them) and how long it was meant to run. Neither count nor
identity nor cpuset is ever taken from the guest's reports.

A worker's identity is (cgroup it was spawned in, index there); indices of a
cgroup path keep counting across a remove and a re-add.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ktstr.spec.payload import Payload
from ktstr.spec.plan import Plan, PlanCgroup, PlanOp
from ktstr.spec.scenario import OpKind
from ktstr.spec.work import IDLE_WEIGHT, PolicyKind, WorkKind, nice_weight

WorkerId = tuple[str, int]
#: A payload run: (cgroup it started in, how many ran there before it).
PayloadId = tuple[str, int]


@dataclass(slots=True)
class WorkerLife:
    """A planned worker from spawn to stop."""

    id: WorkerId
    cgroup: str  # where it is now (a MOVE_ALL changes it)
    spec: PlanCgroup  # what it was spawned from: work, policy, affinity
    allowed: set[int]
    start_s: float
    stop_s: float | None = None


@dataclass(slots=True)
class PayloadLife:
    """A planned payload run from start to stop."""

    id: PayloadId
    cgroup: str  # where it is now (a MOVE_ALL changes it)
    payload: Payload
    start_s: float
    stop_s: float | None = None


@dataclass(frozen=True, slots=True)
class Spawn:
    """``count`` new workers of ``spec``, numbered from ``first``."""

    spec: PlanCgroup
    first: int
    count: int


@dataclass(frozen=True, slots=True)
class Effect:
    """What one op does to the workers and payloads."""

    spawn: tuple[Spawn, ...] = ()
    stop: tuple[WorkerId, ...] = ()
    moved: tuple[WorkerId, ...] = ()
    start_payloads: tuple[PayloadLife, ...] = ()
    stop_payloads: tuple[PayloadId, ...] = ()


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


@dataclass(slots=True)
class Ledger:
    """The cgroups, workers and payloads a plan has live at each point."""

    all_cpus: tuple[int, ...]
    live: dict[str, PlanCgroup] = field(default_factory=dict)
    next_index: dict[str, int] = field(default_factory=dict)
    workers: dict[WorkerId, WorkerLife] = field(default_factory=dict)
    payloads: dict[PayloadId, PayloadLife] = field(default_factory=dict)
    #: Whether the competition changed after the start: any op but adding
    #: cgroups at time 0 (and snapshots or BPF writes, which change nothing).
    dynamic: bool = False

    def effective(self, path: str) -> tuple[int, ...]:
        """cgroup v2: a cpuset narrows its parent's; an empty result falls
        back to the parent's, an unset one inherits it."""
        eff = self.all_cpus
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            pc = self.live.get("/".join(parts[:i]))
            if pc is not None and pc.cpus is not None:
                narrowed = tuple(c for c in eff if c in set(pc.cpus))
                eff = narrowed or eff
        return eff

    def running(self, top: str | None = None) -> list[WorkerLife]:
        return [
            w
            for w in self.workers.values()
            if w.stop_s is None and (top is None or _under(w.cgroup, top))
        ]

    def _refresh(self, top: str) -> None:
        for w in self.running(top):
            w.allowed.update(self.effective(w.cgroup))

    def _spawn(self, pc: PlanCgroup, count: int, t: float) -> Spawn:
        first = self.next_index.get(pc.path, 0)
        self.next_index[pc.path] = first + count
        allowed = self.effective(pc.path)
        for i in range(first, first + count):
            wid = (pc.path, i)
            self.workers[wid] = WorkerLife(wid, pc.path, pc, set(allowed), t)
        return Spawn(pc, first, count)

    def _stop(self, top: str | None, t: float) -> tuple[WorkerId, ...]:
        out = []
        for w in self.running(top):
            w.stop_s = t
            out.append(w.id)
        return tuple(out)

    def _start_payload(self, pc: PlanCgroup, t: float) -> PayloadLife:
        assert pc.payload is not None
        n = sum(1 for pid in self.payloads if pid[0] == pc.path)
        life = PayloadLife((pc.path, n), pc.path, pc.payload, t)
        self.payloads[life.id] = life
        return life

    def running_payloads(self, top: str | None = None) -> list[PayloadLife]:
        return [
            p
            for p in self.payloads.values()
            if p.stop_s is None and (top is None or _under(p.cgroup, top))
        ]

    def _stop_payloads(self, top: str | None, t: float) -> tuple[PayloadId, ...]:
        out = []
        for p in self.running_payloads(top):
            p.stop_s = t
            out.append(p.id)
        return tuple(out)

    def _set_cpus(self, path: str, cpus: tuple[int, ...] | None) -> None:
        self.live[path] = dataclasses.replace(self.live[path], cpus=cpus)

    def apply(self, op: PlanOp, t: float) -> Effect:
        """Apply one op at planned time ``t`` (seconds into the scenario)."""
        k = op.kind
        if k not in (OpKind.SNAPSHOT, OpKind.BPF_WRITE) and (t > 0 or k is not OpKind.ADD_CGROUP):
            self.dynamic = True
        if k is OpKind.ADD_CGROUP:
            spawns, started = [], []
            for pc in op.cgroups:  # parent first
                self.live[pc.path] = pc
                if pc.workers:
                    spawns.append(self._spawn(pc, pc.workers, t))
                if pc.payload is not None:
                    started.append(self._start_payload(pc, t))
            return Effect(spawn=tuple(spawns), start_payloads=tuple(started))
        if k in (OpKind.REMOVE_CGROUP, OpKind.STOP):
            stopped = self._stop(op.path, t)
            ended = self._stop_payloads(op.path, t)
            if k is OpKind.REMOVE_CGROUP:
                for path in [p for p in self.live if _under(p, op.path)]:
                    del self.live[path]
            return Effect(stop=stopped, stop_payloads=ended)
        if k in (OpKind.SET_CPUSET, OpKind.CLEAR_CPUSET):
            self._set_cpus(op.path, op.cpus)
            self._refresh(op.path)
        elif k is OpKind.SWAP_CPUSETS:
            a, b = self.live[op.path].cpus, self.live[op.other].cpus
            self._set_cpus(op.path, b)
            self._set_cpus(op.other, a)
            self._refresh(op.path)
            self._refresh(op.other)
        elif k is OpKind.SPAWN:
            return Effect(spawn=(self._spawn(self.live[op.path], op.count, t),))
        elif k is OpKind.MOVE_WORKER:
            w = self.workers.get((op.path, op.count))
            if w is None or w.stop_s is not None or w.cgroup != op.path:
                return Effect()  # gone already: nothing moves
            w.cgroup = op.other
            self._refresh(op.other)
            return Effect(moved=(w.id,))
        elif k is OpKind.SET_WEIGHT:
            self.live[op.path] = dataclasses.replace(self.live[op.path], weight=op.value)
        elif k is OpKind.SET_CPU_MAX:
            self.live[op.path] = dataclasses.replace(self.live[op.path], cpu_max=op.value / 1000)
        elif k is OpKind.MOVE_ALL:
            moved = self.running(op.path)
            for w in moved:
                w.cgroup = op.other
            for p in self.running_payloads(op.path):
                p.cgroup = op.other
            self._refresh(op.other)
            return Effect(moved=tuple(w.id for w in moved))
        return Effect()

    def finish(self, t: float) -> tuple[WorkerId, ...]:
        """The scenario ends: every worker and payload still running stops at ``t``."""
        self._stop_payloads(None, t)
        return self._stop(None, t)


@dataclass(frozen=True, slots=True)
class Terms:
    """How a worker competes, as the fairness judgements need it
    (``evaluate/fairness.py``, the spread check)."""

    weight: float = 1024.0  # its nice (or SCHED_IDLE) weight
    #: The cgroups above it with their cpu.weight, outermost first.
    groups: tuple[tuple[str, int], ...] = ()
    cpu_bound: bool = False  # it wants a whole CPU
    static: bool = False  # the run's competition was the same from start to end
    start_s: float = 0.0  # when it started, seconds into the scenario
    role: int = 0  # its part (``Work.role``)
    opaque: bool = False  # CPU it causes escapes its accounting (``Work.opaque``)
    end_cgroup: str = ""  # the cgroup it ended in (a move changes it)
    team: str = ""  # workers that talk to each other (``Work.team``) share it
    kind: str = ""  # its work kind (``WorkKind`` value)
    cpu_max: float = 0.0  # its cgroup's cpu.max in CPUs (0 = none; static runs only)


@dataclass(frozen=True, slots=True)
class ExpectedWorker:
    """A worker the plan owes a report for, with what the host allows it."""

    cgroup: str
    index: int
    allowed: tuple[int, ...]
    planned_s: float
    #: The CPUs it pins itself to (the plan's affinity for its index), if any.
    affinity: tuple[int, ...] | None = None
    #: How it competes, for the fairness judgements.
    terms: Terms = field(default_factory=Terms)


#: Work that is runnable all the time: it wants a whole CPU.
CPU_BOUND = frozenset(
    {WorkKind.CPU_SPIN, WorkKind.CACHE_PRESSURE, WorkKind.MEMORY_BW, WorkKind.PAGE_FAULTS}
)
FAIR_POLICIES = frozenset({PolicyKind.NORMAL, PolicyKind.BATCH, PolicyKind.IDLE})


def _groups(ledger: Ledger, path: str) -> tuple[tuple[str, int], ...]:
    """The cgroup entities above a worker of ``path``, with their weights; a
    cgroup with children keeps its own workers in a leaf of weight 100."""
    parts = path.split("/")
    out = []
    for i in range(1, len(parts) + 1):
        p = "/".join(parts[:i])
        pc = ledger.live.get(p)
        out.append((p, pc.weight if pc is not None else 100))
    if any(p.startswith(path + "/") for p in ledger.live):
        out.append((path + "/.leaf", 100))
    return tuple(out)


def _cpu_max(ledger: Ledger, path: str) -> float:
    pc = ledger.live.get(path)
    return pc.cpu_max if pc is not None else 0.0


def _weight(pc: PlanCgroup) -> float:
    return float(IDLE_WEIGHT if pc.policy.kind is PolicyKind.IDLE else nice_weight(pc.nice))


def unfold(plan: Plan, all_cpus: tuple[int, ...]) -> Ledger:
    """Every op of ``plan`` applied at its planned time, loops included."""
    ledger = Ledger(all_cpus)
    t = 0.0
    for step in plan.steps:
        for op in step.ops:
            ledger.apply(op, t)
        for k in range(1, step.loop_count + 1):
            for op in step.ops:
                ledger.apply(op, t + k * step.loop_interval_s)
        t += step.hold_s
    ledger.finish(t)
    return ledger


def expected_workers(plan: Plan, all_cpus: tuple[int, ...]) -> tuple[ExpectedWorker, ...]:
    ledger = unfold(plan, all_cpus)
    static = not ledger.dynamic
    return tuple(
        ExpectedWorker(
            cgroup=w.id[0],
            index=w.id[1],
            allowed=tuple(sorted(w.allowed)),
            planned_s=(w.stop_s or 0.0) - w.start_s,
            affinity=_affinity(w.spec, w.id[1]),
            terms=Terms(
                weight=_weight(w.spec),
                groups=_groups(ledger, w.cgroup) if static else (),
                cpu_bound=w.spec.work.kind in CPU_BOUND and w.spec.policy.kind in FAIR_POLICIES,
                static=static,
                start_s=w.start_s,
                role=w.spec.work.role(w.id[1]),
                opaque=w.spec.work.opaque,
                end_cgroup=w.cgroup,
                team=w.spec.work.team(w.id[0], w.id[1]),
                kind=w.spec.work.kind.value,
                cpu_max=_cpu_max(ledger, w.cgroup) if static else 0.0,
            ),
        )
        for w in ledger.workers.values()
    )


@dataclass(frozen=True, slots=True)
class ExpectedPayload:
    """A payload run the plan owes a result for."""

    cgroup: str
    index: int
    payload: Payload
    planned_s: float

    @property
    def label(self) -> str:
        return f"{self.payload.name}@{self.cgroup}" + (f"#{self.index}" if self.index else "")


def expected_payloads(plan: Plan, all_cpus: tuple[int, ...]) -> tuple[ExpectedPayload, ...]:
    ledger = unfold(plan, all_cpus)
    return tuple(
        ExpectedPayload(p.id[0], p.id[1], p.payload, (p.stop_s or 0.0) - p.start_s)
        for p in ledger.payloads.values()
    )


def _affinity(pc: PlanCgroup, index: int) -> tuple[int, ...] | None:
    """What the guest pins worker ``index`` to (as ``guest/workers.specs_for``)."""
    aff = pc.affinities[index % len(pc.affinities)] if pc.affinities else None
    return tuple(sorted(aff)) if aff is not None else None


def cpu_groups(plan: Plan, all_cpus: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """The CPU sets whose run queues a scheduler should keep balanced: every
    effective cpuset a cgroup with workers or a payload had during ``plan``
    (all CPUs for a cgroup without one)."""
    ledger = Ledger(all_cpus)
    groups: set[tuple[int, ...]] = set()
    t = 0.0
    for step in plan.steps:
        for k in range(step.loop_count + 1):
            for op in step.ops:
                ledger.apply(op, t + k * step.loop_interval_s)
                groups.update(ledger.effective(w.cgroup) for w in ledger.running())
                groups.update(ledger.effective(p.cgroup) for p in ledger.running_payloads())
        t += step.hold_s
    return tuple(sorted(g for g in groups if len(g) > 1))
