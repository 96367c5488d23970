"""What the host keeps of one guest stream. Stdlib only; pure.

``Collector.add(frame, at)`` decodes each frame once (``validate``) and keeps
the typed messages that verdicts and reports consume, in an ``Evidence``
record. It also records what went wrong on the way: malformed frames
(CRC-valid, but not their kind's schema, or out of order), torn frames,
frames after Exit, and evidence beyond its ``Budget``. Text is not kept: the
caller streams it to capped files; only a bounded tail of the scheduler's
output stays. Nothing here raises on guest input.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from ktstr.protocol.frames import Frame
from ktstr.protocol.messages import (
    TEXT_KINDS,
    BpfWrite,
    Crash,
    Exit,
    KernAddrs,
    Lifecycle,
    MessageKind,
    PayloadError,
    PayloadMetrics,
    ScenarioEnd,
    ScenarioStart,
    SchedExit,
    SnapshotRequest,
    Stimulus,
    TestResult,
    WorkerReport,
    WorkerReports,
)
from ktstr.protocol.validate import decode_payload

#: Kinds whose loss or damage can change a verdict.
VERDICT_KINDS = frozenset(MessageKind) - TEXT_KINDS - {MessageKind.HOST_REPLY}
#: Findings of one sort kept in detail (all are counted).
KEEP_DETAIL = 16
_OVER = "\0over budget"
#: Kinds whose kept payloads count against ``Budget.payload_bytes``.
_BUDGETED = frozenset(
    {MessageKind.WORKER_REPORTS, MessageKind.SCENARIO_START, MessageKind.PAYLOAD_METRICS}
)


@dataclass(frozen=True, slots=True)
class Budget:
    """Bounds on what one run may make the host keep."""

    payload_bytes: int = 64 << 20  # of kept JSON payloads
    reports: int = 1 << 16
    scenarios: int = 1024
    items: int = 10_000  # stimuli, lifecycle events, results, metrics (each)
    sched_tail: int = 64 << 10  # characters of scheduler output kept


@dataclass(frozen=True, slots=True)
class Damage:
    """A frame that could not be used: malformed, torn, or out of order."""

    kind: str
    seq: int
    at: float
    problem: str
    excerpt: str = ""


@dataclass(slots=True)
class ScenarioRecord:
    """One scenario as the host saw it: when, and what its workers reported."""

    start: ScenarioStart
    started_at: float
    ended_at: float | None = None
    reports: list[WorkerReport] = field(default_factory=list)
    stimuli: list[Stimulus] = field(default_factory=list)
    payloads: list[PayloadMetrics] = field(default_factory=list)


@dataclass(slots=True)
class Evidence:
    """Everything a run's frames told the host, typed."""

    ready_at: float | None = None
    kern_addrs: KernAddrs | None = None
    scenarios: list[ScenarioRecord] = field(default_factory=list)
    results: list[TestResult] = field(default_factory=list)
    lifecycle: list[tuple[float, Lifecycle]] = field(default_factory=list)
    pauses: list[tuple[str, float]] = field(default_factory=list)  # ("pause"|"resume", at)
    sched_exit: SchedExit | None = None
    sched_exit_at: float | None = None
    crash: Crash | None = None
    exit: Exit | None = None
    exit_at: float | None = None
    #: When the last worker reports arrived (host seconds since launch).
    reports_at: float | None = None
    snapshot_requests: int = 0
    bpf_writes: int = 0
    malformed: list[Damage] = field(default_factory=list)
    malformed_count: int = 0
    torn: list[Damage] = field(default_factory=list)
    torn_count: int = 0
    torn_text: int = 0
    after_exit: int = 0
    overflow: dict[str, int] = field(default_factory=dict)
    text_bytes: dict[str, int] = field(default_factory=dict)
    sched_tail: collections.deque[str] = field(default_factory=collections.deque)
    sched_tail_chars: int = 0
    kept_bytes: int = 0

    def sched_log_tail(self) -> str:
        return "".join(self.sched_tail)

    def phases(self) -> list[str]:
        return [lc.phase for _, lc in self.lifecycle]


def _excerpt(payload: bytes) -> str:
    return payload[:160].decode("utf-8", "replace")


