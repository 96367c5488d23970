"""Coordinator: the host's reaction to the guest's frame stream. Pure.

``Coordinator.handle(item, now)`` and ``Coordinator.tick(now)`` never do I/O
and never read a clock: they update ``RunState`` and return actions for the
caller (``runner``) to perform. ``item`` is what ``protocol.evidence``
decoded: only CRC-valid, well-formed frames reach here.

The watchdog belongs to the host. Durations and graces come from its plan
(``Watch``), never from a payload: every ScenarioStart sets the deadline to
now + the host's scenario duration + grace, ScenarioEnd to now + the
teardown grace, a pause holds it and the matching resume extends it by the
paused time. ``Watch.hard_cap`` is absolute from launch and nothing extends
it. A SchedExit ends the run at once.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ktstr.protocol.messages import (
    BpfWrite,
    Exit,
    Lifecycle,
    MessageKind,
    SchedExit,
    SnapshotRequest,
)


class Phase(enum.Enum):
    BOOT = "boot"
    READY = "ready"
    WORKLOAD = "workload"
    ENDED = "ended"
    EXITED = "exited"


class TimeoutKind(enum.Enum):
    BOOT_TIMEOUT = "boot_timeout"  # never said SysReady
    GUEST_HANG = "guest_hang"  # ready, but stopped making progress
    SCHEDULER_STALL = "scheduler_stall"  # workload overran under a loaded scheduler
    RUN_LIMIT = "run_limit"  # the absolute cap on the whole run


# -- actions ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    pass


@dataclass(frozen=True, slots=True)
class Kill:
    """End the run now: the scheduler under test died."""

    sched_exit: SchedExit


@dataclass(frozen=True, slots=True)
class Capture:
    """Freeze the guest and capture state. ``request`` is None for a
    periodic capture, whose index is ``periodic``."""

    request: SnapshotRequest | None = None
    periodic: int = -1


@dataclass(frozen=True, slots=True)
class Write:
    """Write a BPF global of the scheduler under test, then reply."""

    request: BpfWrite


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer a request without acting on it (``status`` is an errno)."""

    request: SnapshotRequest | BpfWrite
    status: int


@dataclass(frozen=True, slots=True)
class Expired:
    kind: TimeoutKind
    message: str


@dataclass(frozen=True, slots=True)
class Exited:
    code: int


Action = Ready | Kill | Capture | Write | Refuse | Expired | Exited


@dataclass(frozen=True, slots=True, kw_only=True)
class Watch:
    """The host's timing plan for one VM, in seconds."""

    boot_timeout: float = 120.0
    #: SysReady -> first ScenarioStart, or -> Exit for jobs without scenarios.
    ready_timeout: float = 300.0
    #: The host's planned length of one scenario (run: the plan's; test: the
    #: test's declared duration).
    scenario_s: float = 0.0
    #: Slack after a scenario's planned length before it counts as a stall.
    workload_grace: float = 30.0
    #: ScenarioEnd -> the next ScenarioStart or Exit (stop workers, reports).
    teardown_grace: float = 60.0
    #: Launch -> end of run, absolute; no frame extends it.
    hard_cap: float = float("inf")
    #: Longest a guest may stay paused before that is a hang.
    max_pause: float = 300.0


#: Snapshot requests the guest may make per run, and their spacing.
MAX_SNAPSHOT_REQUESTS = 64
MIN_SNAPSHOT_SPACING = 0.1
#: BPF writes the guest may ask for per run, and their spacing.
MAX_BPF_WRITES = 256
MIN_BPF_WRITE_SPACING = 0.01


@dataclass(slots=True)
class RunState:
    phase: Phase = Phase.BOOT
    deadline: float = 0.0
    ready_at: float | None = None
    workload_start: float | None = None
    scenarios: int = 0
    paused_at: float | None = None
    paused_total: float = 0.0
    killed: bool = False
    sched_exit: SchedExit | None = None
    scheduler_loaded: bool = False
    exit_code: int | None = None
    snapshots: list[SnapshotRequest] = field(default_factory=list)
    refused: int = 0
    last_snapshot: float | None = None
    writes: int = 0
    last_write: float | None = None
    periodic_fired: int = 0
    expired: Expired | None = None


