"""Message kinds and their typed payloads. Stdlib only; used by both sides.

Payload encodings (documented in docs/protocol.md):

* empty: SysReady.
* raw UTF-8 text chunks: Stdout, Stderr, SchedLog, Dmesg.
* fixed binary structs: SnapshotRequest (``<QI``: request id, capture kind,
  then a name of up to 64 bytes) and HostReply (``<QI``: request id,
  status; it answers snapshot and BPF write requests alike) so that a
  malformed request is detectable by size alone.
* JSON objects (UTF-8, keys as the dataclass fields) for everything else.
  Field metadata carries the bounds the host enforces (``validate.py``).
  Both ends run the same package: a changed field bumps ``PROTOCOL_VERSION``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar

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
    BPF_WRITE = 20
    HOST_REPLY = HOST_TO_GUEST | 1

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
#: Snapshot names and BPF variable paths: what a file name and a C
#: identifier path may hold, so either is safe to print and to store.
NAME_MAX = 64
NAME_RE = re.compile(r"[A-Za-z0-9_.:-]*")
VAR_MAX = 128
VAR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*|\[[0-9]{1,6}\])*")


class PayloadError(ValueError):
    """A payload that does not match its kind's schema."""


#: Free-form JSON fields (``detail``, ``data``, ``plan``): any JSON value
#: within the bounds ``validate.py`` enforces on the host.
JsonValue = Any

_U64 = 2**64 - 1
_BIG = 1e12  # bound on counters, times and rates: finite, with room to spare


def _f(default: Any = dataclasses.MISSING, **meta: Any) -> Any:
    """A field with validation bounds (``max_len``, ``lo``, ``hi``) in its metadata."""
    if isinstance(default, list | dict):
        factory = type(default)
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# -- JSON payloads ------------------------------------------------------------


