import pytest

from ktstr.evaluate.verdict import Finding, Outcome, RunData, Status, evaluate
from ktstr.spec.checks import DEFAULTS, Scale, Thresholds, defaults_for, merge
from ktstr.spec.ledger import Terms
from tests.unit.fake_reports import error_report, group, worker_report

ONLY = Thresholds(not_starved=False, isolation=False)  # switch the boolean defaults off


rep = worker_report


def judge(reports, thresholds, allowed=None, outcome=None, **data):
    data = RunData(groups=(group("cg0", reports, allowed),), outcome=outcome or Outcome(), **data)
    return evaluate(data, thresholds)


def checks(v):
    return [f.check for f in v.failures]


@pytest.mark.parametrize(("units", "fails"), [(0, True), (1, False)])
def test_starvation(units, fails):
    v = judge([rep(units=units)], DEFAULTS)
    assert ("starvation" in checks(v)) is fails


@pytest.mark.parametrize(("gap", "fails"), [(1999.9, False), (2000.0, False), (2000.1, True)])
def test_gap_below_at_above(gap, fails):
    v = judge([rep(gap=gap, cpus=(0, 1))], DEFAULTS)
    assert ("gap" in checks(v)) is fails
    if fails:
        assert v.failures[0].message.startswith(f"stuck {gap:.0f}ms on cpu1 at +1200ms")


@pytest.mark.parametrize(("on_b", "fails"), [(1600.0, False), (1599.0, True)])
def test_fairness_spread(on_b, fails):
    # off-CPU: a = 5 %, b = 20 % (exactly 15 % spread) or a bit more
    v = judge(
        [rep(0, on_ms=1900.0), rep(1, on_ms=on_b)], ONLY.merged(Thresholds(max_spread_pct=15.0))
    )
    assert ("fairness" in checks(v)) is fails


def test_fairness_spread_is_unfair_only_where_a_worker_also_falls_short_of_its_peers():
    """Light workers among 8 spinners on 8 CPUs (EEVDF, 1n2l2c2t): 2.2-3.0 s
    of CPU in 5 s is a 15-point spread, yet each got 0.9 of the mean: per-CPU
    queues, not a starved worker. With the share bar off the spread rules alone."""
    light = [rep(i, on_ms=ms, wall=5.0) for i, ms in enumerate((2360, 2243, 2325, 2995))]
    data = RunData(groups=(group("light", light, planned=5.0),))
    assert evaluate(data, DEFAULTS).status is Status.PASS
    (f,) = evaluate(data, merge(DEFAULTS, Thresholds(min_share_ratio=False))).failures
    assert f.check == "fairness" and f.message == "light: off-CPU spread 15.0% > 15%"
    starved = [rep(i, on_ms=ms) for i, ms in enumerate((1200, 1200, 200))]
    (f,) = evaluate(RunData(groups=(group("cg0", starved),)), DEFAULTS).failures
    assert f.message == "cg0: off-CPU spread 50.0% > 15%, p10 share 0.23 of the mean < 0.6"
    assert f.evidence["ratio"] == pytest.approx(0.1 / (2.6 / 6))


def test_fairness_needs_two_workers():
    assert judge([rep(on_ms=100.0)], Thresholds(max_spread_pct=1.0)).status is Status.PASS


@pytest.mark.parametrize(("cpus", "fails"), [((0, 1), False), ((0, 2), True)])
def test_isolation(cpus, fails):
    v = judge([rep(cpus=cpus)], DEFAULTS, allowed=(0, 1))
    assert ("isolation" in checks(v)) is fails
    if fails:
        assert "ran on cpu 2 outside its cpuset 0-1" in v.failures[0].message


def test_isolation_off_and_unrestricted():
    assert (
        judge([rep(cpus=(5,))], merge(DEFAULTS, Thresholds(isolation=False)), allowed=(0,)).status
        is Status.PASS
    )
    assert judge([rep(cpus=(5,))], DEFAULTS, allowed=None).status is Status.PASS


def test_rates_use_the_planned_time_not_the_guests_wall():
    # a report claiming a tiny wall time cannot inflate its rate
    v = judge([rep(units=100, wall=0.001)], ONLY.merged(Thresholds(min_work_rate=51.0)))
    assert checks(v) == ["min_work_rate"]  # 100 units over the planned 2 s


@pytest.mark.parametrize(("limit", "fails"), [(0.5, True), (0.6, False)])
def test_throughput_cv(limit, fails):
    # rates 50 and 150 per s: mean 100, pstdev 50 -> CV 0.5
    v = judge(
        [rep(0, units=100), rep(1, units=300)],
        ONLY.merged(Thresholds(max_throughput_cv=limit - 0.0001 if fails else limit)),
    )
    assert ("throughput_cv" in checks(v)) is fails


@pytest.mark.parametrize(("limit", "fails"), [(50.0, False), (50.1, True)])
def test_min_work_and_iteration_rate(limit, fails):
    v = judge(
        [rep(units=100, wall=2.0)],
        ONLY.merged(Thresholds(min_work_rate=limit, min_iteration_rate=limit)),
    )
    assert ("min_work_rate" in checks(v)) is fails
    assert ("min_iteration_rate" in checks(v)) is fails


