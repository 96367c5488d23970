"""The ledger host and guest share: which workers a plan owes, where each
may run, how long each is meant to run. Nothing here comes from the guest."""

import pytest

from ktstr.errors import ConfigError
from ktstr.spec.ledger import expected_workers, unfold
from ktstr.spec.plan import resolve
from ktstr.spec.scenario import CgroupDef, CpusetSpec, HoldSpec, Op, Scenario, Step
from ktstr.spec.topology import Topology

T = Topology.parse("1n2l2c1t")  # 4 CPUs: LLC0 = 0-1, LLC1 = 2-3
ALL = tuple(range(4))


def owed(scenario, duration=4.0):
    plan = resolve(scenario, T, duration)
    return {(w.cgroup, w.index): w for w in expected_workers(plan, ALL)}


def test_one_report_per_planned_worker_with_its_cpuset():
    s = Scenario.of_defs(
        "x",
        [CgroupDef("a", workers=2, cpuset=CpusetSpec.llc(0)), CgroupDef("b", workers=1)],
    )
    w = owed(s)
    assert sorted(w) == [("a", 0), ("a", 1), ("b", 0)]
    assert w["a", 0].allowed == (0, 1) and w["b", 0].allowed == ALL
    assert all(x.planned_s == 4.0 for x in w.values())


def test_move_all_allows_both_cgroups_cpus():
    """A moved worker ran on the source's CPUs, then the destination's: a
    report keyed to the source alone made a false isolation failure."""
    s = Scenario(
        name="move",
        description="",
        steps=(
            Step(
                ops=(
                    Op.add(CgroupDef("src", workers=2, cpuset=CpusetSpec.llc(0))),
                    Op.add(CgroupDef("dst", workers=0, cpuset=CpusetSpec.llc(1))),
                ),
                hold=HoldSpec.fraction(0.5),
            ),
            Step(ops=(Op.move_all("src", "dst"),), hold=HoldSpec.fraction(0.5)),
        ),
    )
    w = owed(s)
    assert sorted(w) == [("src", 0), ("src", 1)]
    assert w["src", 0].allowed == ALL


def test_moved_workers_stop_with_the_cgroup_they_are_in():
    s = Scenario(
        name="move",
        description="",
        steps=(
            Step(ops=(Op.add(CgroupDef("a", workers=1)), Op.add(CgroupDef("b", workers=0)))),
            Step(ops=(Op.move_all("a", "b"),), hold=HoldSpec.fraction(0.25)),
            Step(ops=(Op.remove("b"),), hold=HoldSpec.fraction(0.25)),
        ),
    )
    ledger = unfold(resolve(s, T, 4.0), ALL)
    (w,) = ledger.workers.values()
    assert w.cgroup == "b" and w.stop_s == 4.0 + 1.0  # stopped by b's removal


def test_a_child_without_a_cpuset_inherits_its_parents():
    parent = CgroupDef(
        "p", workers=0, cpuset=CpusetSpec.llc(1), children=(CgroupDef("c", workers=1),)
    )
    assert owed(Scenario.of_defs("x", [parent]))["p/c", 0].allowed == (2, 3)


def test_swapped_cpusets_allow_both():
    s = Scenario(
        name="swap",
        description="",
        steps=(
            Step(
                ops=(
                    Op.add(CgroupDef("a", workers=1, cpuset=CpusetSpec.llc(0))),
                    Op.add(CgroupDef("b", workers=1, cpuset=CpusetSpec.llc(1))),
                ),
                hold=HoldSpec.fraction(0.5),
            ),
            Step(ops=(Op.swap_cpusets("a", "b"),), hold=HoldSpec.fraction(0.5)),
        ),
    )
    w = owed(s)
    assert w["a", 0].allowed == ALL and w["b", 0].allowed == ALL


def test_loop_holds_apply_a_fixed_number_of_times():
    """Every interval that starts before the hold ends: host and guest agree."""
    s = Scenario(
        name="loop",
        description="",
        steps=(
            Step(ops=(Op.add(CgroupDef("a", workers=1)),), hold=HoldSpec.fraction(0.25)),
            Step(ops=(Op.spawn("a", 1),), hold=HoldSpec.loop(0.5, 0.75)),
        ),
    )
    plan = resolve(s, T, 4.0)  # loop step: 3 s, every 0.5 s -> 1 + 5 applications
    assert plan.steps[1].loop_count == 5
    w = owed(s)
    assert sorted(w) == [("a", i) for i in range(7)]
    assert w["a", 1].planned_s == pytest.approx(3.0)  # spawned as the step starts
    assert w["a", 6].planned_s == pytest.approx(0.5)  # the last repeat, at +2.5 s


def test_remove_and_add_again_keeps_counting():
    s = Scenario(
        name="again",
        description="",
        steps=(
            Step(ops=(Op.add(CgroupDef("a", workers=2)),), hold=HoldSpec.fraction(0.5)),
            Step(ops=(Op.remove("a"), Op.add(CgroupDef("a", workers=2)))),
        ),
    )
    w = owed(s)
    assert sorted(w) == [("a", 0), ("a", 1), ("a", 2), ("a", 3)]
    assert w["a", 0].planned_s == 2.0 and w["a", 2].planned_s == 4.0


def test_a_loop_that_would_add_a_cgroup_twice_is_refused_before_boot():
    s = Scenario(
        name="bad",
        description="",
        steps=(Step(ops=(Op.add(CgroupDef("a")),), hold=HoldSpec.loop(0.5)),),
    )
    with pytest.raises(ConfigError, match="loop repeat 1: add_cgroup: cgroup 'a' already exists"):
        resolve(s, T, 2.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 0.0])
