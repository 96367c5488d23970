"""Scenarios: cgroups, cpusets and workers as data, and their resolution
against a Topology into a concrete plan the guest agent executes. Pure.

A Scenario is a list of Steps. A Step applies its Ops, then holds (runs the
workers) for its HoldSpec. ``spec/plan.resolve(scenario, topology,
duration)`` validates everything before boot and returns a Plan with
concrete CPU lists, hold times in seconds and per-worker affinities.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field

from ktstr.errors import ConfigError
from ktstr.spec.checks import Thresholds
from ktstr.spec.cpuset import CpusetSpec, Size
from ktstr.spec.payload import Payload
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
    #: cgroup v2 ``cpu.max`` as CPUs' worth per 100 ms period (1.5 = 150 ms
    #: of CPU time every 100 ms); 0 = no limit. Needs CONFIG_CFS_BANDWIDTH.
    cpu_max: float = 0.0
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
        check_cpu_max(f"cgroup {self.name}", self.cpu_max)


#: cpu.max's period (the kernel's default) and the smallest quota it takes.
CPU_MAX_PERIOD_US = 100_000
CPU_MAX_MIN = 0.01


def check_cpu_max(what: str, cpus: float) -> None:
    if isinstance(cpus, bool) or not isinstance(cpus, int | float) or not math.isfinite(cpus):
        raise ConfigError(f"{what}: cpu_max must be a number of CPUs, got {cpus!r}")
    if cpus != 0 and not CPU_MAX_MIN <= cpus <= 8192:
        raise ConfigError(f"{what}: cpu_max must be 0 (no limit) or 0.01..8192 CPUs, got {cpus}")


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
    MOVE_WORKER = "move_worker"  # move worker `count` of `name` into `other`
    SET_WEIGHT = "set_weight"  # cpu.weight of `name` := `value`
    SET_CPU_MAX = "set_cpu_max"  # cpu.max of `name` := `value` milli-CPUs (0 = no limit)
    SNAPSHOT = "snapshot"  # the host freezes the guest and captures it as `name`
    BPF_WRITE = "bpf_write"  # the host writes `value` into the scheduler's global `name`


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """One change to the scenario's cgroups and workers."""

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
    def move_worker(cls, src: str, index: int, dst: str) -> Op:
        """Move one worker (``src[index]``, one the cgroup started with)."""
        return cls(kind=OpKind.MOVE_WORKER, name=src, other=dst, count=index)

    @classmethod
    def set_weight(cls, name: str, weight: int) -> Op:
        return cls(kind=OpKind.SET_WEIGHT, name=name, value=weight)

    @classmethod
    def set_cpu_max(cls, name: str, cpus: float) -> Op:
        """``cpu.max`` of ``name`` := ``cpus`` CPUs' worth per period (0 = none)."""
        check_cpu_max(f"set_cpu_max {name}", cpus)
        return cls(kind=OpKind.SET_CPU_MAX, name=name, value=round(cpus * 1000))

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
    """How long a step holds: a fraction of the run, seconds, or a loop."""

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
    """Ops applied together, then held."""

    ops: tuple[Op, ...] = ()
    hold: HoldSpec = field(default_factory=HoldSpec)


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A named workload: its steps, length and thresholds."""

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