@dataclass(slots=True)
class Coordinator:
    started: float
    watch: Watch = field(default_factory=Watch)
    num_snapshots: int = 0
    state: RunState = field(default_factory=RunState)

    def __post_init__(self) -> None:
        self.state.deadline = self.started + self.watch.boot_timeout

    # -- frames ---------------------------------------------------------------
    def handle(self, item: tuple[MessageKind, Any] | None, now: float) -> list[Action]:
        """React to one decoded frame (None: nothing usable arrived)."""
        if item is None or self.state.phase is Phase.EXITED:
            return []
        kind, msg = item
        handler = _HANDLERS.get(kind)
        return handler(self, msg, now) if handler is not None else []

    def _sys_ready(self, msg: None, now: float) -> list[Action]:
        st = self.state
        if st.ready_at is not None:
            return []
        st.ready_at = now
        st.phase = Phase.READY
        st.deadline = now + self.watch.ready_timeout
        return [Ready()]

    def _sched_exit(self, msg: SchedExit, now: float) -> list[Action]:
        st = self.state
        if st.killed:
            return []
        st.killed = True
        st.sched_exit = msg
        return [Kill(msg)]

    def _limited(self, done: int, last: float | None, now: float, most: int, gap: float) -> int:
        """The errno refusing a guest request over its limits, else 0."""
        status = errno.ENOSPC if done >= most else 0
        if not status and last is not None and now - last < gap:
            status = errno.EBUSY
        self.state.refused += bool(status)
        return status

    def _snapshot_request(self, msg: SnapshotRequest, now: float) -> list[Action]:
        st = self.state
        status = self._limited(
            len(st.snapshots), st.last_snapshot, now, MAX_SNAPSHOT_REQUESTS, MIN_SNAPSHOT_SPACING
        )
        if status:
            return [Refuse(msg, status)]
        st.last_snapshot = now
        st.snapshots.append(msg)
        return [Capture(request=msg)]

    def _bpf_write(self, msg: BpfWrite, now: float) -> list[Action]:
        st = self.state
        status = self._limited(st.writes, st.last_write, now, MAX_BPF_WRITES, MIN_BPF_WRITE_SPACING)
        if status:
            return [Refuse(msg, status)]
        st.last_write = now
        st.writes += 1
        return [Write(msg)]

    def _scenario_start(self, msg: object, now: float) -> list[Action]:
        st = self.state
        if st.workload_start is None:
            st.workload_start = now
        st.scenarios += 1
        st.phase = Phase.WORKLOAD
        st.paused_at = None
        st.deadline = now + self.watch.scenario_s + self.watch.workload_grace
        return []

    def _scenario_end(self, msg: object, now: float) -> list[Action]:
        st = self.state
        st.phase = Phase.ENDED
        st.paused_at = None
        st.deadline = now + self.watch.teardown_grace
        return []

    def _pause(self, msg: object, now: float) -> list[Action]:
        self.state.paused_at = now  # a later pause overwrites an earlier one
        return []

    def _resume(self, msg: object, now: float) -> list[Action]:
        st = self.state
        if st.paused_at is not None:
            paused = max(0.0, now - st.paused_at)
            st.paused_total += paused
            st.deadline += paused
            st.paused_at = None
        return []

    def _lifecycle(self, msg: Lifecycle, now: float) -> list[Action]:
        if msg.phase == "scheduler_attached":
            self.state.scheduler_loaded = True
        elif msg.phase == "scheduler_stopped":
            self.state.scheduler_loaded = False
        return []

    def _exit(self, msg: Exit, now: float) -> list[Action]:
        st = self.state
        st.exit_code = msg.code
        st.phase = Phase.EXITED
        return [Exited(msg.code)]

    # -- clock ----------------------------------------------------------------
    def workload_time(self, now: float) -> float:
        """Seconds of workload so far: wall time since the first ScenarioStart
        minus every pause (including one in progress). 0 before it."""
        st = self.state
        if st.workload_start is None:
            return 0.0
        paused = st.paused_total + (now - st.paused_at if st.paused_at is not None else 0.0)
        return max(0.0, now - st.workload_start - paused)

    def capture_points(self) -> list[float]:
        """Workload-time offsets of periodic captures: evenly spaced over
        10 %..90 % of the host's planned scenario length."""
        n, dur = self.num_snapshots, self.watch.scenario_s
        if n <= 0 or dur <= 0:
            return []
        if n == 1:
            return [0.5 * dur]
        return [dur * (0.1 + 0.8 * i / (n - 1)) for i in range(n)]

    def _limit(self) -> float:
        st = self.state
        hard = self.started + self.watch.hard_cap
        if st.paused_at is not None:
            return min(hard, st.paused_at + self.watch.max_pause)
        return min(hard, st.deadline)

    def next_wakeup(self, now: float) -> float:
        """Seconds until tick() may have something to do."""
        st = self.state
        if st.phase is Phase.EXITED or st.expired is not None:
            return 1.0
        limit = self._limit()
        points = self.capture_points()
        if (
            st.workload_start is not None
            and st.paused_at is None
            and st.periodic_fired < len(points)
        ):
            limit = min(limit, now + points[st.periodic_fired] - self.workload_time(now))
        return max(0.0, limit - now)

    def tick(self, now: float) -> list[Action]:
        st = self.state
        if st.phase is Phase.EXITED or st.expired is not None:
            return []
        out: list[Action] = []
        if st.paused_at is None:
            points = self.capture_points()
            wt = self.workload_time(now)
            while st.periodic_fired < len(points) and wt >= points[st.periodic_fired]:
                out.append(Capture(periodic=st.periodic_fired))
                st.periodic_fired += 1
        if now > self._limit():
            st.expired = self._classify(now)
            out.append(st.expired)
        return out

    def _classify(self, now: float) -> Expired:
        st, w = self.state, self.watch
        if now > self.started + w.hard_cap:
            return Expired(
                TimeoutKind.RUN_LIMIT,
                f"run exceeded its absolute limit of {w.hard_cap:.0f}s (phase {st.phase.value})",
            )
        if st.paused_at is not None:
            return Expired(
                TimeoutKind.GUEST_HANG, f"guest stayed paused for over {w.max_pause:.0f}s"
            )
        if st.phase is Phase.BOOT:
            return Expired(
                TimeoutKind.BOOT_TIMEOUT,
                f"guest not ready {now - self.started:.1f}s after launch "
                f"(boot timeout {w.boot_timeout:.0f}s)",
            )
        if st.phase is Phase.WORKLOAD and st.scheduler_loaded:
            return Expired(
                TimeoutKind.SCHEDULER_STALL,
                f"scenario {st.scenarios} overran its {w.scenario_s:g}s by more than "
                f"{w.workload_grace:.0f}s under the scheduler",
            )
        return Expired(TimeoutKind.GUEST_HANG, f"guest made no progress in phase {st.phase.value}")


_HANDLERS: dict[MessageKind, Callable[[Coordinator, Any, float], list[Action]]] = {
    MessageKind.SYS_READY: Coordinator._sys_ready,
    MessageKind.SCHED_EXIT: Coordinator._sched_exit,
    MessageKind.SNAPSHOT_REQUEST: Coordinator._snapshot_request,
    MessageKind.BPF_WRITE: Coordinator._bpf_write,
    MessageKind.SCENARIO_START: Coordinator._scenario_start,
    MessageKind.SCENARIO_END: Coordinator._scenario_end,
    MessageKind.SCENARIO_PAUSE: Coordinator._pause,
    MessageKind.SCENARIO_RESUME: Coordinator._resume,
    MessageKind.LIFECYCLE: Coordinator._lifecycle,
    MessageKind.EXIT: Coordinator._exit,
}

__all__ = [
    "Action",
    "Capture",
    "Coordinator",
    "Exited",
    "Expired",
    "Kill",
    "Phase",
    "Ready",
    "Refuse",
    "RunState",
    "TimeoutKind",
    "Watch",
    "Write",
]