def _kind_name(kind: int) -> str:
    try:
        return MessageKind(kind).name
    except ValueError:
        return f"kind {kind}"


@dataclass(slots=True)
class Collector:
    """Turns frames into Evidence within a byte and count budget."""

    budget: Budget = field(default_factory=Budget)
    evidence: Evidence = field(default_factory=Evidence)

    def add(self, frame: Frame, at: float) -> tuple[MessageKind, Any] | None:
        """Record one frame. Returns (kind, typed message or text or None
        for SysReady) for frames the coordinator may act on, else None."""
        ev = self.evidence
        if not frame.crc_ok:
            self._torn(frame, at)
            return None
        if ev.exit is not None:
            ev.after_exit += 1
        over = ev.kept_bytes + len(frame.payload) > self.budget.payload_bytes
        if frame.kind in _BUDGETED and over:  # before decoding: parsing costs too
            self._over("payload_bytes")
            return None
        try:
            msg = decode_payload(frame.kind, frame.payload)
        except PayloadError as exc:
            self.malformed(frame, at, str(exc))
            return None
        kind = MessageKind(frame.kind)
        if kind in TEXT_KINDS:
            assert isinstance(msg, str)
            self._text(kind, msg)
            return kind, msg
        problem = self._keep(kind, msg, frame, at)
        if problem == _OVER:
            return None
        if problem:
            self.malformed(frame, at, f"{kind.name}: {problem}")
            return None
        return kind, msg

    def malformed(self, frame: Frame, at: float, problem: str) -> None:
        ev = self.evidence
        ev.malformed_count += 1
        if len(ev.malformed) < KEEP_DETAIL:
            ev.malformed.append(
                Damage(_kind_name(frame.kind), frame.seq, at, problem, _excerpt(frame.payload))
            )

    def _torn(self, frame: Frame, at: float) -> None:
        ev = self.evidence
        if frame.kind in TEXT_KINDS:
            ev.torn_text += 1
            return
        ev.torn_count += 1
        if len(ev.torn) < KEEP_DETAIL:
            ev.torn.append(
                Damage(
                    _kind_name(frame.kind),
                    frame.seq,
                    at,
                    "payload CRC mismatch",
                    _excerpt(frame.payload),
                )
            )

    def _text(self, kind: MessageKind, text: str) -> None:
        ev = self.evidence
        ev.text_bytes[kind.name] = ev.text_bytes.get(kind.name, 0) + len(text)
        if kind is MessageKind.SCHED_LOG:
            ev.sched_tail.append(text[-self.budget.sched_tail :])
            ev.sched_tail_chars += len(ev.sched_tail[-1])
            while ev.sched_tail_chars > self.budget.sched_tail and len(ev.sched_tail) > 1:
                ev.sched_tail_chars -= len(ev.sched_tail.popleft())

    def _over(self, what: str) -> str:
        ev = self.evidence
        ev.overflow[what] = ev.overflow.get(what, 0) + 1
        return _OVER

    def _keep(self, kind: MessageKind, msg: Any, frame: Frame, at: float) -> str:
        """Store a well-formed message; returns a problem if it is out of order."""
        if kind in _BUDGETED:
            self.evidence.kept_bytes += len(frame.payload)
        handler = _KEEPERS.get(kind)
        return handler(self, msg, at) if handler is not None else ""

    def _ready(self, msg: None, at: float) -> str:
        if self.evidence.ready_at is not None:
            return "repeated"
        self.evidence.ready_at = at
        return ""

    def _kern_addrs(self, msg: KernAddrs, at: float) -> str:
        if self.evidence.kern_addrs is not None:
            return "repeated"
        self.evidence.kern_addrs = msg
        return ""

    def _scenario_start(self, msg: ScenarioStart, at: float) -> str:
        ev = self.evidence
        if ev.scenarios and ev.scenarios[-1].ended_at is None:
            return "a scenario started before the previous one ended"
        if len(ev.scenarios) >= self.budget.scenarios:
            return self._over("scenarios")
        ev.scenarios.append(ScenarioRecord(start=msg, started_at=at))
        return ""

    def _scenario_end(self, msg: ScenarioEnd, at: float) -> str:
        ev = self.evidence
        if not ev.scenarios or ev.scenarios[-1].ended_at is not None:
            return "no scenario is running"
        if ev.scenarios[-1].start.name != msg.name:
            return f"ends {msg.name!r} but {ev.scenarios[-1].start.name!r} is running"
        ev.scenarios[-1].ended_at = at
        return ""

    def _pause(self, msg: object, at: float) -> str:
        return self._listed("pauses", self.evidence.pauses, ("pause", at))

    def _resume(self, msg: object, at: float) -> str:
        return self._listed("pauses", self.evidence.pauses, ("resume", at))

    def _stimulus(self, msg: Stimulus, at: float) -> str:
        ev = self.evidence
        if not ev.scenarios or ev.scenarios[-1].ended_at is not None:
            return "outside a scenario"
        if len(ev.scenarios[-1].stimuli) >= self.budget.items:
            return self._over("stimuli")
        ev.scenarios[-1].stimuli.append(msg)
        return ""

    def _reports(self, msg: WorkerReports, at: float) -> str:
        ev = self.evidence
        if not ev.scenarios:
            return "worker reports before any scenario"
        bad = next((r for r in msg.reports if r.cgroup != msg.cgroup), None)
        if bad is not None:
            return f"report of cgroup {bad.cgroup!r} in a frame for {msg.cgroup!r}"
        total = sum(len(s.reports) for s in ev.scenarios)
        if total + len(msg.reports) > self.budget.reports:
            return self._over("reports")
        ev.scenarios[-1].reports.extend(msg.reports)
        ev.reports_at = at
        return ""

    def _listed(self, name: str, items: list[Any], value: Any) -> str:
        if len(items) >= self.budget.items:
            return self._over(name)
        items.append(value)
        return ""

    def _result(self, msg: TestResult, at: float) -> str:
        return self._listed("results", self.evidence.results, msg)

    def _payload(self, msg: PayloadMetrics, at: float) -> str:
        ev = self.evidence
        if not ev.scenarios:
            return "a payload result before any scenario"
        return self._listed("payloads", ev.scenarios[-1].payloads, msg)

    def _lifecycle(self, msg: Lifecycle, at: float) -> str:
        return self._listed("lifecycle", self.evidence.lifecycle, (at, msg))

    def _sched_exit(self, msg: SchedExit, at: float) -> str:
        ev = self.evidence
        if ev.sched_exit is None:
            ev.sched_exit, ev.sched_exit_at = msg, at
        return ""

    def _crash(self, msg: Crash, at: float) -> str:
        if self.evidence.crash is None:
            self.evidence.crash = msg
        return ""

    def _exit(self, msg: Exit, at: float) -> str:
        ev = self.evidence
        if ev.exit is not None:
            return "repeated"
        ev.exit, ev.exit_at = msg, at
        return ""

    def _snapshot(self, msg: SnapshotRequest, at: float) -> str:
        self.evidence.snapshot_requests += 1
        return ""

    def _bpf_write(self, msg: BpfWrite, at: float) -> str:
        self.evidence.bpf_writes += 1
        return ""


_KEEPERS: dict[MessageKind, Any] = {
    MessageKind.SYS_READY: Collector._ready,
    MessageKind.KERN_ADDRS: Collector._kern_addrs,
    MessageKind.SCENARIO_START: Collector._scenario_start,
    MessageKind.SCENARIO_END: Collector._scenario_end,
    MessageKind.SCENARIO_PAUSE: Collector._pause,
    MessageKind.SCENARIO_RESUME: Collector._resume,
    MessageKind.STIMULUS: Collector._stimulus,
    MessageKind.WORKER_REPORTS: Collector._reports,
    MessageKind.TEST_RESULT: Collector._result,
    MessageKind.PAYLOAD_METRICS: Collector._payload,
    MessageKind.LIFECYCLE: Collector._lifecycle,
    MessageKind.SCHED_EXIT: Collector._sched_exit,
    MessageKind.CRASH: Collector._crash,
    MessageKind.EXIT: Collector._exit,
    MessageKind.SNAPSHOT_REQUEST: Collector._snapshot,
    MessageKind.BPF_WRITE: Collector._bpf_write,
}
