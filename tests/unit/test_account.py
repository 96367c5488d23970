"""Accounting of what the guest sent against what the host planned, for the
parts the hostile-stream tests do not pin down."""

from __future__ import annotations

import dataclasses

from ktstr.evaluate.account import Expectation, outcome_from, run_data
from ktstr.evaluate.verdict import Outcome, Status, evaluate
from ktstr.protocol.evidence import Collector
from ktstr.protocol.frames import Frame
from ktstr.protocol.messages import (
    Exit,
    Lifecycle,
    RunSummary,
    ScenarioEnd,
    ScenarioStart,
    SchedExit,
    Stimulus,
    WorkerReport,
    WorkerReports,
)
from ktstr.protocol.messages import TestResult as Result
from ktstr.spec.checks import DEFAULTS
from ktstr.spec.plan import resolve
from ktstr.spec.scenario import CgroupDef, Scenario
from ktstr.spec.serde import to_data
from ktstr.spec.topology import Topology

TOPO = Topology.parse("1n1l2c1t")


def collect(*msgs, at=1.0):
    col = Collector()
    for m in msgs:
        col.add(Frame(int(m.KIND), 1, m.to_bytes(), True), at)
    return col.evidence


def body(plan, name="test_x", reports=None):
    """A test body's honest stream for ``plan``."""
    reports = (
        reports
        if reports is not None
        else [
            WorkerReport(
                cgroup="a", index=0, pid=7, work_units=9, iterations=9, wall_s=1.0, cpus=[0]
            )
        ]
    )
    return [
        ScenarioStart(name=plan.scenario, plan=to_data(plan)),
        Stimulus(t_ms=0.0, op="add_cgroup", detail={"pids": {"a[0]": 7}}),
        ScenarioEnd(name=plan.scenario),
        WorkerReports(cgroup="a", reports=reports),
        Result(name=name, passed=True, data=dataclasses.asdict(RunSummary(runs=1))),
        Exit(code=0),
    ]


def verdict(ev, expect):
    return evaluate(run_data(ev, expect, Outcome()), DEFAULTS)


def test_a_test_bodys_announced_plan_is_held_to_the_test():
    ok = resolve(Scenario.of_defs("test_x", [CgroupDef("a")]), TOPO, 1.0)
    expect = Expectation(name="test_x", topology=TOPO, plans=None, max_scenario_s=1.0)
    assert verdict(collect(*body(ok)), expect).status is Status.PASS
    long = resolve(Scenario.of_defs("test_x", [CgroupDef("a")]), TOPO, 5.0)
    v = verdict(collect(*body(long)), expect)
    assert [f.check for f in v.failures] == ["plan_mismatch"]
    assert "longer than the test's declared duration 1s" in v.failures[0].message
    other = resolve(Scenario.of_defs("test_x", [CgroupDef("a")]), Topology.parse("1n2l2c1t"), 1.0)
    v = verdict(collect(*body(other)), expect)
    assert [f.check for f in v.failures] == ["plan_mismatch"]


def test_a_garbled_plan_is_a_finding_not_an_exception():
    ok = resolve(Scenario.of_defs("test_x", [CgroupDef("a")]), TOPO, 1.0)
    msgs = body(ok)
    msgs[0] = ScenarioStart(name="test_x", plan={"steps": [{"ops": 7}]})
    expect = Expectation(name="test_x", topology=TOPO, plans=None, max_scenario_s=1.0)
    v = verdict(collect(*msgs), expect)
    assert v.status is Status.FAIL and "unreadable plan" in v.failures[0].message


def test_the_dead_schedulers_victim_is_named_as_a_worker():
    ok = resolve(Scenario.of_defs("test_x", [CgroupDef("a")]), TOPO, 1.0)
    ev = collect(
        *body(ok)[:2],
        SchedExit(exit_kind="error_stall", reason="runnable task stall (python[7] failed to run)"),
    )
    out = outcome_from(ev, Outcome())
    assert out.sched_died == (
        "error_stall",
        "runnable task stall (python[7] failed to run) [python[7] is worker a[0]]",
    )


def test_a_hang_says_which_workers_would_not_stop():
    ev = collect(Lifecycle(phase="worker_stuck", detail={"worker": "yield[0]", "task": "R"}))
    out = outcome_from(ev, Outcome(timeout=("guest_hang", "no progress")))
    assert out.timeout == ("guest_hang", "no progress; stuck: yield[0] (R)")


def test_a_short_report_is_not_a_full_run():
    ok = resolve(Scenario.of_defs("test_x", [CgroupDef("a")]), TOPO, 1.0)
    short = WorkerReport(cgroup="a", index=0, pid=7, work_units=9, wall_s=0.1, cpus=[0])
    expect = Expectation(name="test_x", topology=TOPO, plans=None, max_scenario_s=1.0)
    v = verdict(collect(*body(ok, reports=[short])), expect)
    assert [f.check for f in v.failures] == ["short_run"]
