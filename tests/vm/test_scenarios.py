"""Scenarios in real VMs under EEVDF and under sched_ext schedulers from the
shared kernel directory."""

from __future__ import annotations

import json

import pytest

from ktstr.evaluate.account import Expectation, account
from ktstr.evaluate.stats import run_stats
from ktstr.runner import BootRequest, GuestRun, SchedulerRun, run_scenario, scheduler_binary
from ktstr.spec.catalog import SCENARIOS
from ktstr.spec.plan import Plan, resolve
from ktstr.spec.topology import Topology

TOPO = Topology.parse("1n2l2c1t")


def scenario(
    kernel, name: str, duration: float = 3.0, sched: SchedulerRun | None = None
) -> GuestRun:
    req = BootRequest(kernel=kernel, topology=TOPO, job={}, name=name)
    plan = resolve(SCENARIOS[name], TOPO, duration)
    run = run_scenario(req, plan, sched)
    PLANS[id(run)] = plan
    return run


PLANS: dict[int, Plan] = {}  # the plan each run was given


def sched(kernel, name: str, *args: str) -> SchedulerRun:
    if kernel.schedulers_dir is None or not (kernel.schedulers_dir / name).exists():
        pytest.skip(f"host lacks {name} next to the kernel ({kernel.directory}/schedulers)")
    return SchedulerRun(binary=scheduler_binary(name, kernel), args=args)


def groups(run: GuestRun, sched: bool = False):
    """The samples the host vouches for, and what the plan owed and did not get."""
    plan = PLANS[id(run)]
    expect = Expectation(name=plan.scenario, topology=TOPO, plans=(plan,), scheduler=sched)
    found, missing, _ = account(run.evidence, expect)
    return found, missing


def assert_clean(run: GuestRun, name: str, sched: bool = False) -> None:
    result = run.result(name)
    assert result is not None, "the guest sent no scenario result"
    assert result.data["leftover_cgroups"] == [] and result.data["leftover_workers"] == 0
    assert run.exit_code == 0
    ev = run.evidence
    assert ev.malformed_count == ev.torn_count == 0 and not ev.overflow, ev.malformed
    _, missing = groups(run, sched)
    assert missing == [], missing  # complete: every planned worker reported once


def test_steady_under_eevdf(kernel, isolated):
    run = scenario(kernel, "steady")
    stats = run_stats(groups(run)[0])
    assert [c.name for c in stats.cgroups] == ["cg0", "cg1"]
    assert stats.workers == 4
    for r in run.worker_reports:
        assert r.error is None, r
        assert r.work_units > 0 and r.wall_s > 2.0 and r.cpus
    assert run.sched_exit is None
    assert [s.op for s in run.stimuli] == ["add_cgroup", "add_cgroup"]
    assert_clean(run, "steady")


def test_steady_under_scx_simple(kernel, isolated):
    run = scenario(kernel, "steady", sched=sched(kernel, "scx_simple"))
    assert any(
        lc.phase == "scheduler_attached" and lc.detail["ops"] == "simple" for lc in run.lifecycle
    )
    assert any(lc.phase == "scheduler_stopped" for lc in run.lifecycle)
    assert run.sched_exit is None
    reports = run.worker_reports
    assert len(reports) == 4 and all(r.work_units > 0 for r in reports)
    assert_clean(run, "steady", sched=True)


def test_scheduler_error_mid_run_is_reported_with_reason_and_dump(kernel, isolated):
    run = scenario(kernel, "steady", duration=8.0, sched=sched(kernel, "scx_qmap", "-e", "200"))
    se = run.sched_exit
    assert se is not None, "scx_qmap -e should have died"
    assert se.exit_kind == "error_bpf"
    assert "scx_bpf_error" in se.reason and "test triggering error" in se.reason
    assert se.dump.strip(), "no debug dump"
    assert run.sched_log, "the scheduler's output was not captured"


def test_scheduler_that_never_attaches(kernel, isolated, tmp_path):
    fake = tmp_path / "scx_broken"
    fake.write_text("#!/bin/sh\necho 'failed to load BPF skeleton' >&2\nexit 3\n")
    fake.chmod(0o755)
    run = scenario(kernel, "steady", sched=SchedulerRun(binary=fake))
    assert run.sched_exit is not None and run.sched_exit.exit_kind == "not_attached"
    assert "exited with status 3" in run.sched_exit.reason
    assert "failed to load BPF skeleton" in run.sched_exit.dump
    assert not run.worker_reports


def test_disjoint_cpusets_keep_workers_on_their_cpus(kernel, isolated):
    run = scenario(kernel, "cpuset_disjoint")
    samples = [s for g in groups(run)[0] for s in g.samples]
    allowed = {s.report.cgroup: s.allowed for s in samples}  # from the host's plan
    assert allowed == {"left": (0, 1), "right": (2, 3)}
    for s in samples:
        assert s.report.work_units > 0
        assert set(s.report.cpus) <= set(s.allowed), f"{s.report.cgroup} ran on {s.report.cpus}"
    assert_clean(run, "cpuset_disjoint")


def test_paired_work_reports_wake_latencies(kernel, isolated):
    run = scenario(kernel, "wake_latency")
    stats = {c.name: c for c in run_stats(groups(run)[0]).cgroups}
    for name in ("futex", "pipe"):
        c = stats[name]
        assert c.workers == 2 and not c.errors
        assert c.wake_samples > 10 and 0 < c.wake_p50_us <= c.wake_p99_us
    assert_clean(run, "wake_latency")


