"""What one monitor tick saw: plain data, no drgn (evaluate/ judges it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Task:
    pid: int
    comm: str
    cpu: int  # whose run queue it is on
    wait_ms: float  # runnable and not running, for this long (sched_ext's runnable_at)
    dsq: int | None = None  # id of the dispatch queue it sits in, if any
    allowed: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class CpuState:
    nr_running: int
    scx_nr_running: int
    local_dsq: int
    clock: int  # rq->clock, ns
    curr_pid: int
    curr_comm: str
    curr_class: str
    idle: bool


@dataclass(frozen=True, slots=True)
class ScxState:
    enable_state: str = ""
    ops: str = ""
    bypass_depth: int = 0
    exit_kind: str = ""
    dsqs: dict[int, int] = field(default_factory=dict)  # global and user DSQ id -> depth
    events: dict[str, int] = field(default_factory=dict)  # 7.x event counters, summed


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # seconds since the VM was launched (host clock)
    jiffies: int
    cpus: tuple[CpuState, ...]
    scx: ScxState
    #: The longest-waiting runnable tasks (heads of each CPU's runnable list).
    waiting: tuple[Task, ...] = ()
