import pytest

from ktstr.host.coordinator import (
    Capture,
    Coordinator,
    Exited,
    Expired,
    Kill,
    Phase,
    Ready,
    TimeoutKind,
)
from ktstr.protocol.frames import Frame
from ktstr.protocol.messages import (
    Exit,
    Lifecycle,
    MessageKind,
    ScenarioEnd,
    ScenarioPause,
    ScenarioResume,
    ScenarioStart,
    SchedExit,
    SnapshotReply,
    SnapshotRequest,
)


def frame(msg=None, kind=None, payload=None, crc_ok=True):
    if msg is not None:
        return Frame(int(msg.KIND), 1, msg.to_bytes(), crc_ok)
    return Frame(int(kind), 1, payload or b"", crc_ok)


def ready(c, now=1.0):
    return c.handle(frame(kind=MessageKind.SYS_READY), now)


@pytest.fixture
def c():
    return Coordinator(started=0.0, boot_timeout=10.0, idle_timeout=20.0, workload_grace=5.0)


def test_sched_exit_kills_once_when_crc_valid(c):
    msg = SchedExit(exit_kind="error", reason="runnable task stall")
    assert c.handle(frame(msg), 2.0) == [Kill(msg)]
    assert c.state.killed and c.state.sched_exit == msg
    assert c.handle(frame(msg), 3.0) == []  # a resent one does not kill twice


def test_torn_sched_exit_neither_kills_nor_becomes_evidence(c):
    torn = frame(SchedExit(exit_kind="error", reason="forged"), crc_ok=False)
    assert c.handle(torn, 2.0) == []
    assert not c.state.killed
    assert all(e.kind != MessageKind.SCHED_EXIT for e in c.state.entries)


def test_malformed_sched_exit_is_dropped(c):
    assert c.handle(frame(kind=MessageKind.SCHED_EXIT, payload=b"[1,2]"), 2.0) == []
    assert not c.state.killed


def test_sys_ready_fires_once(c):
    assert ready(c, 1.0) == [Ready()]
    assert ready(c, 2.0) == []
    assert c.state.ready_at == 1.0 and c.state.phase is Phase.READY


def test_sys_ready_with_payload_or_bad_crc_is_ignored(c):
    assert c.handle(frame(kind=MessageKind.SYS_READY, payload=b"x"), 1.0) == []
    assert c.handle(Frame(MessageKind.SYS_READY, 1, b"", False), 1.0) == []
    assert c.state.ready_at is None


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # empty
        SnapshotRequest(request_id=1, capture=1).to_bytes() + b"\x00",  # wrong size
        b"\x00" * 12,  # request id 0
        SnapshotRequest(request_id=5, capture=99).to_bytes(),  # unknown capture kind
    ],
)
def test_malformed_snapshot_requests_are_dropped(c, payload):
    assert c.handle(frame(kind=MessageKind.SNAPSHOT_REQUEST, payload=payload), 1.0) == []
    assert c.state.snapshots == []


def test_valid_snapshot_request_is_queued(c):
    req = SnapshotRequest(request_id=9, capture=1)
    assert c.handle(frame(req), 1.0) == [Capture(request=req)]
    assert c.handle(frame(req, crc_ok=False), 1.0) == []
    assert c.state.snapshots == [req]


def test_unknown_and_host_to_guest_kinds_are_dropped(c, caplog):
    c.handle(frame(kind=4242, payload=b"x"), 1.0)
    c.handle(frame(kind=4242, payload=b"y"), 1.0)
    c.handle(frame(SnapshotReply(request_id=1)), 1.0)
    assert c.state.entries == []
    assert c.state.dropped == 3
    assert sum("unknown kind 4242" in r.message for r in caplog.records) == 1  # logged once


def test_other_kinds_are_kept_with_crc_flag(c):
    c.handle(frame(kind=MessageKind.WORKER_REPORTS, payload=b"{}", crc_ok=False), 1.0)
    c.handle(frame(kind=MessageKind.STDOUT, payload=b"hi"), 1.0)
    assert [(e.kind, e.crc_ok) for e in c.state.entries] == [
        (MessageKind.WORKER_REPORTS, False),
        (MessageKind.STDOUT, True),
    ]


def test_boot_timeout(c):
    assert c.tick(9.9) == []
    (exp,) = c.tick(10.1)
    assert isinstance(exp, Expired) and exp.kind is TimeoutKind.BOOT_TIMEOUT
    assert c.tick(11.0) == []  # reported once


def test_first_scenario_start_stamps_workload_and_arms_deadline(c):
    ready(c, 1.0)
    c.handle(frame(ScenarioStart(name="s", duration_s=10.0)), 2.0)
    c.handle(frame(ScenarioStart(name="s", duration_s=99.0)), 4.0)  # does not move it
    assert c.state.workload_start == 2.0 and c.state.workload_duration == 10.0
    assert c.state.deadline == 2.0 + 10.0 + 5.0
    assert c.workload_time(7.0) == 5.0


