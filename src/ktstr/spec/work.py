"""What a worker does, how it is scheduled and where it may run. Pure data."""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass
from typing import Any

from ktstr.errors import ConfigError
from ktstr.spec.topology import Topology


class WorkKind(enum.Enum):
    CPU_SPIN = "cpu_spin"  # pure CPU burn
    YIELD_HEAVY = "yield_heavy"  # sched_yield() after every short burst
    MIXED = "mixed"  # spin, yield and short sleeps interleaved
    IO_SYNC = "io_sync"  # small writes + fsync on tmpfs
    BURSTY = "bursty"  # burst_ms of spin, then sleep_ms
    PIPE_IO = "pipe_io"  # paired: ping-pong over pipes (wake latency)
    FUTEX_PINGPONG = "futex_pingpong"  # paired: ping-pong over a futex (wake latency)
    CACHE_PRESSURE = "cache_pressure"  # strided walks over size_kb
    FORK_EXIT = "fork_exit"  # fork + exit churn
    NICE_SWEEP = "nice_sweep"  # spin while cycling its own nice 0..19
    AFFINITY_CHURN = "affinity_churn"  # spin while re-pinning itself across its CPUs
    POLICY_CHURN = "policy_churn"  # spin while cycling normal/batch/idle
    MUTEX_CONTENTION = "mutex_contention"  # contenders fight over one lock
    SEQUENCE = "sequence"  # phases of other kinds
    CUSTOM = "custom"  # a user function "module:function"
    # -- guest/work_more.py (docs/scenarios.md has what each measures) --
    REQUEST_RESPONSE = "request_response"  # paired: schbench-style request, burst_ms of work, reply
    THUNDERING_HERD = "thundering_herd"  # worker 0 wakes all the others on one futex
    PRODUCER_CONSUMER = "producer_consumer"  # `producers` fill a bounded queue, the rest drain it
    THREAD_STORM = "thread_storm"  # create a thread, run burst_ms, join
    FORK_EXEC = "fork_exec"  # fork + exec /bin/true
    TIMER_PERIODIC = "timer_periodic"  # wake every period_ms on an absolute timer, burst_ms of work
    PI_LOCK = "pi_lock"  # lock convoy on a priority-inheriting futex, held burst_ms
    MEMORY_BW = "memory_bw"  # sequential copies over size_kb (bandwidth)
    PAGE_FAULTS = "page_faults"  # map, touch and unmap size_kb of anonymous memory
    INTERACTIVE = "interactive"  # burst_ms of work after sleep_ms, latency = lateness of wake
    DEADLINE = "deadline"  # SCHED_DEADLINE: burst_ms of work every period_ms