@pytest.mark.parametrize(("limit", "fails"), [(98.9, True), (99.0, False), (99.1, False)])
def test_wake_p99(limit, fails):
    lat = tuple(float(x) for x in range(1, 101))  # nearest-rank p99 = 99
    v = judge([rep(lat=lat)], ONLY.merged(Thresholds(max_wake_p99_us=limit)))
    assert ("wake_p99" in checks(v)) is fails


def test_wake_cv_and_migration_ratio():
    v = judge(
        [rep(units=10, cpus=(0, 1, 2, 3), lat=(10.0, 10.0, 100.0))],
        ONLY.merged(Thresholds(max_wake_cv=0.5, max_migration_ratio=0.2)),
    )
    assert set(checks(v)) == {"wake_cv", "migration_ratio"}  # CV 1.06, ratio 0.3


def test_outcomes_are_findings_and_silence_worker_checks():
    died = Outcome(sched_died=("error_stall", "runnable task stall"), sched_dump="dump")
    v = judge([rep(units=0)], DEFAULTS, outcome=died)
    assert checks(v) == ["scheduler_died"]
    assert v.failures[0].message == "scheduler died: error_stall: runnable task stall"
    assert v.failures[0].evidence["dump"] == "dump"
    for outcome, check in [
        (Outcome(sched_not_attached="exited"), "scheduler_not_attached"),
        (Outcome(guest_crash="Oops"), "guest_crash"),
        (Outcome(agent_crash="boom"), "agent_crash"),
        (Outcome(timeout=("scheduler_stall", "overran")), "scheduler_stall"),
    ]:
        assert checks(judge([], DEFAULTS, outcome=outcome)) == [check]


def test_completeness_fails_unless_the_run_already_broke_and_integrity_always():
    lost = Finding("lost_reports", "fail", "no report from 1 worker(s): cg0[1]")
    torn = Finding("torn_frame", "fail", "1 torn frame(s) from the guest")
    assert checks(judge([rep()], DEFAULTS, completeness=(lost,))) == ["lost_reports"]
    died = Outcome(sched_died=("error", "stall"))
    v = judge([rep()], DEFAULTS, outcome=died, completeness=(lost,), integrity=(torn,))
    assert checks(v) == ["scheduler_died", "torn_frame"]
    v = judge([rep(), error_report(1, "OSError: boom")], DEFAULTS)
    assert checks(v) == ["worker_error"]


def test_skip_and_pass():
    assert judge([], DEFAULTS, outcome=Outcome(skip_reason="needs SMT")).status is Status.SKIP
    v = judge([rep(0), rep(1)], DEFAULTS, allowed=(0,))
    assert v.status is Status.PASS and v.findings == ()


def test_scale_widens_timing_checks():
    data = RunData(groups=(group("cg0", [rep(gap=3000.0)]),))
    assert evaluate(data, DEFAULTS).status is Status.FAIL
    assert evaluate(data, DEFAULTS, Scale(4.0, "TCG x4")).status is Status.PASS


def spinners(*on_ms, cpus=(0,), static=True, cgroup="cg0", opaque=False, cpu_max=0.0, wall=2.0):
    from ktstr.evaluate.stats import Group, Sample

    return Group(cgroup, tuple(
        Sample(worker_report(i, on_ms=ms, cpus=cpus, cgroup=cgroup, wall=wall), cpus, 2.0,
               how=Terms(groups=((cgroup, 100),), cpu_bound=True, static=static, opaque=opaque,
                         cpu_max=cpu_max))
        for i, ms in enumerate(on_ms)
    ))  # fmt: skip


def test_share_oracle_passes_a_fair_split_and_fails_a_starved_worker():
    fair = evaluate(RunData(groups=(spinners(1000, 980),)), DEFAULTS)
    assert fair.status is Status.PASS and fair.stats.share.p10_ratio > 0.9
    assert fair.stats.share.ideal == pytest.approx(0.5)
    starved = evaluate(RunData(groups=(spinners(200, 1780),)), DEFAULTS)
    (f,) = starved.failures  # the spread check leaves judged workers to the oracle
    assert f.check == "share"
    assert f.evidence["worker"] == "cg0[0]"
    assert f.evidence["ideal"] == pytest.approx(0.5) and f.evidence["actual"] == pytest.approx(0.1)
    assert "worst cg0[0]: 0.10 CPU of 0.50" in f.message