def test_torn_scenario_start_does_not_stamp(c):
    c.handle(frame(ScenarioStart(duration_s=1.0), crc_ok=False), 2.0)
    assert c.state.workload_start is None


def test_pause_resume_extends_deadline_and_workload_clock(c):
    ready(c, 1.0)
    c.handle(frame(ScenarioStart(duration_s=10.0)), 2.0)
    c.handle(frame(ScenarioPause(reason="snapshot")), 5.0)
    assert c.workload_time(6.0) == 3.0  # frozen during the pause
    assert c.tick(20.0) == []  # past the 17 s deadline, but paused: no stall
    c = Coordinator(started=0.0, boot_timeout=10.0, idle_timeout=20.0, workload_grace=5.0)
    ready(c, 1.0)
    c.handle(frame(ScenarioStart(duration_s=10.0)), 2.0)
    c.handle(frame(ScenarioPause()), 5.0)
    c.handle(frame(ScenarioResume()), 8.0)
    c.handle(frame(ScenarioPause()), 9.0)
    c.handle(frame(ScenarioResume()), 10.0)
    assert c.state.paused_total == 4.0
    assert c.state.deadline == 2.0 + 10.0 + 5.0 + 4.0
    assert c.workload_time(12.0) == 6.0


def test_overlong_pause_is_a_hang():
    c = Coordinator(started=0.0, max_pause=30.0)
    ready(c)
    c.handle(frame(ScenarioStart(duration_s=5.0)), 2.0)
    c.handle(frame(ScenarioPause()), 3.0)
    assert c.tick(32.0) == []
    (exp,) = c.tick(33.5)
    assert exp.kind is TimeoutKind.GUEST_HANG


def test_scenario_end_rearms_deadline(c):
    ready(c, 1.0)
    c.handle(frame(ScenarioStart(duration_s=10.0)), 2.0)
    c.handle(frame(ScenarioEnd(grace_s=3.0)), 12.0)
    assert c.state.phase is Phase.ENDED and c.state.deadline == 15.0
    (exp,) = c.tick(15.5)
    assert exp.kind is TimeoutKind.GUEST_HANG


def test_stall_under_a_loaded_scheduler_is_classified(c):
    ready(c, 1.0)
    c.handle(frame(Lifecycle(phase="scheduler_attached")), 1.5)
    c.handle(frame(ScenarioStart(duration_s=4.0)), 2.0)
    (exp,) = c.tick(11.5)
    assert exp.kind is TimeoutKind.SCHEDULER_STALL


def test_periodic_captures_are_spaced_in_workload_time():
    c = Coordinator(started=0.0, num_snapshots=3, workload_grace=100.0)
    assert c.capture_points() == []  # nothing before the workload starts
    ready(c, 50.0)  # boot time never counts
    c.handle(frame(ScenarioStart(duration_s=10.0)), 100.0)
    assert c.capture_points() == pytest.approx([1.0, 5.0, 9.0])
    assert c.tick(100.9) == []
    assert c.tick(101.0) == [Capture(periodic=0)]
    c.handle(frame(ScenarioPause()), 102.0)
    assert c.tick(106.0) == []  # paused: workload time stands still at 2.0
    c.handle(frame(ScenarioResume()), 110.0)
    assert c.tick(112.9) == []  # workload time 4.9
    assert c.tick(113.0) == [Capture(periodic=1)]
    assert c.tick(200.0) == [Capture(periodic=2)]
    assert c.tick(200.0) == []


def test_single_capture_is_mid_window():
    c = Coordinator(started=0.0, num_snapshots=1)
    ready(c)
    c.handle(frame(ScenarioStart(duration_s=8.0)), 2.0)
    assert c.capture_points() == [4.0]


def test_exit_is_recorded_once(c):
    ready(c)
    assert c.handle(frame(Exit(code=3)), 2.0) == [Exited(3)]
    assert c.handle(frame(Exit(code=0)), 2.5) == []
    assert c.state.exit_code == 3 and c.tick(1000.0) == []


def test_next_wakeup_points_at_deadline_or_capture():
    c = Coordinator(started=0.0, boot_timeout=10.0, num_snapshots=2, workload_grace=50.0)
    assert c.next_wakeup(4.0) == pytest.approx(6.0)
    ready(c, 5.0)
    c.handle(frame(ScenarioStart(duration_s=10.0)), 5.0)
    assert c.next_wakeup(5.0) == pytest.approx(1.0)  # first capture at 10 %


def test_sched_exit_ends_the_run_after_a_grace(c):
    ready(c, 1.0)
    c.handle(frame(ScenarioStart(duration_s=100.0)), 2.0)
    c.handle(frame(SchedExit(exit_kind="error", reason="stall")), 5.0)
    assert c.tick(14.9) == []  # the guest may still send its dump and results
    (exp,) = c.tick(15.1)
    assert exp.kind is TimeoutKind.KILL_GRACE and "stall" in exp.message
