import json

import pytest

from ktstr.errors import ConfigError
from ktstr.spec.catalog import CATALOG, SCENARIOS
from ktstr.spec.plan import Plan, resolve
from ktstr.spec.scenario import CgroupDef, CpusetSpec, HoldSpec, Op, OpKind, Scenario, Step
from ktstr.spec.serde import from_data, to_data
from ktstr.spec.topology import Topology
from ktstr.spec.work import Affinity, AffinityMode, SchedPolicy, Work

T = Topology.parse("1n2l2c2t")  # 8 CPUs, LLC0 = 0-3, LLC1 = 4-7


def test_cpusets_resolve():
    assert CpusetSpec.llc(1).resolve(T) == (4, 5, 6, 7)
    assert CpusetSpec.disjoint(0, 2).resolve(T) == (0, 1, 2, 3)  # LLC-aligned
    assert CpusetSpec.disjoint(1, 4).resolve(T) == (2, 3)
    assert CpusetSpec.disjoint(2, 3).resolve(T) == (5, 6, 7)  # 3 does not divide 2 LLCs
    a, b = CpusetSpec.overlapping(0, 2).resolve(T), CpusetSpec.overlapping(1, 2).resolve(T)
    assert set(a) & set(b) and set(a) | set(b) == set(range(8))
    assert CpusetSpec.range(2, 5).resolve(T) == (2, 3, 4, 5)
    assert CpusetSpec.exact(7, 1, 1).resolve(T) == (1, 7)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CpusetSpec.disjoint(2, 2), "index must be in 0..of-1"),
        (lambda: CpusetSpec.exact(3, 8).resolve(T), "CPUs [8] do not exist"),
        (lambda: CpusetSpec.llc(2).resolve(T), "llc index 2 >= 2 LLCs"),
        (lambda: CpusetSpec.range(0, 8).resolve(T), "exceeds CPUs 0-7"),
        (lambda: CpusetSpec.disjoint(0, 9).resolve(T), "cannot split 8 CPUs into 9"),
        (lambda: CgroupDef(name="p", workers=3, work=Work.pipe_io()), "paired, so workers"),
        (lambda: CgroupDef(name="a/b"), "without '/'"),
        (lambda: CgroupDef(name="n", nice=20), "nice must be -20..19"),
        (lambda: SchedPolicy.fifo(0), "priority must be 1..99"),
        (lambda: Work.bursty(0, 1), "burst_ms > 0"),
        (lambda: Work.mutex_contention(1), "contenders >= 2"),
        (lambda: HoldSpec.fraction(1.5), "fraction must be in (0, 1]"),
        (lambda: Affinity(mode=AffinityMode.RANDOM_SUBSET), "count >= 1"),
    ],
)
def test_invalid_specs_name_the_field(make, message):
    with pytest.raises(
        ConfigError,
        match=message.replace("(", r"\(")
        .replace(")", r"\)")
        .replace("[", r"\[")
        .replace("]", r"\]"),
    ):
        make()


def test_ops_must_reference_live_cgroups():
    bad = Scenario(name="s", description="", steps=(Step(ops=(Op.remove("ghost"),)),))
    with pytest.raises(ConfigError, match=r"step 0: remove_cgroup: no cgroup 'ghost'"):
        resolve(bad, T)
    dup = Scenario.of_defs("d", [CgroupDef(name="a"), CgroupDef(name="a")])
    with pytest.raises(ConfigError, match="already exists"):
        resolve(dup, T)
    late = Scenario(
        name="s",
        description="",
        steps=(
            Step(ops=(Op.add(CgroupDef(name="a")),)),
            Step(ops=(Op.remove("a"),)),
            Step(ops=(Op.stop("a"),)),
        ),
    )
    with pytest.raises(ConfigError, match="step 2: stop: no cgroup 'a'"):
        resolve(late, T)


def test_plan_tracks_cpusets_and_affinities():
    s = Scenario(
        name="s",
        description="",
        steps=(
            Step(
                ops=(
                    Op.add(
                        CgroupDef(
                            name="a",
                            workers=2,
                            cpuset=CpusetSpec.llc(0),
                            affinity=Affinity(mode=AffinityMode.SINGLE_CPU),
                        )
                    ),
                    Op.add(CgroupDef(name="b", cpuset=CpusetSpec.llc(1))),
                ),
                hold=HoldSpec.fraction(0.5),
            ),
            Step(ops=(Op.swap_cpusets("a", "b"), Op.spawn("b", 2)), hold=HoldSpec.loop(0.5, 0.5)),
        ),
        duration_s=4.0,
    )
    plan = resolve(s, T)
    (add_a, add_b), (swap, spawn) = plan.steps[0].ops, plan.steps[1].ops
    assert add_a.cgroups[0].cpus == (0, 1, 2, 3)
    assert add_a.cgroups[0].affinities == ((0,), (1,))
    assert plan.steps[0].hold_s == 2.0 and plan.steps[1].loop_interval_s == 0.5
    assert add_b.cgroups[0].cpus == (4, 5, 6, 7) and add_b.cgroups[0].affinities == (None,)
    assert swap.kind is OpKind.SWAP_CPUSETS and spawn.count == 2


def test_nested_cgroups_flatten_parent_first():
    (step,) = resolve(SCENARIOS["nested_cgroups"], T).steps
    (add,) = step.ops
    assert [c.path for c in add.cgroups] == [
        "parent",
        "parent/child0",
        "parent/child1",
        "parent/child1/grandchild",
    ]


def test_random_subset_is_seeded_and_stable():
    aff = Affinity(mode=AffinityMode.RANDOM_SUBSET, count=3)
    first = [aff.resolve(T, tuple(range(8)), w, seed=1) for w in range(4)]
    assert first == [aff.resolve(T, tuple(range(8)), w, seed=1) for w in range(4)]
    assert all(len(c) == 3 and set(c) <= set(range(8)) for c in first)


def test_catalog_has_ten_valid_scenarios_that_survive_json():
    assert len(CATALOG) >= 10 and len(SCENARIOS) == len(CATALOG)
    for topo in (Topology.parse("1n2l2c1t"), Topology.parse("2n4l2c2t")):
        for sc in CATALOG:
            plan = resolve(sc, topo)
            wire = json.loads(json.dumps(to_data(plan)))
            assert from_data(Plan, wire) == plan, sc.name
