"""Scenarios: cgroups, cpusets and workers as data, and their resolution
against a Topology into a concrete plan the guest agent executes. Pure.

A Scenario is a list of Steps. A Step applies its Ops, then holds (runs the
workers) for its HoldSpec. ``resolve(scenario, topology, duration)``
validates everything before boot and returns a Plan with concrete CPU lists,
hold times in seconds and per-worker affinities.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field, replace

from ktstr.errors import ConfigError
from ktstr.spec.checks import Thresholds
from ktstr.spec.cpuset import CpusetSpec, Size
from ktstr.spec.payload import Payload
from ktstr.spec.topology import Topology
from ktstr.spec.work import INHERIT, NORMAL, Affinity, SchedPolicy, Work

#: Snapshot names and BPF variable paths (the wire checks the same; spec and
#: protocol share no code by design).
NAME_MAX, VAR_MAX = 64, 128
NAME_RE = re.compile(r"[A-Za-z0-9_.:-]*")
VAR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*|\[[0-9]{1,6}\])*")


@dataclass(frozen=True, slots=True, kw_only=True)
class CgroupDef:
    """A cgroup and its workers. ``CgroupDef("cg0", workers=2)``."""

    name: str = field(kw_only=False)
    #: A number, or a size relative to the cgroup's CPUs (``Size.per_cpu(2)``).
    workers: int | Size = 1
    work: Work = field(default_factory=Work.spin)
    cpuset: CpusetSpec | None = None
    policy: SchedPolicy = NORMAL
    nice: int = 0
    #: cgroup v2 ``cpu.weight`` (1..10000; 100 is the kernel's default).
    weight: int = 100
    affinity: Affinity = INHERIT
    children: tuple[CgroupDef, ...] = ()
    #: A real program run in this cgroup beside (or instead of) the workers.
    payload: Payload | None = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"cgroup name {self.name!r} must be non-empty, without '/'")
        if isinstance(self.workers, Size):
            pass  # counted against the topology, rounded up to even for paired work
        elif self.workers < 0:
            raise ConfigError(f"cgroup {self.name}: workers must be >= 0, got {self.workers}")
        elif self.work.paired and self.workers % 2:
            raise ConfigError(
                f"cgroup {self.name}: {self.work.kind.value} is paired, so "
                f"workers must be even, got {self.workers}"
            )
        if not -20 <= self.nice <= 19:
            raise ConfigError(f"cgroup {self.name}: nice must be -20..19, got {self.nice}")
        if not 1 <= self.weight <= 10000:
            raise ConfigError(f"cgroup {self.name}: weight must be 1..10000, got {self.weight}")


class OpKind(enum.Enum):
    ADD_CGROUP = "add_cgroup"  # create `cgroup` (and its children) and start its workers
    REMOVE_CGROUP = "remove_cgroup"  # stop the workers of `name`, remove it
    SET_CPUSET = "set_cpuset"  # cpuset of `name` := `cpuset`
    CLEAR_CPUSET = "clear_cpuset"  # cpuset of `name` := inherited (all)
    SWAP_CPUSETS = "swap_cpusets"  # exchange the cpusets of `name` and `other`
    SPAWN = "spawn"  # `count` more workers in `name`
    STOP = "stop"  # stop the workers of `name`, keep the cgroup
    SET_AFFINITY = "set_affinity"  # re-pin the workers of `name`
    MOVE_ALL = "move_all"  # move every task of `name` into `other`
    SNAPSHOT = "snapshot"  # the host freezes the guest and captures it as `name`
    BPF_WRITE = "bpf_write"  # the host writes `value` into the scheduler's global `name`


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    kind: OpKind
    name: str = ""
    other: str = ""
    cgroup: CgroupDef | None = None
    cpuset: CpusetSpec | None = None
    affinity: Affinity | None = None
    count: int = 0
    value: int = 0

    @classmethod
    def add(cls, cgroup: CgroupDef) -> Op:
        return cls(kind=OpKind.ADD_CGROUP, name=cgroup.name, cgroup=cgroup)

    @classmethod
    def remove(cls, name: str) -> Op:
        return cls(kind=OpKind.REMOVE_CGROUP, name=name)

    @classmethod
    def set_cpuset(cls, name: str, cpuset: CpusetSpec) -> Op:
        return cls(kind=OpKind.SET_CPUSET, name=name, cpuset=cpuset)

    @classmethod
    def clear_cpuset(cls, name: str) -> Op:
        return cls(kind=OpKind.CLEAR_CPUSET, name=name)

    @classmethod
    def swap_cpusets(cls, a: str, b: str) -> Op:
        return cls(kind=OpKind.SWAP_CPUSETS, name=a, other=b)

    @classmethod
    def spawn(cls, name: str, count: int) -> Op:
        return cls(kind=OpKind.SPAWN, name=name, count=count)

    @classmethod
    def stop(cls, name: str) -> Op:
        return cls(kind=OpKind.STOP, name=name)

    @classmethod
    def set_affinity(cls, name: str, affinity: Affinity) -> Op:
        return cls(kind=OpKind.SET_AFFINITY, name=name, affinity=affinity)

    @classmethod
    def move_all(cls, src: str, dst: str) -> Op:
        return cls(kind=OpKind.MOVE_ALL, name=src, other=dst)

    @classmethod
    def snapshot(cls, name: str) -> Op:
        """The host freezes the guest here and keeps a snapshot ``name``."""
        return cls(kind=OpKind.SNAPSHOT, name=name)

    @classmethod
    def bpf_write(cls, var: str, value: int | bool) -> Op:
        """The host writes ``value`` into the scheduler's BPF global ``var``
        (``.bss``/``.data``/arena; a name or a path like ``qa.cnt``)."""
        return cls(kind=OpKind.BPF_WRITE, name=var, value=int(value))


class HoldMode(enum.Enum):
    FRACTION = "fraction"  # `value` of the scenario duration
    FIXED = "fixed"  # `value` seconds
    LOOP = "loop"  # re-apply the step's ops every `interval` s for `value` of the duration


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldSpec:
    mode: HoldMode = HoldMode.FRACTION
    value: float = 1.0
    interval: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.value) or self.value <= 0:
            raise ConfigError(
                f"hold {self.mode.value} must be a finite number > 0, got {self.value}"
            )
        if self.mode is not HoldMode.FIXED and self.value > 1:
            raise ConfigError(f"hold fraction must be in (0, 1], got {self.value}")
        if self.mode is HoldMode.LOOP and not (math.isfinite(self.interval) and self.interval > 0):
            raise ConfigError(f"hold loop interval must be > 0, got {self.interval}")

    @classmethod
    def fraction(cls, f: float) -> HoldSpec:
        return cls(mode=HoldMode.FRACTION, value=f)

    @classmethod
    def fixed(cls, seconds: float) -> HoldSpec:
        return cls(mode=HoldMode.FIXED, value=seconds)

    @classmethod
    def loop(cls, interval: float, fraction: float = 1.0) -> HoldSpec:
        return cls(mode=HoldMode.LOOP, value=fraction, interval=interval)

    def seconds(self, duration: float) -> float:
        return self.value if self.mode is HoldMode.FIXED else self.value * duration


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    ops: tuple[Op, ...] = ()
    hold: HoldSpec = field(default_factory=HoldSpec)


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    description: str
    steps: tuple[Step, ...]
    duration_s: float = 5.0
    #: The scenario's own layer of the threshold chain (see spec/checks.py).
    thresholds: Thresholds = field(default_factory=Thresholds)
    #: The catalog group ``ktstr list`` shows it under.
    group: str = ""

    @classmethod
    def of_defs(
        cls,
        name: str,
        defs: list[CgroupDef] | tuple[CgroupDef, ...],
        description: str = "",
        duration_s: float = 5.0,
        thresholds: Thresholds | None = None,
        *,
        group: str = "",
    ) -> Scenario:
        """The common case: start these cgroups, hold for the whole duration."""
        step = Step(ops=tuple(Op.add(d) for d in defs))
        return cls(
            name=name,
            description=description or name,
            steps=(step,),
            duration_s=duration_s,
            thresholds=thresholds or Thresholds(),
            group=group,
        )


# -- resolution -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanCgroup:
    """A cgroup with concrete CPUs; ``path`` is relative to the run's root."""

    path: str
    cpus: tuple[int, ...] | None
    workers: int
    work: Work
    policy: SchedPolicy
    nice: int
    affinities: tuple[tuple[int, ...] | None, ...]
    payload: Payload | None = None
    weight: int = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanOp:
    kind: OpKind
    path: str = ""
    other: str = ""
    cgroups: tuple[PlanCgroup, ...] = ()  # ADD_CGROUP: parent first
    cpus: tuple[int, ...] | None = None
    affinities: tuple[tuple[int, ...] | None, ...] = ()
    count: int = 0
    value: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanStep:
    ops: tuple[PlanOp, ...]
    hold_s: float
    loop_interval_s: float = 0.0
    #: How many times a loop hold re-applies ``ops`` (at every interval that
    #: starts before the hold ends): fixed here, so host and guest agree.
    loop_count: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    scenario: str
    topology: str
    duration_s: float
    steps: tuple[PlanStep, ...]
    seed: int = 0


