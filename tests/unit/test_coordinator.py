"""The coordinator over the real decoding path: frames go through the
evidence collector (decoded once) and only what it accepts reaches the
coordinator. The watchdog's durations are the host's."""

import errno

import pytest

from ktstr.host.coordinator import (
    MAX_SNAPSHOT_REQUESTS,
    Capture,
    Coordinator,
    Exited,
    Expired,
    Kill,
    Phase,
    Ready,
    Refuse,
    TimeoutKind,
    Watch,
    Write,
)
from ktstr.protocol.evidence import Collector
from ktstr.protocol.frames import Frame
from ktstr.protocol.messages import (
    BpfWrite,
    Exit,
    HostReply,
    Lifecycle,
    MessageKind,
    ScenarioEnd,
    ScenarioPause,
    ScenarioResume,
    ScenarioStart,
    SchedExit,
    SnapshotRequest,
)

WATCH = Watch(
    boot_timeout=10.0, ready_timeout=20.0, scenario_s=10.0, workload_grace=5.0, teardown_grace=3.0
)


class Host:
    """A coordinator fed through a collector, as the runner does."""

    def __init__(self, **kw):
        kw.setdefault("watch", WATCH)
        self.c = Coordinator(started=0.0, **kw)
        self.col = Collector()

    def send(self, msg=None, now=1.0, *, kind=None, payload=b"", crc_ok=True):
        if msg is not None:
            kind, payload = msg.KIND, msg.to_bytes()
        item = self.col.add(Frame(int(kind), 1, payload, crc_ok), now)
        return self.c.handle(item, now)

    def ready(self, now=1.0):
        return self.send(kind=MessageKind.SYS_READY, now=now)

    def start(self, now, name="s"):
        return self.send(ScenarioStart(name=name, plan={}), now)

    def end(self, now, name="s"):
        return self.send(ScenarioEnd(name=name), now)

    @property
    def state(self):
        return self.c.state

    @property
    def evidence(self):
        return self.col.evidence


@pytest.fixture
def h():
    return Host()


def test_sched_exit_ends_the_run_at_once_and_only_once(h):
    msg = SchedExit(exit_kind="error", reason="runnable task stall")
    assert h.send(msg, 2.0) == [Kill(msg)]
    assert h.state.killed and h.state.sched_exit == msg
    assert h.send(msg, 3.0) == []  # a resent one does not kill twice


def test_torn_sched_exit_neither_kills_nor_becomes_evidence(h):
    torn = SchedExit(exit_kind="error", reason="forged")
    assert h.send(kind=torn.KIND, payload=torn.to_bytes(), crc_ok=False, now=2.0) == []
    assert not h.state.killed and h.evidence.sched_exit is None
    assert h.evidence.torn_count == 1


def test_malformed_sched_exit_is_a_finding_not_an_action(h):
    assert h.send(kind=MessageKind.SCHED_EXIT, payload=b"[1,2]", now=2.0) == []
    assert not h.state.killed
    assert h.evidence.malformed_count == 1 and "SCHED_EXIT" in h.evidence.malformed[0].problem


def test_sys_ready_fires_once(h):
    assert h.ready(1.0) == [Ready()]
    assert h.ready(2.0) == []
    assert h.state.ready_at == 1.0 and h.state.phase is Phase.READY
    assert h.evidence.malformed[0].problem == "SYS_READY: repeated"


def test_sys_ready_with_payload_or_bad_crc_is_ignored(h):
    assert h.send(kind=MessageKind.SYS_READY, payload=b"x") == []
    assert h.send(kind=MessageKind.SYS_READY, crc_ok=False) == []
    assert h.state.ready_at is None


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # empty
        SnapshotRequest(request_id=1, capture=1).to_bytes() + b"\x00",  # a NUL in the name
        SnapshotRequest(request_id=1, capture=1).to_bytes() + b"a" * 65,  # name too long
        SnapshotRequest(request_id=1, capture=1).to_bytes() + b"../etc",  # not a name
        b"\x01" * 11,  # short
        b"\x00" * 12,  # request id 0
        SnapshotRequest(request_id=5, capture=99).to_bytes(),  # unknown capture kind
    ],
)
def test_malformed_snapshot_requests_are_dropped(h, payload):
    assert h.send(kind=MessageKind.SNAPSHOT_REQUEST, payload=payload) == []
    assert h.state.snapshots == [] and h.evidence.malformed_count == 1


