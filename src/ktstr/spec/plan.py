"""Resolution of a Scenario against a Topology into the concrete Plan the
guest agent executes and the host's ledger unfolds: CPU lists, worker
counts, hold times in seconds, per-worker affinities. Pure; every error
names the field."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from ktstr.errors import ConfigError
from ktstr.spec.cpuset import Size
from ktstr.spec.payload import Payload
from ktstr.spec.scenario import (
    NAME_MAX,
    NAME_RE,
    VAR_MAX,
    VAR_RE,
    CgroupDef,
    HoldMode,
    Op,
    OpKind,
    Scenario,
    check_cpu_max,
)
from ktstr.spec.topology import Topology
from ktstr.spec.work import SchedPolicy, Work

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
    cpu_max: float = 0.0  # CPUs' worth per period (cpu.max); 0 = no limit


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanOp:
    """One op with its cgroups resolved for the topology."""

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
    """A step's ops and how long the step holds."""

    ops: tuple[PlanOp, ...]
    hold_s: float
    loop_interval_s: float = 0.0
    #: How many times a loop hold re-applies ``ops`` (at every interval that
    #: starts before the hold ends): fixed here, so host and guest agree.
    loop_count: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A scenario resolved for one topology: what the agent runs."""

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
        cpu_max=d.cpu_max,
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
    if k in (OpKind.MOVE_WORKER, OpKind.SET_WEIGHT, OpKind.SET_CPU_MAX):
        return _resolve_live_op(op, need, live)
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


def _resolve_live_op(
    op: Op, need: Callable[[str], PlanCgroup], live: dict[str, PlanCgroup]
) -> PlanOp:
    """Ops on running workers and cgroups: move one worker, set a weight."""
    k = op.kind
    if k is OpKind.MOVE_WORKER:
        src, _ = need(op.name), need(op.other)
        if op.name == op.other or not 0 <= op.count < src.workers:
            raise ConfigError(
                f"move_worker: needs another cgroup and one of {op.name}'s "
                f"{src.workers} first workers, got [{op.count}] -> {op.other!r}"
            )
        return PlanOp(kind=k, path=op.name, other=op.other, count=op.count)
    cg = need(op.name)
    if k is OpKind.SET_CPU_MAX:
        check_cpu_max(f"set_cpu_max {op.name}", op.value / 1000)
        live[op.name] = replace(cg, cpu_max=op.value / 1000)
        return PlanOp(kind=k, path=op.name, value=op.value)
    if not 1 <= op.value <= 10000:
        raise ConfigError(f"set_weight: weight must be 1..10000, got {op.value}")
    live[op.name] = replace(cg, weight=op.value)
    return PlanOp(kind=k, path=op.name, value=op.value)