PAIRED = frozenset({WorkKind.PIPE_IO, WorkKind.FUTEX_PINGPONG, WorkKind.REQUEST_RESPONSE})
OPAQUE = frozenset({WorkKind.THREAD_STORM, WorkKind.FORK_EXEC, WorkKind.FORK_EXIT, WorkKind.CUSTOM})
#: Kinds whose workers of one cgroup share one resource (a lock, a queue, a futex).
CGROUP_SHARED = frozenset(
    {WorkKind.MUTEX_CONTENTION, WorkKind.THUNDERING_HERD, WorkKind.PRODUCER_CONSUMER,
     WorkKind.PI_LOCK}
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Work:
    """A work type and its parameters. Build with the class methods."""

    kind: WorkKind = WorkKind.CPU_SPIN
    burst_ms: float = 0.0
    sleep_ms: float = 0.0
    size_kb: int = 0
    stride: int = 0
    contenders: int = 0
    #: SEQUENCE: (work, seconds) phases, repeated until stopped.
    phases: tuple[tuple[Work, float], ...] = ()
    #: CUSTOM: "module:function", called as fn(ctx) -> None per iteration.
    function: str = ""
    #: TIMER_PERIODIC, DEADLINE, THUNDERING_HERD: the period of wake-ups.
    period_ms: float = 0.0
    #: PRODUCER_CONSUMER: how many of a cgroup's workers produce.
    producers: int = 0

    def __post_init__(self) -> None:
        if self.kind is WorkKind.BURSTY and not (
            math.isfinite(self.burst_ms + self.sleep_ms)
            and self.burst_ms > 0
            and self.sleep_ms >= 0
        ):
            raise ConfigError(
                f"Bursty needs burst_ms > 0 and sleep_ms >= 0, got {self.burst_ms}/{self.sleep_ms}"
            )
        if self.kind is WorkKind.CACHE_PRESSURE and (self.size_kb <= 0 or self.stride <= 0):
            raise ConfigError("CachePressure needs size_kb > 0 and stride > 0")
        if self.kind is WorkKind.MUTEX_CONTENTION and self.contenders < 2:
            raise ConfigError(f"MutexContention needs contenders >= 2, got {self.contenders}")
        if self.kind is WorkKind.SEQUENCE:
            if not self.phases or any(not (math.isfinite(s) and s > 0) for _, s in self.phases):
                raise ConfigError("Sequence needs phases with positive durations")
            if any(w.kind in PAIRED | {WorkKind.SEQUENCE} for w, _ in self.phases):
                raise ConfigError("Sequence phases cannot be paired kinds or sequences")
        periodic = (WorkKind.TIMER_PERIODIC, WorkKind.DEADLINE, WorkKind.THUNDERING_HERD)
        if self.kind in periodic and not (
            math.isfinite(self.period_ms) and 0 < self.burst_ms < self.period_ms
        ):
            raise ConfigError(
                f"{self.kind.value} needs 0 < burst_ms < period_ms, "
                f"got {self.burst_ms}/{self.period_ms}"
            )
        if self.kind in (WorkKind.INTERACTIVE, WorkKind.THREAD_STORM) and not (
            math.isfinite(self.burst_ms + self.sleep_ms)
            and self.burst_ms > 0
            and self.sleep_ms >= 0
        ):
            raise ConfigError(f"{self.kind.value} needs burst_ms > 0 and sleep_ms >= 0")
        if self.kind in (WorkKind.MEMORY_BW, WorkKind.PAGE_FAULTS) and self.size_kb <= 0:
            raise ConfigError(f"{self.kind.value} needs size_kb > 0")
        if self.kind is WorkKind.PRODUCER_CONSUMER and self.producers < 1:
            raise ConfigError(f"producer_consumer needs producers >= 1, got {self.producers}")
        if self.kind is WorkKind.CUSTOM and ":" not in self.function:
            raise ConfigError(f"Custom needs function='module:function', got {self.function!r}")

    @property
    def paired(self) -> bool:
        return self.kind in PAIRED

    def role(self, index: int) -> int:
        """Which part worker ``index`` plays (requester/server, producer/
        consumer, waker/waiter): workers of different roles differ by design."""
        if self.paired:
            return index % 2
        if self.kind is WorkKind.PRODUCER_CONSUMER:
            return int(index >= self.producers)
        if self.kind is WorkKind.THUNDERING_HERD:
            return int(index != 0)
        return 0

    def team(self, cgroup: str, index: int) -> str:
        """Who worker ``index`` of ``cgroup`` talks to: the two of a pair,
        or a producer/consumer cgroup's queue; "" for work that talks to
        no other worker."""
        if self.paired:
            return f"{cgroup}#{index // 2}"
        if self.kind is WorkKind.PRODUCER_CONSUMER:
            return cgroup
        return ""

    @property
    def opaque(self) -> bool:
        """Whether CPU it causes runs outside the worker's own task (threads,
        children, a user function), where its accounting cannot see it."""
        if self.kind is WorkKind.SEQUENCE:
            return any(w.opaque for w, _ in self.phases)
        return self.kind in OPAQUE

    @classmethod
    def spin(cls) -> Work:
        return cls(kind=WorkKind.CPU_SPIN)

    @classmethod
    def yield_heavy(cls) -> Work:
        return cls(kind=WorkKind.YIELD_HEAVY)

    @classmethod
    def mixed(cls) -> Work:
        return cls(kind=WorkKind.MIXED)

    @classmethod
    def io_sync(cls) -> Work:
        return cls(kind=WorkKind.IO_SYNC)

    @classmethod
    def bursty(cls, burst_ms: float = 5.0, sleep_ms: float = 5.0) -> Work:
        return cls(kind=WorkKind.BURSTY, burst_ms=burst_ms, sleep_ms=sleep_ms)

    @classmethod
    def pipe_io(cls) -> Work:
        return cls(kind=WorkKind.PIPE_IO)

    @classmethod
    def futex_pingpong(cls) -> Work:
        return cls(kind=WorkKind.FUTEX_PINGPONG)

    @classmethod
    def cache_pressure(cls, size_kb: int = 4096, stride: int = 64) -> Work:
        return cls(kind=WorkKind.CACHE_PRESSURE, size_kb=size_kb, stride=stride)

    @classmethod
    def fork_exit(cls) -> Work:
        return cls(kind=WorkKind.FORK_EXIT)

    @classmethod
    def nice_sweep(cls) -> Work:
        return cls(kind=WorkKind.NICE_SWEEP)

    @classmethod
    def affinity_churn(cls) -> Work:
        return cls(kind=WorkKind.AFFINITY_CHURN)

    @classmethod
    def policy_churn(cls) -> Work:
        return cls(kind=WorkKind.POLICY_CHURN)

    @classmethod
    def mutex_contention(cls, contenders: int = 4) -> Work:
        return cls(kind=WorkKind.MUTEX_CONTENTION, contenders=contenders)

    @classmethod
    def sequence(cls, *phases: tuple[Work, float]) -> Work:
        return cls(kind=WorkKind.SEQUENCE, phases=tuple(phases))

    @classmethod
    def custom(cls, function: str) -> Work:
        return cls(kind=WorkKind.CUSTOM, function=function)

    @classmethod
    def request_response(cls, work_ms: float = 0.2) -> Work:
        return cls(kind=WorkKind.REQUEST_RESPONSE, burst_ms=work_ms)

    @classmethod
    def thundering_herd(cls, period_ms: float = 10.0, work_ms: float = 0.1) -> Work:
        return cls(kind=WorkKind.THUNDERING_HERD, period_ms=period_ms, burst_ms=work_ms)

    @classmethod
    def producer_consumer(cls, producers: int = 1, work_ms: float = 0.05) -> Work:
        return cls(kind=WorkKind.PRODUCER_CONSUMER, producers=producers, burst_ms=work_ms)

    @classmethod
    def thread_storm(cls, run_ms: float = 0.5) -> Work:
        return cls(kind=WorkKind.THREAD_STORM, burst_ms=run_ms)

    @classmethod
    def fork_exec(cls) -> Work:
        return cls(kind=WorkKind.FORK_EXEC)

    @classmethod
    def timer_periodic(cls, period_ms: float = 5.0, work_ms: float = 0.5) -> Work:
        return cls(kind=WorkKind.TIMER_PERIODIC, period_ms=period_ms, burst_ms=work_ms)

    @classmethod
    def pi_lock(cls, hold_ms: float = 0.1) -> Work:
        return cls(kind=WorkKind.PI_LOCK, burst_ms=hold_ms)

    @classmethod
    def memory_bw(cls, size_kb: int = 16384) -> Work:
        return cls(kind=WorkKind.MEMORY_BW, size_kb=size_kb)

    @classmethod
    def page_faults(cls, size_kb: int = 1024) -> Work:
        return cls(kind=WorkKind.PAGE_FAULTS, size_kb=size_kb)

    @classmethod
    def interactive(cls, work_ms: float = 1.0, sleep_ms: float = 20.0) -> Work:
        return cls(kind=WorkKind.INTERACTIVE, burst_ms=work_ms, sleep_ms=sleep_ms)

    @classmethod
    def deadline(cls, runtime_ms: float = 2.0, period_ms: float = 10.0) -> Work:
        return cls(kind=WorkKind.DEADLINE, burst_ms=runtime_ms, period_ms=period_ms)


#: The kernel's sched_prio_to_weight, nice -20..19.
NICE_WEIGHT = (
    88761, 71755, 56483, 46273, 36291, 29154, 23254, 18705, 14949, 11916,
    9548, 7620, 6100, 4904, 3906, 3121, 2501, 1991, 1586, 1277,
    1024, 820, 655, 526, 423, 335, 272, 215, 172, 137,
    110, 87, 70, 56, 45, 36, 29, 23, 18, 15,
)  # fmt: skip
IDLE_WEIGHT = 3  # SCHED_IDLE's load weight


def nice_weight(nice: int) -> int:
    return NICE_WEIGHT[max(-20, min(19, nice)) + 20]


class PolicyKind(enum.Enum):
    NORMAL = "normal"
    BATCH = "batch"
    IDLE = "idle"
    FIFO = "fifo"
    RR = "rr"


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedPolicy:
    """A worker's scheduling policy and priority."""

    kind: PolicyKind = PolicyKind.NORMAL
    priority: int = 0  # 1..99 for FIFO/RR, 0 otherwise

    def __post_init__(self) -> None:
        realtime = self.kind in (PolicyKind.FIFO, PolicyKind.RR)
        if realtime and not 1 <= self.priority <= 99:
            raise ConfigError(f"{self.kind.value} priority must be 1..99, got {self.priority}")
        if not realtime and self.priority != 0:
            raise ConfigError(f"{self.kind.value} takes no priority, got {self.priority}")

    @classmethod
    def fifo(cls, priority: int) -> SchedPolicy:
        return cls(kind=PolicyKind.FIFO, priority=priority)

    @classmethod
    def rr(cls, priority: int) -> SchedPolicy:
        return cls(kind=PolicyKind.RR, priority=priority)


NORMAL = SchedPolicy()
BATCH = SchedPolicy(kind=PolicyKind.BATCH)
IDLE = SchedPolicy(kind=PolicyKind.IDLE)


class AffinityMode(enum.Enum):
    INHERIT = "inherit"  # whatever the cgroup's cpuset allows
    RANDOM_SUBSET = "random_subset"  # `count` random CPUs of the cgroup's set
    LLC_ALIGNED = "llc_aligned"  # the CPUs of one LLC (spread over workers)
    CROSS_CGROUP = "cross_cgroup"  # every CPU, beyond the cgroup's cpuset
    SINGLE_CPU = "single_cpu"  # one CPU each, round-robin
    EXACT = "exact"  # exactly `cpus`


@dataclass(frozen=True, slots=True, kw_only=True)
class Affinity:
    """How a worker's CPUs are narrowed within its cpuset."""

    mode: AffinityMode = AffinityMode.INHERIT
    count: int = 0
    cpus: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.mode is AffinityMode.RANDOM_SUBSET and self.count < 1:
            raise ConfigError(f"random_subset affinity needs count >= 1, got {self.count}")
        if self.mode is AffinityMode.EXACT and not self.cpus:
            raise ConfigError("exact affinity needs cpus")

    def resolve(
        self, topo: Topology, allowed: tuple[int, ...], worker: int, seed: int = 0
    ) -> tuple[int, ...] | None:
        """CPUs worker ``worker`` is pinned to; None = no pinning."""
        mode = self.mode
        if mode is AffinityMode.INHERIT:
            return None
        if mode is AffinityMode.CROSS_CGROUP:
            return tuple(range(topo.cpus))
        if mode is AffinityMode.EXACT:
            bad = [c for c in self.cpus if c >= topo.cpus]
            if bad:
                raise ConfigError(
                    f"exact affinity CPUs {bad} do not exist in {topo} (CPUs 0-{topo.cpus - 1})"
                )
            return tuple(sorted(self.cpus))
        if mode is AffinityMode.SINGLE_CPU:
            return (allowed[worker % len(allowed)],)
        if mode is AffinityMode.RANDOM_SUBSET:
            if self.count > len(allowed):
                raise ConfigError(f"random_subset of {self.count} CPUs from only {len(allowed)}")
            rnd = random.Random(seed * 7919 + worker)
            return tuple(sorted(rnd.sample(allowed, self.count)))
        llcs = sorted({topo.llc_of(c) for c in allowed})
        llc = llcs[worker % len(llcs)]
        return tuple(c for c in allowed if topo.llc_of(c) == llc)


INHERIT = Affinity()


def describe_work(work: Work) -> dict[str, Any]:
    """The non-default parameters of ``work``, for reports."""
    out: dict[str, Any] = {"kind": work.kind.value}
    for key in ("burst_ms", "sleep_ms", "size_kb", "stride", "contenders", "function"):
        value = getattr(work, key)
        if value:
            out[key] = value
    return out