def test_snapshot_requests_are_rate_limited(h):
    req = SnapshotRequest(request_id=9, capture=1)
    assert h.send(req, 1.0) == [Capture(request=req)]
    assert h.send(req, 1.05) == [Refuse(req, errno.EBUSY)]  # < 100 ms apart
    for i in range(MAX_SNAPSHOT_REQUESTS - 1):
        assert h.send(req, 2.0 + i) == [Capture(request=req)]
    assert h.send(req, 1000.0) == [Refuse(req, errno.ENOSPC)]  # 64 per run
    assert len(h.state.snapshots) == MAX_SNAPSHOT_REQUESTS and h.state.refused == 2


def test_a_named_snapshot_request_keeps_its_name(h):
    req = SnapshotRequest(request_id=3, capture=2, name="after_burst:1")
    assert h.send(req, 1.0) == [Capture(request=req)]
    assert SnapshotRequest.from_bytes(req.to_bytes()).name == "after_burst:1"


def test_bpf_writes_are_checked_and_rate_limited(h):
    w = BpfWrite(request_id=4, var="qa.cpu_ctxs[2].dsp_cnt", value=1)
    assert h.send(w, 1.0) == [Write(w)]
    assert h.send(w, 1.001) == [Refuse(w, errno.EBUSY)]  # < 10 ms apart
    for bad in (
        b'{"request_id": 5, "var": "x; rm -rf", "value": 1}',
        b'{"request_id": 5, "var": "x", "value": 1e30}',
        b'{"request_id": 0, "var": "x", "value": 1}',
        b'{"request_id": 5, "var": "x", "value": 18446744073709551616}',
    ):
        assert h.send(kind=MessageKind.BPF_WRITE, payload=bad, now=3.0) == []
    assert h.evidence.malformed_count == 4 and h.state.writes == 1


def test_unknown_and_host_to_guest_kinds_are_malformed(h):
    assert h.send(kind=4242, payload=b"x") == []
    assert h.send(HostReply(request_id=1)) == []
    assert h.evidence.malformed_count == 2
    assert "unknown message kind 4242" in h.evidence.malformed[0].problem


def test_boot_timeout(h):
    assert h.c.tick(9.9) == []
    (exp,) = h.c.tick(10.1)
    assert isinstance(exp, Expired) and exp.kind is TimeoutKind.BOOT_TIMEOUT
    assert h.c.tick(11.0) == []  # reported once


def test_every_scenario_start_arms_the_hosts_duration(h):
    """Two scenarios in one VM: each gets the host's duration + grace."""
    h.ready(1.0)
    h.start(2.0)
    assert h.state.deadline == 2.0 + 10.0 + 5.0
    h.end(12.0)
    h.start(13.0)
    assert h.state.deadline == 13.0 + 10.0 + 5.0 and h.state.scenarios == 2
    assert h.c.tick(27.9) == []
    assert h.state.workload_start == 2.0


def test_the_guest_cannot_extend_the_watchdog():
    """No payload carries a duration, and ScenarioEnd every few seconds does
    not keep a run alive past the absolute cap."""
    h = Host(watch=Watch(scenario_s=10.0, teardown_grace=30.0, hard_cap=100.0))
    h.ready(1.0)
    now = 2.0
    expired = []
    while now < 200 and not expired:
        h.start(now)
        h.end(now + 1)
        now += 5
        expired = h.c.tick(now)
    (exp,) = expired
    assert exp.kind is TimeoutKind.RUN_LIMIT and 100.0 < now <= 106.0


