"""Message kinds and their typed payloads. Stdlib only; used by both sides.

Payload encodings (documented in docs/protocol.md):

* empty: SysReady.
* raw UTF-8 text chunks: Stdout, Stderr, SchedLog, Dmesg.
* fixed binary structs: SnapshotRequest (``<QI``: request id, capture kind)
  and SnapshotReply (``<QI``: request id, status) so that a malformed request
  is detectable by size alone.
* JSON objects (UTF-8, keys as the dataclass fields) for everything else.
  Decoders ignore unknown keys, so adding a field is backward compatible;
  removing or retyping one bumps ``PROTOCOL_VERSION``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from ktstr.protocol.frames import encode_frame

#: Kinds with this bit set travel host -> guest only.
HOST_TO_GUEST = 0x8000


class MessageKind(enum.IntEnum):
    SYS_READY = 1
    KERN_ADDRS = 2
    SCENARIO_START = 3
    SCENARIO_PAUSE = 4
    SCENARIO_RESUME = 5
    SCENARIO_END = 6
    STIMULUS = 7
    WORKER_REPORTS = 8
    TEST_RESULT = 9
    PAYLOAD_METRICS = 10
    SCHED_EXIT = 11
    CRASH = 12
    STDOUT = 13
    STDERR = 14
    SCHED_LOG = 15
    DMESG = 16
    LIFECYCLE = 17
    EXIT = 18
    SNAPSHOT_REQUEST = 19
    SNAPSHOT_REPLY = HOST_TO_GUEST | 1

    @property
    def host_to_guest(self) -> bool:
        return bool(self.value & HOST_TO_GUEST)


TEXT_KINDS = frozenset(
    {MessageKind.STDOUT, MessageKind.STDERR, MessageKind.SCHED_LOG, MessageKind.DMESG}
)


class CaptureKind(enum.IntEnum):
    """What a snapshot captures."""

    REGISTERS = 1  # vCPU registers + timestamp
    MEMORY = 2  # guest kernel state via drgn (inspect/)


SNAPSHOT = struct.Struct("<QI")


class PayloadError(ValueError):
    """A payload that does not match its kind's schema."""


# -- JSON payloads ------------------------------------------------------------