def _flatten(d: CgroupDef, topo: Topology, parent: str, seed: int) -> list[PlanCgroup]:
    path = f"{parent}/{d.name}" if parent else d.name
    cpus = d.cpuset.resolve(topo) if d.cpuset is not None else None
    allowed = cpus if cpus is not None else tuple(range(topo.cpus))
    workers = d.workers
    if isinstance(workers, Size):
        workers = workers.count(topo, allowed, even=d.work.paired)
    try:
        affs = tuple(d.affinity.resolve(topo, allowed, i, seed) for i in range(workers))
    except ConfigError as exc:
        raise ConfigError(f"cgroup {path}: {exc}") from None
    own = PlanCgroup(
        path=path,
        cpus=cpus,
        workers=workers,
        work=d.work,
        policy=d.policy,
        nice=d.nice,
        affinities=affs,
        payload=d.payload,
        weight=d.weight,
    )
    out = [own]
    for child in d.children:
        out += _flatten(child, topo, path, seed)
    return out


def resolve(
    scenario: Scenario, topo: Topology, duration_s: float | None = None, seed: int = 0
) -> Plan:
    """Validate ``scenario`` against ``topo``; every error names the field."""
    duration = scenario.duration_s if duration_s is None else duration_s
    if not math.isfinite(duration) or duration <= 0:
        raise ConfigError(f"duration must be a finite number > 0 s, got {duration}")
    live: dict[str, PlanCgroup] = {}
    payloads: dict[str, str] = {}  # name -> cgroup path: metric keys must be unique
    steps = []
    for i, step in enumerate(scenario.steps):
        where = f"scenario {scenario.name} step {i}"
        ops = []
        for op in step.ops:
            try:
                ops.append(_resolve_op(op, topo, live, seed))
                _unique_payloads(ops[-1], payloads)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        hold = step.hold
        hold_s = hold.seconds(duration)
        loops = _loop_count(hold_s, hold.interval) if hold.mode is HoldMode.LOOP else 0
        for k in range(loops):  # a re-applied op must still be valid
            for op in step.ops:
                try:
                    _resolve_op(op, topo, live, seed)
                except ConfigError as exc:
                    raise ConfigError(f"{where}: loop repeat {k + 1}: {exc}") from None
        steps.append(
            PlanStep(
                ops=tuple(ops),
                hold_s=hold_s,
                loop_interval_s=hold.interval if loops else 0.0,
                loop_count=loops,
            )
        )
    return Plan(
        scenario=scenario.name,
        topology=topo.name,
        duration_s=duration,
        steps=tuple(steps),
        seed=seed,
    )