def test_share_oracle_stays_out_of_runs_it_cannot_model():
    from ktstr.evaluate.payloads import PayloadResult

    dynamic = evaluate(RunData(groups=(spinners(200, 1780, static=False),)), DEFAULTS)
    assert dynamic.stats.share is None
    assert [f.check for f in dynamic.failures] == ["fairness"]  # the spread check still judges
    # a thread storm's threads use CPU its own accounting does not see
    storm = spinners(100, cgroup="storm", opaque=True)
    assert evaluate(RunData(groups=(spinners(200, 1780), storm)), DEFAULTS).stats.share is None
    payload = PayloadResult(name="hackbench", kind="hackbench", cgroup="cg0", index=0,
                            command=("hackbench",), exit_code=0, ended="exited",
                            duration_s=2.0, planned_s=2.0)  # fmt: skip
    busy = evaluate(RunData(groups=(spinners(200, 1780),), payloads=(payload,)), DEFAULTS)
    assert busy.stats.share is None
    off = evaluate(RunData(groups=(spinners(200, 1780),)), merge(DEFAULTS,
                   Thresholds(min_share_ratio=False)))  # fmt: skip
    assert off.stats.share is not None and "share" not in {f.check for f in off.failures}


def test_cgroup_weights_judge_by_the_group_model_alone():
    a = spinners(900, 900, cgroup="a")  # two tasks in a: 0.45 each
    b = spinners(200, cgroup="b")  # one in b, starved under cgroup fairness (ideal 0.5)
    loose = evaluate(RunData(groups=(a, b)), DEFAULTS)
    assert loose.stats.share.worst == "b[0]" and loose.status is Status.FAIL  # 0.1 of 0.33
    fair_tasks = spinners(650, 650, cgroup="a"), spinners(650, cgroup="b")
    per_task = evaluate(RunData(groups=fair_tasks), DEFAULTS)
    assert per_task.status is Status.PASS  # per-task fair is fair
    strict = merge(DEFAULTS, Thresholds(cgroup_weights=True))
    by_group = evaluate(RunData(groups=fair_tasks), strict)
    assert by_group.stats.share.worst == "b[0]" and by_group.stats.share.ideal == pytest.approx(0.5)


def test_spread_compares_only_workers_on_equal_terms():
    """Requesters and servers, or a worker that joined later, differ by
    design: the spread check does not compare them."""
    from ktstr.evaluate.stats import Group, Sample

    def two(**second):
        first = Sample(worker_report(0, on_ms=1800), (0, 1), 2.0, how=Terms(static=True))
        other = Sample(worker_report(1, on_ms=400), (0, 1), second.pop("planned", 2.0),
                       how=Terms(static=True, **second))  # fmt: skip
        return evaluate(RunData(groups=(Group("cg0", (first, other)),)), DEFAULTS)

    assert [f.check for f in two().failures] == ["fairness"]
    assert two(role=1).failures == ()
    assert two(start_s=1.0, planned=1.0).failures == ()


def test_cpu_max_caps_the_ideal_and_binds_where_the_scheduler_enforces_it():
    """Two CPUs, 2 spinners capped at 0.5 CPU together, 2 free ones."""
    cpus = (0, 1)
    capped = spinners(500, 500, cpus=cpus, cgroup="capped", cpu_max=0.5)
    free = spinners(1500, 1500, cpus=cpus, cgroup="free")
    held = evaluate(RunData(groups=(capped, free)), DEFAULTS)
    assert held.status is Status.PASS, held.failures
    assert held.stats.share.p10_ratio > 0.9  # the free ones' ideal is the rest: 0.75 each
    (bw,) = [f for f in held.findings if f.check == "bandwidth"]
    assert bw.cls == "info" and bw.evidence["used_cpus"] == pytest.approx(0.5)
    over = spinners(1000, 1000, cpus=cpus, cgroup="capped", cpu_max=0.5)  # 1 CPU of 0.5
    fair_split = spinners(1000, 1000, cpus=cpus, cgroup="free")
    broke = evaluate(RunData(groups=(over, fair_split)), DEFAULTS)
    assert "bandwidth" in checks(broke)
    # under sched_ext cpu.max binds only if the scheduler implements it
    sx = evaluate(RunData(groups=(over, fair_split)), defaults_for(sched_ext=True))
    assert sx.status is Status.PASS and sx.stats.share.ideal == pytest.approx(0.5)
    assert any("not judged for capped" in f.message for f in sx.findings)
    on = merge(defaults_for(sched_ext=True), Thresholds(max_bandwidth_pct=10.0))
    assert "bandwidth" in checks(evaluate(RunData(groups=(over, fair_split)), on))
    # throttled workers stop late: their CPU counts over the time they held the cgroup
    late = spinners(600, 600, cpus=cpus, cgroup="capped", cpu_max=0.5, wall=2.5)
    (bw,) = [f for f in evaluate(RunData(groups=(late, free)), DEFAULTS).findings
             if f.check == "bandwidth"]  # fmt: skip
    assert bw.cls == "info" and bw.evidence["used_cpus"] == pytest.approx(1.2 / 2.5)
    # a report cannot stretch the window without bound (plan 2 s: at most 4 s)
    endless = spinners(1500, 1500, cpus=cpus, cgroup="capped", cpu_max=0.5, wall=1e9)
    assert "bandwidth" in checks(evaluate(RunData(groups=(endless, free)), DEFAULTS))