def test_scx_central_attaches_with_its_kthread_quirk(kernel, isolated):
    """6.12: scx_central's init must run on CPU 0, on a kthread created at the
    first enable; the agent pins it (retrying the attach once if needed)."""
    run = scenario(kernel, "steady", sched=sched(kernel, "scx_central"))
    assert run.sched_exit is None, run.sched_exit
    assert any(
        lc.phase == "scheduler_attached" and lc.detail["ops"] == "central" for lc in run.lifecycle
    )
    assert all(r.work_units > 0 for r in run.worker_reports)
    assert_clean(run, "steady", sched=True)


def test_periodic_snapshots_are_spaced_in_workload_time(kernel, isolated):
    """num_snapshots captures at 10 %, 50 % and 90 % of the workload (in
    workload time: boot does not count), each freezing the guest and reading
    its scheduler state."""
    req = BootRequest(kernel=kernel, topology=TOPO, job={}, num_snapshots=3, share_memory=True)
    plan = resolve(SCENARIOS["steady"], TOPO, 4.0)
    run = run_scenario(req, plan)
    PLANS[id(run)] = plan
    assert run.snapshots is not None
    periodic = [json.loads(t.text) for t in run.snapshots.taken if t.meta["trigger"] == "periodic"]
    assert [s["name"] for s in periodic] == ["periodic-0", "periodic-1", "periodic-2"]
    for snap, want in zip(periodic, (0.4, 2.0, 3.6), strict=True):
        assert want <= snap["workload_s"] < want + 1.0, snap["workload_s"]
        assert "RIP=" in snap["registers"] and len(snap["cpus"]) == TOPO.cpus
    assert run.timings.ready is not None and periodic[0]["at_s"] > run.timings.ready
    assert_clean(run, "steady")


def test_loop_spawned_workers_and_moved_workers_pass_judged(kernel, isolated):
    """Workers a loop hold spawns start at once (the barrier is released
    after every repeat), and workers moved to another cgroup may use its
    CPUs: both passed falsely as starvation and isolation failures."""
    from ktstr.runner import execute
    from ktstr.spec.checks import DEFAULTS, Thresholds
    from ktstr.spec.scenario import CgroupDef, CpusetSpec, HoldSpec, Op, Scenario, Step

    sc = Scenario(
        name="loop_and_move",
        description="",
        steps=(
            Step(
                ops=(
                    Op.add(CgroupDef("grow", workers=1)),
                    Op.add(CgroupDef("src", workers=2, cpuset=CpusetSpec.llc(0))),
                    Op.add(CgroupDef("dst", workers=0, cpuset=CpusetSpec.llc(1))),
                ),
                hold=HoldSpec.fraction(0.25),
            ),
            Step(ops=(Op.spawn("grow", 1),), hold=HoldSpec.loop(0.5, 0.5)),
            Step(ops=(Op.move_all("src", "dst"),), hold=HoldSpec.fraction(0.25)),
        ),
    )
    plan = resolve(sc, TOPO, 4.0)
    req = BootRequest(kernel=kernel, topology=TOPO, job={}, name="loop")
    # workers spawned at different times meet different competition: the
    # spread check would compare unlike shares, so it is off here
    rec = execute(
        req, plan, None, DEFAULTS.merged(Thresholds(max_spread_pct=False)), isolated / "res"
    )
    assert rec.status.value == "pass", [f.message for f in rec.verdict.findings]
    assert rec.verdict.stats.workers == 1 + 1 + plan.steps[1].loop_count + 2


def test_weights_and_single_moves_reach_the_guests_cgroups(kernel, isolated):
    """set_weight writes cpu.weight, move_worker moves exactly one task, and
    the run stays complete and judged."""
    run = scenario(kernel, "reweight_and_move")
    assert_clean(run, "reweight_and_move")
    stimuli = {st.op: st.detail for sc in run.evidence.scenarios for st in sc.stimuli}
    assert stimuli["set_weight"] == {"cgroup": "a", "weight": 400}
    assert stimuli["move_worker"]["moved"] == 1 and stimuli["move_worker"]["dst"] == "a"


def test_kinds_outside_the_catalog_run_and_report_in_a_vm(kernel, isolated):
    """fork_exit, policy_churn, sequence and custom are in no canned
    scenario: each still runs in a real guest and reports progress."""
    from ktstr.spec.scenario import CgroupDef, HoldSpec, Op, Scenario, Step
    from ktstr.spec.work import Work

    works = {
        "fork_exit": Work.fork_exit(),
        "policy_churn": Work.policy_churn(),
        "sequence": Work.sequence((Work.spin(), 0.3), (Work.yield_heavy(), 0.3)),
        # any function the guest can import and call with the context
        "custom": Work.custom("builtins:id"),
    }
    ops = tuple(Op.add(CgroupDef(name, workers=1, work=w)) for name, w in works.items())
    step = Step(ops=ops, hold=HoldSpec.fraction(1.0))
    sc = Scenario(name="other_kinds", description="", steps=(step,))
    plan = resolve(sc, TOPO, 2.0)
    req = BootRequest(kernel=kernel, topology=TOPO, job={}, name="other_kinds")
    run = run_scenario(req, plan, None)
    PLANS[id(run)] = plan
    assert_clean(run, "other_kinds")
    reports = {r.cgroup: r for s in run.evidence.scenarios for r in s.reports}
    assert set(reports) == set(works)
    for name, r in reports.items():
        assert r.error is None and r.iterations > 0 and r.wall_s > 0, (name, r)