T = TypeVar("T", bound="JsonPayload")


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonPayload:
    KIND: ClassVar[MessageKind]

    def to_bytes(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls: type[T], data: bytes) -> T:
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PayloadError(f"{cls.KIND.name}: payload is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise PayloadError(f"{cls.KIND.name}: payload is not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in obj.items() if k in names})
        except TypeError as exc:
            raise PayloadError(f"{cls.KIND.name}: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class KernAddrs(JsonPayload):
    """Guest kernel addresses the host needs to inspect guest memory."""

    KIND = MessageKind.KERN_ADDRS
    kaslr_offset: int = 0
    phys_base: int = 0
    symbols: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioStart(JsonPayload):
    KIND = MessageKind.SCENARIO_START
    name: str = ""
    duration_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioPause(JsonPayload):
    KIND = MessageKind.SCENARIO_PAUSE
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioResume(JsonPayload):
    KIND = MessageKind.SCENARIO_RESUME


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioEnd(JsonPayload):
    KIND = MessageKind.SCENARIO_END
    name: str = ""
    #: Time the guest still needs after the workload (teardown, reports).
    grace_s: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Stimulus(JsonPayload):
    """A timestamped scenario event (cgroup created, cpuset changed, ...)."""

    KIND = MessageKind.STIMULUS
    t_ms: float = 0.0
    op: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerReports(JsonPayload):
    KIND = MessageKind.WORKER_REPORTS
    cgroup: str = ""
    reports: list[dict[str, Any]] = field(default_factory=list)
    #: Union of the cpusets the cgroup was ever given; None = unrestricted.
    cpus: list[int] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TestResult(JsonPayload):
    KIND = MessageKind.TEST_RESULT
    name: str = ""
    passed: bool = False
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class PayloadMetrics(JsonPayload):
    """Metrics from a real payload (schbench, stress-ng, ...)."""

    KIND = MessageKind.PAYLOAD_METRICS
    payload: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedExit(JsonPayload):
    """The scheduler under test left: exit kind, reason, and its dump."""

    KIND = MessageKind.SCHED_EXIT
    exit_kind: str = ""
    reason: str = ""
    dump: str = ""
    returncode: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Crash(JsonPayload):
    """An exception in the guest agent."""

    KIND = MessageKind.CRASH
    error: str = ""
    traceback: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Lifecycle(JsonPayload):
    """Agent phase changes (mounted, scheduler attached, ...), for the log."""

    KIND = MessageKind.LIFECYCLE
    phase: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Exit(JsonPayload):
    KIND = MessageKind.EXIT
    code: int = 0


JSON_TYPES: dict[MessageKind, type[JsonPayload]] = {
    t.KIND: t
    for t in (
        KernAddrs,
        ScenarioStart,
        ScenarioPause,
        ScenarioResume,
        ScenarioEnd,
        Stimulus,
        WorkerReports,
        TestResult,
        PayloadMetrics,
        SchedExit,
        Crash,
        Lifecycle,
        Exit,
    )
}


# -- binary payloads ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotRequest:
    """Guest asks the host to freeze it and capture state."""

    KIND: ClassVar[MessageKind] = MessageKind.SNAPSHOT_REQUEST
    request_id: int
    capture: int

    def to_bytes(self) -> bytes:
        return SNAPSHOT.pack(self.request_id, self.capture)

    @classmethod
    def from_bytes(cls, data: bytes) -> SnapshotRequest:
        """Strict: exact size, non-zero id, known capture kind."""
        if len(data) != SNAPSHOT.size:
            raise PayloadError(
                f"SNAPSHOT_REQUEST: payload is {len(data)} bytes, expected {SNAPSHOT.size}"
            )
        rid, cap = SNAPSHOT.unpack(data)
        if rid == 0:
            raise PayloadError("SNAPSHOT_REQUEST: request id 0 is reserved")
        if cap not in CaptureKind._value2member_map_:
            raise PayloadError(f"SNAPSHOT_REQUEST: unknown capture kind {cap}")
        return cls(request_id=rid, capture=cap)


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotReply:
    KIND: ClassVar[MessageKind] = MessageKind.SNAPSHOT_REPLY
    request_id: int
    status: int = 0  # 0 = captured, else an errno-like failure code

    def to_bytes(self) -> bytes:
        return SNAPSHOT.pack(self.request_id, self.status)

    @classmethod
    def from_bytes(cls, data: bytes) -> SnapshotReply:
        if len(data) != SNAPSHOT.size:
            raise PayloadError(f"SNAPSHOT_REPLY: payload is {len(data)} bytes")
        rid, status = SNAPSHOT.unpack(data)
        return cls(request_id=rid, status=status)


Message = JsonPayload | SnapshotRequest | SnapshotReply


class Encoder:
    """Sender side: numbers frames and encodes typed messages."""

    def __init__(self) -> None:
        self.seq = 0

    def _next(self, kind: int, payload: bytes) -> bytes:
        self.seq += 1
        return encode_frame(kind, payload, self.seq)

    def message(self, msg: Message) -> bytes:
        return self._next(msg.KIND, msg.to_bytes())

    def sys_ready(self) -> bytes:
        return self._next(MessageKind.SYS_READY, b"")

    def text(self, kind: MessageKind, text: str | bytes) -> bytes:
        if kind not in TEXT_KINDS:
            raise ValueError(f"{kind.name} is not a text kind")
        data = text.encode("utf-8", "replace") if isinstance(text, str) else text
        return self._next(kind, data)


def decode_payload(kind: int, payload: bytes) -> Message | str | None:
    """Typed view of a payload: a dataclass, text for text kinds, None for
    SysReady. Raises PayloadError for malformed payloads and unknown kinds."""
    try:
        mk = MessageKind(kind)
    except ValueError:
        raise PayloadError(f"unknown message kind {kind}") from None
    if mk is MessageKind.SYS_READY:
        if payload:
            raise PayloadError("SYS_READY must have an empty payload")
        return None
    if mk in TEXT_KINDS:
        return payload.decode("utf-8", "replace")
    if mk is MessageKind.SNAPSHOT_REQUEST:
        return SnapshotRequest.from_bytes(payload)
    if mk is MessageKind.SNAPSHOT_REPLY:
        return SnapshotReply.from_bytes(payload)
    return JSON_TYPES[mk].from_bytes(payload)
