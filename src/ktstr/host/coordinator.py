"""Coordinator: the host's reaction to the guest's frame stream. Pure.

``Coordinator.handle(frame, now)`` and ``Coordinator.tick(now)`` never do
I/O and never read a clock: they update ``RunState`` and return actions for
the caller (``runner.py``) to perform. The guest may be buggy or hostile, so
every control decision requires a CRC-valid, well-formed frame.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field

from ktstr.protocol.frames import Frame
from ktstr.protocol.messages import (
    HOST_TO_GUEST,
    TEXT_KINDS,
    Exit,
    Lifecycle,
    MessageKind,
    PayloadError,
    ScenarioEnd,
    ScenarioStart,
    SchedExit,
    SnapshotRequest,
)

log = logging.getLogger(__name__)


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
    KILL_GRACE = "kill_grace"  # the scheduler died; the guest's time to report is up


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
class Expired:
    kind: TimeoutKind
    message: str


@dataclass(frozen=True, slots=True)
class Exited:
    code: int


Action = Ready | Kill | Capture | Expired | Exited


@dataclass(frozen=True, slots=True)
class Entry:
    """A verdict-bearing frame kept for consumers, with its CRC flag."""

    kind: MessageKind
    payload: bytes
    crc_ok: bool
    at: float


@dataclass(slots=True)
class RunState:
    phase: Phase = Phase.BOOT
    deadline: float = 0.0
    ready_at: float | None = None
    workload_start: float | None = None
    workload_duration: float = 0.0
    paused_at: float | None = None
    paused_total: float = 0.0
    killed: bool = False
    sched_exit: SchedExit | None = None
    scheduler_loaded: bool = False
    exit_code: int | None = None
    snapshots: list[SnapshotRequest] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    unknown_kinds: set[int] = field(default_factory=set)
    dropped: int = 0
    periodic_fired: int = 0
    expired: Expired | None = None


@dataclass(slots=True)
class Coordinator:
    """Watchdog timings are in seconds of the injected clock."""

    started: float
    boot_timeout: float = 120.0
    #: How long a ready guest may take before starting its workload or exiting.
    idle_timeout: float = 120.0
    #: Slack after the declared workload duration before it counts as a stall.
    workload_grace: float = 30.0
    #: Longest a guest may stay paused before that is a hang.
    max_pause: float = 300.0
    #: After the scheduler dies, how long the guest may still send its dump
    #: and results before the host ends the run.
    kill_grace: float = 10.0
    num_snapshots: int = 0
    state: RunState = field(default_factory=RunState)

    def __post_init__(self) -> None:
        self.state.deadline = self.started + self.boot_timeout

    # -- frames ---------------------------------------------------------------
    def handle(self, frame: Frame, now: float) -> list[Action]:
        st = self.state
        if frame.kind & HOST_TO_GUEST:
            st.dropped += 1  # a guest must not speak host->guest kinds
            return []
        try:
            kind = MessageKind(frame.kind)
        except ValueError:
            if frame.kind not in st.unknown_kinds:
                st.unknown_kinds.add(frame.kind)
                log.warning("dropping frames of unknown kind %d", frame.kind)
            st.dropped += 1
            return []
        handler = _HANDLERS.get(kind)
        if handler is not None:
            return handler(self, frame, now)
        st.entries.append(Entry(kind, frame.payload, frame.crc_ok, now))
        return []

    def _sys_ready(self, frame: Frame, now: float) -> list[Action]:
        st = self.state
        if not frame.crc_ok or frame.payload or st.ready_at is not None:
            st.dropped += 1
            return []
        st.ready_at = now
        st.phase = Phase.READY
        st.deadline = now + self.idle_timeout
        return [Ready()]

    def _sched_exit(self, frame: Frame, now: float) -> list[Action]:
        st = self.state
        if not frame.crc_ok:
            st.dropped += 1  # a torn SchedExit neither ends the run nor is evidence
            return []
        try:
            msg = SchedExit.from_bytes(frame.payload)
        except PayloadError:
            st.dropped += 1
            return []
        st.entries.append(Entry(MessageKind.SCHED_EXIT, frame.payload, True, now))
        if st.killed:
            return []
        st.killed = True
        st.sched_exit = msg
        st.deadline = min(st.deadline, now + self.kill_grace)
        return [Kill(msg)]

    def _snapshot_request(self, frame: Frame, now: float) -> list[Action]:
        if not frame.crc_ok:
            self.state.dropped += 1
            return []
        try:
            req = SnapshotRequest.from_bytes(frame.payload)
        except PayloadError:
            self.state.dropped += 1
            return []
        self.state.snapshots.append(req)
        return [Capture(request=req)]

    def _scenario_start(self, frame: Frame, now: float) -> list[Action]:
        st = self.state
        st.entries.append(Entry(MessageKind.SCENARIO_START, frame.payload, frame.crc_ok, now))
        if not frame.crc_ok or st.workload_start is not None:
            return []
        try:
            msg = ScenarioStart.from_bytes(frame.payload)
        except PayloadError:
            return []
        st.workload_start = now
        st.workload_duration = max(0.0, float(msg.duration_s))
        st.phase = Phase.WORKLOAD
        st.deadline = now + st.workload_duration + self.workload_grace
        return []

    def _scenario_end(self, frame: Frame, now: float) -> list[Action]:
        st = self.state
        st.entries.append(Entry(MessageKind.SCENARIO_END, frame.payload, frame.crc_ok, now))
        if not frame.crc_ok:
            return []
        try:
            grace = float(ScenarioEnd.from_bytes(frame.payload).grace_s)
        except (PayloadError, TypeError, ValueError):
            return []
        st.phase = Phase.ENDED
        st.deadline = now + max(0.0, min(grace, self.idle_timeout))
        return []

    def _pause(self, frame: Frame, now: float) -> list[Action]:
        st = self.state
        if frame.crc_ok and st.paused_at is None:
            st.paused_at = now
        return []

    def _resume(self, frame: Frame, now: float) -> list[Action]:
        st = self.state
        if frame.crc_ok and st.paused_at is not None:
            paused = now - st.paused_at
            st.paused_total += paused
            st.deadline += paused
            st.paused_at = None
        return []

    def _lifecycle(self, frame: Frame, now: float) -> list[Action]:
        st = self.state
        st.entries.append(Entry(MessageKind.LIFECYCLE, frame.payload, frame.crc_ok, now))
        if frame.crc_ok:
            try:
                phase = Lifecycle.from_bytes(frame.payload).phase
            except PayloadError:
                return []
            if phase == "scheduler_attached":
                st.scheduler_loaded = True
            elif phase == "scheduler_stopped":
                st.scheduler_loaded = False
        return []

    def _exit(self, frame: Frame, now: float) -> list[Action]:
        st = self.state
        st.entries.append(Entry(MessageKind.EXIT, frame.payload, frame.crc_ok, now))
        if not frame.crc_ok or st.exit_code is not None:
            return []
        try:
            code = int(Exit.from_bytes(frame.payload).code)
        except (PayloadError, TypeError, ValueError):
            return []
        st.exit_code = code
        st.phase = Phase.EXITED
        return [Exited(code)]

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
        10 %..90 % of the workload window."""
        n, dur = self.num_snapshots, self.state.workload_duration
        if n <= 0 or dur <= 0:
            return []
        if n == 1:
            return [0.5 * dur]
        return [dur * (0.1 + 0.8 * i / (n - 1)) for i in range(n)]

    def next_wakeup(self, now: float) -> float:
        """Seconds until tick() may have something to do."""
        st = self.state
        if st.phase is Phase.EXITED or st.expired is not None:
            return 1.0
        limit = st.deadline
        if st.paused_at is not None:
            limit = st.paused_at + self.max_pause
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
        if st.paused_at is not None and now - st.paused_at > self.max_pause:
            st.expired = Expired(
                TimeoutKind.GUEST_HANG, f"guest stayed paused for over {self.max_pause:.0f}s"
            )
        elif st.paused_at is None and now > st.deadline:
            st.expired = self._classify(now)
        if st.expired is not None:
            out.append(st.expired)
        return out

    def _classify(self, now: float) -> Expired:
        st = self.state
        if st.killed and st.sched_exit is not None:
            return Expired(
                TimeoutKind.KILL_GRACE,
                f"scheduler exited ({st.sched_exit.exit_kind}: {st.sched_exit.reason}); run ended",
            )
        if st.phase is Phase.BOOT:
            return Expired(
                TimeoutKind.BOOT_TIMEOUT,
                f"guest not ready {now - self.started:.1f}s after launch "
                f"(boot timeout {self.boot_timeout:.0f}s)",
            )
        if st.phase is Phase.WORKLOAD and st.scheduler_loaded:
            return Expired(
                TimeoutKind.SCHEDULER_STALL,
                f"workload overran its {st.workload_duration:.1f}s by more than "
                f"{self.workload_grace:.0f}s under the scheduler",
            )
        return Expired(TimeoutKind.GUEST_HANG, f"guest made no progress in phase {st.phase.value}")


_HANDLERS = {
    MessageKind.SYS_READY: Coordinator._sys_ready,
    MessageKind.SCHED_EXIT: Coordinator._sched_exit,
    MessageKind.SNAPSHOT_REQUEST: Coordinator._snapshot_request,
    MessageKind.SCENARIO_START: Coordinator._scenario_start,
    MessageKind.SCENARIO_END: Coordinator._scenario_end,
    MessageKind.SCENARIO_PAUSE: Coordinator._pause,
    MessageKind.SCENARIO_RESUME: Coordinator._resume,
    MessageKind.LIFECYCLE: Coordinator._lifecycle,
    MessageKind.EXIT: Coordinator._exit,
}

__all__ = ["TEXT_KINDS", "Action", "Coordinator", "Entry", "Phase", "RunState", "TimeoutKind"]