def _unique_payloads(op: PlanOp, seen: dict[str, str]) -> None:
    for pc in op.cgroups:
        if pc.payload is None:
            continue
        other = seen.setdefault(pc.payload.name, pc.path)
        if other != pc.path:
            raise ConfigError(
                f"payload name {pc.payload.name!r} is used in cgroups {other!r} and "
                f"{pc.path!r}: give each its own name (metrics are keyed by it)"
            )


def _loop_count(hold_s: float, interval: float) -> int:
    """Intervals k * interval (k >= 1) that start before the hold ends."""
    return max(0, math.ceil(hold_s / interval - 1e-9) - 1)


def _resolve_op(op: Op, topo: Topology, live: dict[str, PlanCgroup], seed: int) -> PlanOp:
    def need(name: str) -> PlanCgroup:
        if name not in live:
            raise ConfigError(
                f"{op.kind.value}: no cgroup {name!r} (live: {', '.join(sorted(live)) or 'none'})"
            )
        return live[name]

    k = op.kind
    if k is OpKind.ADD_CGROUP:
        if op.cgroup is None:
            raise ConfigError("add_cgroup needs a cgroup")
        flat = _flatten(op.cgroup, topo, "", seed)
        for pc in flat:
            if pc.path in live:
                raise ConfigError(f"add_cgroup: cgroup {pc.path!r} already exists")
            live[pc.path] = pc
        return PlanOp(kind=k, path=op.cgroup.name, cgroups=tuple(flat))
    if k in (OpKind.REMOVE_CGROUP, OpKind.STOP, OpKind.CLEAR_CPUSET):
        need(op.name)
        if k is OpKind.REMOVE_CGROUP:
            for path in [p for p in live if p == op.name or p.startswith(op.name + "/")]:
                del live[path]
        return PlanOp(kind=k, path=op.name)
    if k is OpKind.SET_CPUSET:
        need(op.name)
        if op.cpuset is None:
            raise ConfigError("set_cpuset needs a cpuset")
        cpus = op.cpuset.resolve(topo)
        live[op.name] = replace(live[op.name], cpus=cpus)
        return PlanOp(kind=k, path=op.name, cpus=cpus)
    if k in (OpKind.SWAP_CPUSETS, OpKind.MOVE_ALL):
        a, b = need(op.name), need(op.other)
        if op.name == op.other:
            raise ConfigError(f"{k.value}: needs two different cgroups, got {op.name!r} twice")
        if k is OpKind.SWAP_CPUSETS:
            live[op.name], live[op.other] = replace(a, cpus=b.cpus), replace(b, cpus=a.cpus)
        return PlanOp(kind=k, path=op.name, other=op.other)
    if k is OpKind.SPAWN:
        cg = need(op.name)
        if op.count < 1 or (cg.work.paired and op.count % 2):
            raise ConfigError(f"spawn: count must be >= 1 (even for paired work), got {op.count}")
        return PlanOp(kind=k, path=op.name, count=op.count)
    if k is OpKind.SET_AFFINITY:
        cg = need(op.name)
        if op.affinity is None:
            raise ConfigError("set_affinity needs an affinity")
        allowed = cg.cpus if cg.cpus is not None else tuple(range(topo.cpus))
        affs = tuple(op.affinity.resolve(topo, allowed, i, seed) for i in range(cg.workers))
        return PlanOp(kind=k, path=op.name, affinities=affs)
    if k is OpKind.SNAPSHOT:
        if len(op.name) > NAME_MAX or not NAME_RE.fullmatch(op.name):
            raise ConfigError(f"snapshot: name {op.name!r} is not 0-64 of A-Z a-z 0-9 _ . : -")
        return PlanOp(kind=k, path=op.name)
    if k is OpKind.BPF_WRITE:
        if len(op.name) > VAR_MAX or not VAR_RE.fullmatch(op.name):
            raise ConfigError(f"bpf_write: {op.name!r} is not a C name or path (qa.cnt, a[2].b)")
        if not -(2**63) <= op.value < 2**64:
            raise ConfigError(f"bpf_write: value {op.value} is not a 64-bit integer")
        return PlanOp(kind=k, path=op.name, value=op.value)
    raise ConfigError(f"unknown op {k}")
