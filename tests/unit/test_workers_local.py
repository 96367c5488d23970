"""WorkerPool and the work kinds on the host (no cgroup: a plain file stands
in for cgroup.procs). The guest runs the same code."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from ktstr.guest.work_types import NATIVE, make_shared
from ktstr.guest.workers import WorkerPool, WorkerSpec
from ktstr.protocol.messages import WorkerReport
from ktstr.spec.work import NORMAL, Work, WorkKind


def specs(tmp_path, work: Work, count: int) -> list[WorkerSpec]:
    (tmp_path / "cgroup.procs").write_text("")
    shared = make_shared(work, str(tmp_path), "t")
    out = []
    for i in range(count):
        if work.paired and i % 2 == 0:
            shared = make_shared(work, str(tmp_path), f"t{i}")
        out.append(
            WorkerSpec(
                cgroup="cg",
                procs_dir=str(tmp_path),
                index=i,
                work=work,
                policy=NORMAL,
                nice=0,
                affinity=None,
                allowed=(0,),
                role=i % 2 if work.paired else 0,
                shared=shared,
            )
        )
    return out


def run(tmp_path, work: Work, count: int, seconds: float = 0.5) -> list[WorkerReport]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return run_specs(tmp_path, specs(tmp_path, work, count), seconds)


def run_specs(tmp_path, workers: list[WorkerSpec], seconds: float) -> list[WorkerReport]:
    pool = WorkerPool(report_dir=str(tmp_path / "reports"))
    try:
        pool.spawn(workers)
        pool.release()
        time.sleep(seconds)
        return pool.stop(timeout=10)
    finally:
        pool.close()


@pytest.mark.parametrize("work", [Work.futex_pingpong(), Work.pipe_io()], ids=["futex", "pipe"])
def test_pingpong_pairs_measure_wake_latency(tmp_path, work):
    reports = run(tmp_path, work, 2)
    assert len(reports) == 2
    for r in reports:
        assert r.error is None, r
        assert r.iterations > 10 and r.wake_samples > 10
        assert all(x > 0 for x in r.wake_lat_us)
        assert r.native is NATIVE


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
@pytest.mark.parametrize(
    "work",
    [Work.futex_pingpong(), Work.pipe_io(), Work.request_response(0.05)],
    ids=["futex", "pipe", "request"],
)
def test_pairs_count_each_wake_up_by_both_cpus(tmp_path, monkeypatch, work, native):
    """Pinned to CPU 0 then to CPUs 0 and 1, a pair's wake-ups are counted
    by where the waker and the woken ran: every one, at exactly those CPUs."""
    if native and not NATIVE:
        pytest.skip("ktstr._native is not built")
    monkeypatch.setattr("ktstr.guest.work_types.NATIVE", native)
    for cpus in ((0, 0), (0, 1)):
        sub = tmp_path / f"on{cpus[1]}"
        sub.mkdir()
        pair = [
            dataclasses.replace(s, affinity=(c,))
            for s, c in zip(specs(sub, work, 2), cpus, strict=True)
        ]
        reports = run_specs(sub, pair, 0.4)
        assert [r.error for r in reports] == [None, None], reports
        for r in reports:
            other = cpus[1 - r.index]
            assert r.wake_places_lost == 0
            assert [(p.waker_cpu, p.cpu) for p in r.wake_places] == [(other, cpus[r.index])]
            assert r.wake_places[0].count >= 10
            if work.kind is not WorkKind.REQUEST_RESPONSE:  # its requester times the round trip
                # in Python the stop may land between a wake-up's two records
                assert 0 <= r.wake_samples - r.wake_places[0].count <= (0 if native else 1)


@pytest.mark.parametrize(
    "work",
    [
        Work.spin(),
        Work.yield_heavy(),
        Work.mixed(),
        Work.io_sync(),
        Work.bursty(2, 2),
        Work.cache_pressure(256, 64),
        Work.fork_exit(),
        Work.nice_sweep(),
        Work.affinity_churn(),
        Work.mutex_contention(2),
        Work.sequence((Work.spin(), 0.1), (Work.yield_heavy(), 0.1)),
        Work.custom("ktstr.guest.work_types:spin"),
    ],
    ids=lambda w: w.kind.value,
)
def test_every_kind_makes_progress_and_stops(tmp_path, work):
    if work.kind.value == "custom":
        work = Work.custom("tests.unit.tests_custom_work:unit")
    reports = run(tmp_path, work, 2, 0.4)
    assert len(reports) == 2
    for r in reports:
        assert r.error is None, r
        assert r.iterations > 0
        # measured from the barrier's release, so a worker that got a CPU
        # late (a loaded host) still reports the whole run
        assert r.wall_s >= 0.4


def test_stop_before_start_still_reports(tmp_path):
    pool = WorkerPool(report_dir=str(tmp_path / "reports"))
    try:
        pool.spawn(specs(tmp_path, Work.futex_pingpong(), 2))
        reports = pool.stop(timeout=10)  # never released: stop must not hang
    finally:
        pool.close()
    assert len(reports) == 2


def test_pipe_worker_whose_peer_died_stops_at_once(tmp_path):
    """Each worker holds only its own pipe ends, so a dead peer is an EOF,
    not a read that blocks until the worker is SIGKILLed."""
    pool = WorkerPool(report_dir=str(tmp_path / "reports"))
    try:
        pair = specs(tmp_path, Work.pipe_io(), 2)
        assert pair[0].shared.pipes is not None
        ours = {f"pipe:[{os.fstat(fd).st_ino}]" for p in pair[0].shared.pipes for fd in p}
        a, b = pool.spawn(pair)
        pool.release()
        time.sleep(0.3)
        fds = [os.readlink(f"/proc/{b.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{b.pid}/fd")]
        assert sum(x in ours for x in fds) == 2, fds  # one end of each pipe, not four
        os.kill(a.pid, signal.SIGKILL)
        t0 = time.monotonic()
        reports = pool.stop(timeout=5)
        assert time.monotonic() - t0 < 3
    finally:
        pool.close()
    (survivor,) = [r for r in reports if r.index == 1]
    assert survivor.error is None, survivor


@pytest.mark.parametrize("delay_ms", [0, 1, 3, 7, 13, 29])
def test_pipe_pairs_stop_promptly_whenever_the_signal_lands(tmp_path, delay_ms):
    """The stop may land between the loop's flag test and its wait: ppoll
    with SIGUSR1 blocked outside it turns that into an interrupted wait."""
    pool = WorkerPool(report_dir=str(tmp_path / "reports"))
    try:
        for round_ in range(5):
            sub = tmp_path / f"r{round_}"
            sub.mkdir()
            pool.spawn(specs(sub, Work.pipe_io(), 2))
            pool.release()
            time.sleep(0.05 + delay_ms / 1000)
            reports = pool.stop(timeout=3)
            assert [r.error for r in reports] == [None, None], reports
            pool.workers.clear()
    finally:
        pool.close()


def test_a_stop_before_a_worker_first_ran_is_a_report_of_no_work(tmp_path):
    """Stopped at once, some of 24 children have not run yet (or not past
    the start gate): each still reports, with no work if it did none (for the
    starvation check to judge); none dies of the signal or reports an error."""
    pool = WorkerPool(report_dir=str(tmp_path / "reports"))
    try:
        pool.spawn(specs(tmp_path, Work.spin(), 24))
        reports = pool.stop(timeout=10)
    finally:
        pool.close()
    assert len(reports) == 24 and [r.error for r in reports] == [None] * 24, reports


@pytest.mark.skipif(not NATIVE, reason="ktstr._native is not built")
def test_a_pipe_loop_that_never_waits_still_stops(tmp_path):
    """A partner on another CPU can keep the pipe readable at every ppoll(),
    which then never waits, so never delivers the blocked stop. Here the
    "pipe" is a file of 1M messages (always readable) and the reply goes to
    /dev/null: the stop, sent to this thread alone, must end the loop within
    the 10 ms check, not when the stamps run out."""
    import threading

    from ktstr import _native

    stamps = tmp_path / "stamps"
    stamps.write_bytes(bytes(16 * 1_000_000))
    main = threading.get_ident()
    prev = signal.signal(signal.SIGUSR1, lambda *_: None)  # never the default (exit)
    rd, wr = os.open(stamps, os.O_RDONLY), os.open(os.devnull, os.O_WRONLY)
    timer = threading.Timer(0.05, signal.pthread_kill, (main, signal.SIGUSR1))
    try:
        t0 = time.monotonic()
        timer.start()
        got = _native.pingpong(1, 1, rd, wr, bytearray(16), 100)
        took = time.monotonic() - t0
    finally:
        timer.cancel()
        os.close(rd)
        os.close(wr)
        signal.signal(signal.SIGUSR1, prev)
    assert got["iterations"] < 1_000_000 and took < 0.5, (got["iterations"], took)


# -- the kinds of guest/work_more.py: each measures what it says --


def ok(reports, n):
    assert len(reports) == n
    for r in reports:
        assert r.error is None, r
    return reports


def test_request_response_records_request_and_wake_latency(tmp_path):
    a, b = sorted(
        ok(run(tmp_path, Work.request_response(work_ms=1.0), 2), 2), key=lambda r: r.index
    )
    assert a.iterations > 5 and abs(a.iterations - b.iterations) <= 1
    # the requester's latency holds the server's 1 ms of work; the server's wake-up does not
    assert min(a.wake_lat_us) >= 1000 > min(b.wake_lat_us)


def test_thundering_herd_wakes_every_waiter_each_period(tmp_path):
    reports = ok(run(tmp_path, Work.thundering_herd(period_ms=20, work_ms=0.1), 4, 0.6), 4)
    waker, *waiters = sorted(reports, key=lambda r: r.index)
    assert 10 <= waker.iterations <= 31 and waker.wake_samples == waker.iterations
    for w in waiters:
        assert w.iterations >= waker.iterations - 3 and w.wake_samples == w.iterations


def test_producer_consumer_measures_time_in_queue(tmp_path):
    reports = ok(run(tmp_path, Work.producer_consumer(producers=1, work_ms=0.2), 3), 3)
    prod, *cons = sorted(reports, key=lambda r: r.index)
    assert prod.wake_samples == 0 and prod.iterations > 10
    # what is still queued at the stop: a packet pipe holds at most 16 items
    assert prod.iterations - 20 <= sum(c.iterations for c in cons) <= prod.iterations
    # a stop may land between a sample and its tick
    assert all(abs(c.wake_samples - c.iterations) <= 1 for c in cons)


def test_consumers_never_count_more_than_their_producers(tmp_path):
    """A stop between a producer's enqueue and its tick left consumers one
    item ahead (1698 against 1697 on a CI run); with no work per item, 13 of
    40 short runs showed it before enqueue and tick became one step."""
    for i in range(20):
        work = Work.producer_consumer(producers=2, work_ms=0.0)
        reports = sorted(ok(run(tmp_path / str(i), work, 6, 0.1), 6), key=lambda r: r.index)
        produced = sum(r.iterations for r in reports[:2])
        consumed = sum(r.iterations for r in reports[2:])
        assert produced - 40 <= consumed <= produced, (i, produced, consumed)


@pytest.mark.parametrize(
    ("work", "units_per_iter"),
    [(Work.thread_storm(run_ms=0.2), 1), (Work.fork_exec(), 1),
     (Work.memory_bw(size_kb=4096), 4), (Work.page_faults(size_kb=256), 64)],
    ids=["thread_storm", "fork_exec", "memory_bw", "page_faults"],
)  # fmt: skip
def test_churn_and_memory_kinds_count_their_units(tmp_path, work, units_per_iter):
    (r,) = ok(run(tmp_path, work, 1), 1)
    assert r.iterations > 3 and r.work_units == units_per_iter * r.iterations
    if work.kind.value == "thread_storm":
        assert r.wake_samples == r.iterations  # creation to first run, per thread
    # only memory_bw knows its memory's node: one this host has
    nodes = {int(p.name[4:]) for p in Path("/sys/devices/system/node").glob("node[0-9]*")}
    assert (r.mem_node in nodes) if work.kind.value == "memory_bw" else r.mem_node == -1


def test_timer_and_interactive_record_lateness_per_period(tmp_path):
    (t,) = ok(run(tmp_path, Work.timer_periodic(period_ms=10, work_ms=1), 1, 0.5), 1)
    assert 35 <= t.iterations <= 51 and t.wake_samples == t.iterations
    (i,) = ok(run(tmp_path, Work.interactive(work_ms=1, sleep_ms=20), 1, 0.5), 1)
    assert 15 <= i.iterations <= 25 and i.wake_samples == i.iterations
    assert i.on_cpu_ms < 0.3 * i.wall_s * 1000  # mostly asleep


def test_pi_lock_convoy_serialises_the_holders(tmp_path):
    reports = ok(run(tmp_path, Work.pi_lock(hold_ms=1.0), 3), 3)
    total = sum(r.iterations for r in reports)
    assert 50 < total <= 520  # one 1 ms hold at a time over 0.5 s
    assert all(r.wake_samples == r.iterations for r in reports)


def test_deadline_tasks_run_once_per_period(tmp_path):
    (r,) = run(tmp_path, Work.deadline(runtime_ms=2, period_ms=20), 1)
    if r.error and "sched_setattr" in r.error:
        pytest.skip(f"host refuses SCHED_DEADLINE: {r.error}")
    assert r.error is None and 15 <= r.iterations <= 27


def test_a_stop_that_keeps_making_progress_is_not_cut_short(tmp_path):
    """The stop's timeout bounds the time without progress: six workers that
    exit one every 0.4 s (as many workers writing reports under one TCG
    thread do) all report, though the last exits well past a 1 s timeout."""
    pool = WorkerPool(report_dir=str(tmp_path / "reports"))
    try:
        workers = pool.spawn(specs(tmp_path, Work.spin(), 6))
        pool.release()
        time.sleep(0.2)
        for w in workers:
            os.kill(w.pid, signal.SIGSTOP)  # the stop stays pending until SIGCONT

        def resume_one_by_one() -> None:
            for w in workers:
                time.sleep(0.4)
                os.kill(w.pid, signal.SIGCONT)

        threading.Thread(target=resume_one_by_one, daemon=True).start()
        t0 = time.monotonic()
        reports = pool.stop(timeout=1.0)
        took = time.monotonic() - t0
    finally:
        pool.close()
    assert took > 2.0 and not pool.stuck
    assert [r.error for r in reports] == [None] * 6, reports


def test_a_worker_that_never_stops_is_described_and_killed(tmp_path):
    """One worker held stopped: the others report, it is declared stuck
    ``timeout`` after the last exit (with its state), killed, and reported."""
    pool = WorkerPool(report_dir=str(tmp_path / "reports"))
    try:
        workers = pool.spawn(specs(tmp_path, Work.spin(), 3))
        pool.release()
        time.sleep(0.2)
        os.kill(workers[1].pid, signal.SIGSTOP)
        t0 = time.monotonic()
        reports = pool.stop(timeout=1.0)
        took = time.monotonic() - t0
    finally:
        pool.close()
    assert 1.0 < took < 4.0
    assert [w for w, _ in pool.stuck] == [workers[1].id] and "State:" in pool.stuck[0][1]
    errors = {r.index: r.error for r in reports}
    assert errors[0] is None and errors[2] is None
    assert errors[1] is not None and "did not stop in time" in errors[1], errors


def test_wait_all_without_pidfds_polls_and_leaks_nothing(monkeypatch):
    """Past the fd limit a child gets no pidfd: it is polled instead, and
    exits are still seen; an idle child is left pending after ``idle``."""
    from ktstr.guest.reaping import wait_all

    slow = os.fork()
    if slow == 0:  # pragma: no cover - child
        time.sleep(0.3)
        os._exit(3)
    quick = os.fork()
    if quick == 0:  # pragma: no cover - child
        os._exit(4)
    real = os.pidfd_open

    def pidfd_open(pid: int, *flags: int) -> int:
        if pid == slow:
            raise OSError(24, "Too many open files")
        return real(pid, *flags)

    monkeypatch.setattr(os, "pidfd_open", pidfd_open)
    fds_before = len(os.listdir("/proc/self/fd"))
    got = wait_all([slow, quick], 2.0, 5.0)
    assert {p: os.waitstatus_to_exitcode(s) for p, s in got.items()} == {slow: 3, quick: 4}
    idle = os.fork()
    if idle == 0:  # pragma: no cover - child
        time.sleep(10)
        os._exit(0)
    t0 = time.monotonic()
    assert wait_all([idle], 0.3, 5.0) == {}
    assert 0.3 <= time.monotonic() - t0 < 2.0
    os.kill(idle, signal.SIGKILL)
    os.waitpid(idle, 0)
    assert len(os.listdir("/proc/self/fd")) == fds_before