def test_pause_overwrites_and_resume_extends(h):
    h.ready(1.0)
    h.start(2.0)
    h.send(ScenarioPause(reason="snapshot"), 5.0)
    assert h.c.workload_time(6.0) == 3.0  # frozen during the pause
    assert h.c.tick(20.0) == []  # past the 17 s deadline, but paused: no stall
    h = Host()
    h.ready(1.0)
    h.start(2.0)
    h.send(ScenarioPause(), 4.0)
    h.send(ScenarioPause(), 5.0)  # a later pause overwrites the first
    h.send(ScenarioResume(), 8.0)
    h.send(ScenarioResume(), 9.0)  # nothing to resume
    assert h.state.paused_total == 3.0
    assert h.state.deadline == 2.0 + 10.0 + 5.0 + 3.0


def test_overlong_pause_is_a_hang():
    h = Host(watch=Watch(scenario_s=5.0, max_pause=30.0))
    h.ready()
    h.start(2.0)
    h.send(ScenarioPause(), 3.0)
    assert h.c.tick(32.0) == []
    (exp,) = h.c.tick(33.5)
    assert exp.kind is TimeoutKind.GUEST_HANG


def test_scenario_end_rearms_the_teardown_grace(h):
    h.ready(1.0)
    h.start(2.0)
    h.end(12.0)
    assert h.state.phase is Phase.ENDED and h.state.deadline == 15.0
    (exp,) = h.c.tick(15.5)
    assert exp.kind is TimeoutKind.GUEST_HANG


def test_stall_under_a_loaded_scheduler_is_classified(h):
    h.ready(1.0)
    h.send(Lifecycle(phase="scheduler_attached"), 1.5)
    h.start(2.0)
    (exp,) = h.c.tick(17.5)
    assert exp.kind is TimeoutKind.SCHEDULER_STALL


def test_periodic_captures_are_spaced_in_workload_time():
    h = Host(watch=Watch(scenario_s=10.0, workload_grace=100.0), num_snapshots=3)
    assert h.c.capture_points() == pytest.approx([1.0, 5.0, 9.0])
    h.ready(50.0)  # boot time never counts
    h.start(100.0)
    assert h.c.tick(100.9) == []
    assert h.c.tick(101.0) == [Capture(periodic=0)]
    h.send(ScenarioPause(), 102.0)
    assert h.c.tick(106.0) == []  # paused: workload time stands still at 2.0
    h.send(ScenarioResume(), 110.0)
    assert h.c.tick(112.9) == []  # workload time 4.9
    assert h.c.tick(113.0) == [Capture(periodic=1)]
    assert h.c.tick(200.0) == [Capture(periodic=2)]
    assert h.c.tick(200.0) == []


def test_single_capture_is_mid_window():
    h = Host(watch=Watch(scenario_s=8.0), num_snapshots=1)
    assert h.c.capture_points() == [4.0]


def test_exit_is_recorded_once(h):
    h.ready()
    assert h.send(Exit(code=3), 2.0) == [Exited(3)]
    assert h.send(Exit(code=0), 2.5) == []
    assert h.state.exit_code == 3 and h.c.tick(1000.0) == []


def test_exit_code_out_of_range_is_malformed(h):
    h.ready()
    assert h.send(kind=MessageKind.EXIT, payload=b'{"code":256}') == []
    assert h.state.exit_code is None and h.evidence.malformed_count == 1


def test_next_wakeup_points_at_deadline_or_capture():
    h = Host(watch=Watch(boot_timeout=10.0, scenario_s=10.0, workload_grace=50.0), num_snapshots=2)
    assert h.c.next_wakeup(4.0) == pytest.approx(6.0)
    h.ready(5.0)
    h.start(5.0)
    assert h.c.next_wakeup(5.0) == pytest.approx(1.0)  # first capture at 10 %