def _fields(o: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
    raise TypeError(f"{type(o).__name__} is not JSON")


def to_json(o: Any) -> str:
    """``o`` (dataclasses, nested) as compact JSON, as ``dataclasses.asdict``
    would give it but without its deep copy: the C encoder walks the lists
    (a worker report's 5000 latencies cost a quarter of the time)."""
    return json.dumps(o, default=_fields, separators=(",", ":"))


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonPayload:
    """Encoding only: the host decodes through ``validate.decode_payload``."""

    KIND: ClassVar[MessageKind]

    def to_bytes(self) -> bytes:
        return to_json(self).encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class KernAddrs(JsonPayload):
    """Where the guest kernel lives: what host-side inspection needs."""

    KIND = MessageKind.KERN_ADDRS
    #: Guest physical address and size of the vmcoreinfo note; the host reads
    #: the note itself (KERNELOFFSET, phys_base, ...) and checks it.
    vmcoreinfo_phys: int = _f(lo=0, hi=_U64)
    vmcoreinfo_size: int = _f(lo=0, hi=1 << 20)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioStart(JsonPayload):
    """A scenario begins. ``plan`` is the resolved Plan the agent runs (the
    host checks it against its own; the watchdog duration is the host's)."""

    KIND = MessageKind.SCENARIO_START
    name: str = _f(max_len=256)
    plan: JsonValue = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioPause(JsonPayload):
    """The agent paused the scenario's workload (a snapshot, a host request)."""

    KIND = MessageKind.SCENARIO_PAUSE
    reason: str = _f("", max_len=256)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioResume(JsonPayload):
    """The paused workload runs again."""

    KIND = MessageKind.SCENARIO_RESUME


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioEnd(JsonPayload):
    """Scenario ``name`` stopped its workers; their reports follow."""

    KIND = MessageKind.SCENARIO_END
    name: str = _f(max_len=256)


@dataclass(frozen=True, slots=True, kw_only=True)
class Stimulus(JsonPayload):
    """A timestamped scenario event (cgroup created, cpuset changed, ...)."""

    KIND = MessageKind.STIMULUS
    t_ms: float = _f(lo=0, hi=_BIG)
    op: str = _f(max_len=64)
    detail: JsonValue = _f({})


@dataclass(frozen=True, slots=True, kw_only=True)
class BpfWrite(JsonPayload):
    """Guest asks the host to write ``value`` into the scheduler's BPF global
    ``var`` (a name or a path: ``qa.test_error_cnt``); answered by HostReply."""

    KIND = MessageKind.BPF_WRITE
    request_id: int = _f(lo=1, hi=_U64)
    var: str = _f(max_len=VAR_MAX)
    value: int = _f(lo=-(2**63), hi=_U64)

    def __post_init__(self) -> None:
        if not VAR_RE.fullmatch(self.var):
            raise PayloadError(f"BPF_WRITE: var {self.var[:80]!r} is not a C name or path")


#: Most wake-latency samples a worker report carries (a reservoir).
MAX_LAT_SAMPLES = 20000
#: Highest CPU id a report may name (NR_CPUS is at most 8192 on x86).
MAX_CPU = 8191


#: Distinct (waker's CPU, woken CPU) pairs a worker reports.
MAX_WAKE_PLACES = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class WakePlace:
    """``count`` wake-ups by a partner running on ``waker_cpu`` that this
    worker then ran on ``cpu`` (seen right after it woke)."""

    waker_cpu: int = _f(lo=0, hi=MAX_CPU)
    cpu: int = _f(lo=0, hi=MAX_CPU)
    count: int = _f(lo=1, hi=2**62)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerReport:
    """One worker's telemetry. ``error`` set = the worker failed (its numbers
    are then zero). Identity is (``cgroup``, ``index``): the cgroup it was
    spawned in and its index there."""

    cgroup: str = _f(max_len=4096)
    index: int = _f(lo=0, hi=1 << 20)
    pid: int = _f(lo=0, hi=1 << 22)
    error: str | None = _f(None, max_len=4096)
    work: str = _f("", max_len=256)
    iterations: int = _f(0, lo=0, hi=2**62)
    work_units: int = _f(0, lo=0, hi=2**62)
    wall_s: float = _f(0.0, lo=0, hi=_BIG)
    cpu_s: float = _f(0.0, lo=0, hi=_BIG)
    max_gap_ms: float = _f(0.0, lo=0, hi=_BIG)
    max_gap_at_ms: float = _f(0.0, lo=0, hi=_BIG)
    max_gap_cpu: int = _f(-1, lo=-1, hi=MAX_CPU)
    cpus: list[int] = _f([], max_len=MAX_CPU + 1, lo=0, hi=MAX_CPU)
    migrations: int = _f(0, lo=0, hi=2**62)
    wake_lat_us: list[float] = _f([], max_len=MAX_LAT_SAMPLES, lo=0, hi=_BIG)
    wake_samples: int = _f(0, lo=0, hi=2**62)
    on_cpu_ms: float = _f(0.0, lo=0, hi=_BIG)
    run_delay_ms: float = _f(0.0, lo=0, hi=_BIG)
    timeslices: int = _f(0, lo=0, hi=2**62)
    native: bool = False
    #: NUMA node of the memory its work touches (memory_bw); -1 = none or unknown.
    mem_node: int = _f(-1, lo=-1, hi=1 << 10)
    #: Wake-ups by its partner (paired kinds), counted by where both ran.
    wake_places: list[WakePlace] = _f([], max_len=MAX_WAKE_PLACES)
    #: Wake-ups past MAX_WAKE_PLACES distinct places, or with a CPU unknown.
    wake_places_lost: int = _f(0, lo=0, hi=2**62)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerReports(JsonPayload):
    """Reports of workers of one cgroup (a scenario's reports may span frames)."""

    KIND = MessageKind.WORKER_REPORTS
    cgroup: str = _f(max_len=4096)
    reports: list[WorkerReport] = _f([], max_len=1024)


@dataclass(frozen=True, slots=True, kw_only=True)
class TestResult(JsonPayload):
    """The job's result. ``data`` is kind-specific (see ``RunSummary``)."""

    KIND = MessageKind.TEST_RESULT
    name: str = _f(max_len=256)
    passed: bool
    data: JsonValue = _f({})


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary:
    """``TestResult.data`` of scenario and test jobs: what the agent saw."""

    runs: int = _f(0, lo=0, hi=1 << 20)
    elapsed_s: float = _f(0.0, lo=0, hi=_BIG)
    leftover_cgroups: list[str] = _f([], max_len=1024)
    leftover_workers: int = _f(0, lo=0, hi=1 << 20)
    scheduler_died: bool = False


#: Output a payload result carries (characters): the tail of stdout and
#: stderr, and the whole report file (stress-ng's YAML, cyclictest's JSON).
PAYLOAD_OUT_MAX = 64 << 10
PAYLOAD_ERR_MAX = 16 << 10
PAYLOAD_REPORT_MAX = 256 << 10


@dataclass(frozen=True, slots=True, kw_only=True)
class PayloadMetrics(JsonPayload):
    """One payload run's result: how it ended and what it printed. The host
    derives the metrics (``evaluate/payloads.py``): the raw output is the
    evidence, and the parsers run on the trusted side."""

    KIND = MessageKind.PAYLOAD_METRICS
    payload: str = _f(max_len=64)  # its name in the plan
    cgroup: str = _f(max_len=4096)  # where it started
    index: int = _f(0, lo=0, hi=1 << 20)  # runs of a payload in that cgroup before it
    command: list[str] = _f([], max_len=80)
    exit_code: int | None = _f(None, lo=-255, hi=255)  # negative: killed by that signal
    #: It ended on its own (``exit``) or when the agent stopped it
    #: (``stopped``: SIGINT, then SIGKILL after a grace), or never started.
    ended: str = _f(max_len=16)
    duration_s: float = _f(0.0, lo=0, hi=_BIG)
    stdout: str = _f("", max_len=PAYLOAD_OUT_MAX)
    stderr: str = _f("", max_len=PAYLOAD_ERR_MAX)
    report: str = _f("", max_len=PAYLOAD_REPORT_MAX)
    error: str = _f("", max_len=4096)  # the agent could not run it


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedExit(JsonPayload):
    """The scheduler under test left: exit kind, reason, and its dump."""

    KIND = MessageKind.SCHED_EXIT
    exit_kind: str = _f(max_len=64)
    reason: str = _f("", max_len=4096)
    dump: str = _f("", max_len=1 << 18)
    returncode: int | None = _f(None, lo=-255, hi=255)


@dataclass(frozen=True, slots=True, kw_only=True)
class Crash(JsonPayload):
    """An exception in the guest agent."""

    KIND = MessageKind.CRASH
    error: str = _f(max_len=4096)
    traceback: str = _f("", max_len=1 << 16)


@dataclass(frozen=True, slots=True, kw_only=True)
class Lifecycle(JsonPayload):
    """Agent phase changes (mounted, scheduler attached, ...), for the log."""

    KIND = MessageKind.LIFECYCLE
    phase: str = _f(max_len=64)
    detail: JsonValue = _f({})


@dataclass(frozen=True, slots=True, kw_only=True)
class Exit(JsonPayload):
    """The agent's exit status (a shell-style 0..255); it powers off next."""

    KIND = MessageKind.EXIT
    code: int = _f(lo=0, hi=255)


JSON_TYPES: dict[MessageKind, type[JsonPayload]] = {
    t.KIND: t
    for t in (
        KernAddrs,
        BpfWrite,
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
    """Guest asks the host to freeze it and capture state, under ``name``."""

    KIND: ClassVar[MessageKind] = MessageKind.SNAPSHOT_REQUEST
    request_id: int
    capture: int
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.name) > NAME_MAX or not NAME_RE.fullmatch(self.name):
            raise PayloadError(
                f"SNAPSHOT_REQUEST: name {self.name[:80]!r} is not 0-{NAME_MAX} "
                "of A-Z a-z 0-9 _ . : -"
            )

    def to_bytes(self) -> bytes:
        return SNAPSHOT.pack(self.request_id, self.capture) + self.name.encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> SnapshotRequest:
        """Strict: the fixed part, non-zero id, known capture kind, a name
        of at most 64 printable bytes."""
        if not SNAPSHOT.size <= len(data) <= SNAPSHOT.size + NAME_MAX:
            raise PayloadError(
                f"SNAPSHOT_REQUEST: payload is {len(data)} bytes, expected "
                f"{SNAPSHOT.size}..{SNAPSHOT.size + NAME_MAX}"
            )
        rid, cap = SNAPSHOT.unpack_from(data)
        if rid == 0:
            raise PayloadError("SNAPSHOT_REQUEST: request id 0 is reserved")
        if cap not in CaptureKind._value2member_map_:
            raise PayloadError(f"SNAPSHOT_REQUEST: unknown capture kind {cap}")
        name = data[SNAPSHOT.size :].decode("ascii", "replace")
        return cls(request_id=rid, capture=cap, name=name)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostReply:
    """The host's answer to a guest request (a snapshot, a BPF write)."""

    KIND: ClassVar[MessageKind] = MessageKind.HOST_REPLY
    request_id: int
    status: int = 0  # 0 = captured, else an errno-like failure code

    def to_bytes(self) -> bytes:
        return SNAPSHOT.pack(self.request_id, self.status)

    @classmethod
    def from_bytes(cls, data: bytes) -> HostReply:
        if len(data) != SNAPSHOT.size:
            raise PayloadError(f"HOST_REPLY: payload is {len(data)} bytes")
        rid, status = SNAPSHOT.unpack(data)
        return cls(request_id=rid, status=status)


Message = JsonPayload | SnapshotRequest | HostReply


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