def test_durations_must_be_finite(bad):
    with pytest.raises(ConfigError, match="finite"):
        resolve(Scenario.of_defs("x", [CgroupDef("a")]), T, bad)


def test_move_worker_moves_one_and_set_weight_changes_the_plan():
    s = Scenario(
        name="ops",
        description="",
        steps=(
            Step(
                ops=(
                    Op.add(CgroupDef("a", workers=2, cpuset=CpusetSpec.llc(0))),
                    Op.add(CgroupDef("b", workers=1, cpuset=CpusetSpec.llc(1))),
                ),
                hold=HoldSpec.fraction(0.5),
            ),
            Step(
                ops=(Op.move_worker("a", 1, "b"), Op.set_weight("b", 400)),
                hold=HoldSpec.fraction(0.5),
            ),
        ),
    )
    w = owed(s)
    assert w["a", 0].allowed == (0, 1)  # stayed
    assert w["a", 1].allowed == ALL  # ran on both LLCs: a's, then b's
    assert not w["a", 0].terms.static  # the competition changed mid-run
    ledger = unfold(resolve(s, T, 4.0), ALL)
    assert ledger.workers["a", 1].cgroup == "b" and ledger.live["b"].weight == 400


@pytest.mark.parametrize(
    ("op", "message"),
    [(Op.move_worker("a", 2, "b"), "one of a's 2 first workers"),
     (Op.move_worker("a", 0, "a"), "needs another cgroup"),
     (Op.set_weight("a", 0), "weight must be 1..10000"),
     (Op.set_cpu_max("z", 1.0), "z")],
)  # fmt: skip
def test_bad_worker_and_weight_ops_are_refused_before_boot(op, message):
    s = Scenario(
        name="bad",
        description="",
        steps=(Step(ops=(Op.add(CgroupDef("a", workers=2)), Op.add(CgroupDef("b")), op)),),
    )
    with pytest.raises(ConfigError, match=message):
        resolve(s, T, 1.0)


def test_a_snapshot_mid_run_leaves_the_competition_static():
    s = Scenario(
        name="snap",
        description="",
        steps=(
            Step(ops=(Op.add(CgroupDef("a", workers=2)),), hold=HoldSpec.fraction(0.5)),
            Step(ops=(Op.snapshot("mid"),), hold=HoldSpec.fraction(0.5)),
        ),
    )
    assert all(w.terms.static for w in owed(s).values())
    late = Scenario(
        name="late",
        description="",
        steps=(
            Step(ops=(Op.add(CgroupDef("a", workers=2)),), hold=HoldSpec.fraction(0.5)),
            Step(ops=(Op.add(CgroupDef("b")),), hold=HoldSpec.fraction(0.5)),
        ),
    )
    assert not any(w.terms.static for w in owed(late).values())


def test_cpu_max_reaches_the_plan_the_ledger_and_static_terms():
    s = Scenario.of_defs("bw", [CgroupDef("a", workers=2, cpu_max=1.5), CgroupDef("b")])
    w = owed(s)
    assert w["a", 0].terms.cpu_max == 1.5 and w["b", 0].terms.cpu_max == 0.0
    change = Scenario(
        name="bw2",
        description="",
        steps=(
            Step(ops=(Op.add(CgroupDef("a", workers=2, cpu_max=2)),), hold=HoldSpec.fraction(0.5)),
            Step(ops=(Op.set_cpu_max("a", 0.25),), hold=HoldSpec.fraction(0.5)),
        ),
    )
    ledger = unfold(resolve(change, T, 4.0), ALL)
    assert ledger.live["a"].cpu_max == 0.25
    assert owed(change)["a", 0].terms.cpu_max == 0.0  # changed mid-run: not judged


@pytest.mark.parametrize("bad", [-1, 0.001, float("nan"), True, 10_000])
def test_bad_cpu_max_is_refused_with_its_cgroup(bad):
    with pytest.raises(ConfigError, match="cgroup a: cpu_max"):
        CgroupDef("a", cpu_max=bad)
    with pytest.raises(ConfigError, match="set_cpu_max a"):
        Op.set_cpu_max("a", bad)


def test_a_kernel_without_cfs_bandwidth_skips_cpu_max_scenarios(tmp_path):
    """Linux 6.12 as shared here has no CONFIG_CFS_BANDWIDTH: cpu.max does not
    exist there, so such a scenario is a SKIP that names the option."""
    from ktstr.evaluate.verdict import Status
    from ktstr.host.kernel import Kernel
    from ktstr.runner import BootRequest, execute
    from ktstr.spec.catalog import SCENARIOS
    from ktstr.spec.checks import DEFAULTS

    config = "CONFIG_SCHED_CLASS_EXT=y\n# CONFIG_CFS_BANDWIDTH is not set\n"
    k = Kernel(directory=tmp_path, image=tmp_path / "vmlinux", version="6.12.0", config_text=config)
    for name in ("bandwidth_cap", "bandwidth_change"):
        rec = execute(BootRequest(kernel=k, topology=T, job={}), resolve(SCENARIOS[name], T),
                      None, DEFAULTS, tmp_path / name)  # fmt: skip
        assert rec.status is Status.SKIP
        assert "lacks CONFIG_CFS_BANDWIDTH (cgroup cpu.max)" in rec.verdict.findings[0].message


def test_a_hand_made_cpu_max_op_is_checked_when_planned():
    from ktstr.spec.scenario import OpKind

    raw = Op(kind=OpKind.SET_CPU_MAX, name="a", value=-5)  # not through Op.set_cpu_max
    s = Scenario(name="raw", description="", steps=(Step(ops=(Op.add(CgroupDef("a")), raw)),))
    with pytest.raises(ConfigError, match="set_cpu_max a: cpu_max must be 0"):
        resolve(s, T, 1.0)
