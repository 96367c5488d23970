import itertools

import pytest

from ktstr.errors import ConfigError
from ktstr.spec.gauntlet import Constraints, expand, select_for_budget, static_estimate
from ktstr.spec.scheduler import Flag, Profile, Scheduler
from ktstr.spec.topology import PRESET_LIST

SCHED = Scheduler(
    "my_sched",
    binary="scx_my_sched",
    topology="1n2l4c1t",
    flags=[
        Flag("llc", args=["--enable-llc"]),
        Flag("steal", args=["--enable-stealing"], requires=["llc"]),
        Flag("kick", args=["--kick"], excludes=["steal"]),
    ],
)


def names(profiles):
    return [p.name for p in profiles]


def test_profiles_respect_requires_and_excludes():
    assert names(SCHED.profiles()) == ["base", "llc", "kick", "llc+steal", "llc+kick"]
    assert SCHED.argv_for(Profile(("llc", "steal"))) == ("--enable-llc", "--enable-stealing")


def test_bad_flag_references_are_rejected():
    with pytest.raises(ConfigError, match="unknown flag"):
        Scheduler("s", flags=[Flag("a", requires=["nope"])])
    with pytest.raises(ConfigError, match="duplicate"):
        Scheduler("s", flags=[Flag("a"), Flag("a")])


def test_pairwise_covers_every_valid_pair_with_fewer_profiles():
    flags = [Flag(f"f{i}", args=[f"--f{i}"]) for i in range(7)]
    many = Scheduler("s", flags=flags)
    full, pw = many.profiles(), many.pairwise()
    assert len(full) == 128 and len(pw) <= 12
    for a, b in itertools.combinations([f.name for f in flags], 2):
        for sa, sb in itertools.product((False, True), repeat=2):
            assert any((a in p.flags) == sa and (b in p.flags) == sb for p in pw), (a, sa, b, sb)
    assert all(many.valid(set(p.flags)) for p in pw)
    constrained = SCHED.pairwise()
    assert all(SCHED.valid(set(p.flags)) for p in constrained)


def test_expand_ids_and_constraints():
    cases = expand("t", Constraints(min_llcs=2, max_cpus=16, requires_smt=True), SCHED)
    presets = {c.preset for c in cases}
    assert presets and all(
        p.topology.llcs >= 2 and p.topology.cpus <= 16 and p.topology.smt
        for p in PRESET_LIST
        if p.name in presets
    )
    assert {c.profile.name for c in cases} == set(names(SCHED.profiles()))
    assert cases[0].id == f"gauntlet/t/{cases[0].preset}/base"
    only = expand("t", Constraints(required_flags=("llc",), excluded_flags=("kick",)), SCHED)
    assert {c.profile.name for c in only} == {"llc", "llc+steal"}
    capped = expand("t", Constraints(), None, max_cpus=8)
    assert all(c.topology.cpus <= 8 for c in capped) and {c.profile.name for c in capped} == {
        "base"
    }
    with pytest.raises(ConfigError, match="unknown flag"):
        expand("t", Constraints(required_flags=("nope",)), SCHED)


def test_budget_never_exceeded_and_prefers_uncovered_presets():
    cases = expand("t", Constraints(max_cpus=16), SCHED)
    cost = {c.id: static_estimate(c, 2.0) for c in cases}
    for budget in (15.0, 40.0, 120.0, 600.0):
        chosen = select_for_budget(cases, budget, cost)
        assert sum(cost[c.id] for c in chosen) <= budget
        presets = [c.preset for c in chosen]
        # a new preset always beats another profile of a seen one, while one fits
        first_repeat = next((i for i, p in enumerate(presets) if p in presets[:i]), len(presets))
        unseen_fitting = [
            c
            for c in cases
            if c.preset not in presets[:first_repeat]
            and cost[c.id] <= budget - sum(cost[x.id] for x in chosen)
        ]
        if first_repeat < len(presets):
            assert not unseen_fitting
    everything = select_for_budget(cases, 1e9, cost)
    assert {c.preset for c in everything} == {c.preset for c in cases}
    assert {f for c in everything for f in c.profile.flags} == {"llc", "steal", "kick"}
    assert len(everything) < len(cases)  # coverage, not the whole power set
    with pytest.raises(ConfigError, match="--budget"):
        select_for_budget(cases, 0, cost)


def test_measured_costs_win_over_estimates():
    cases = expand("t", Constraints(max_cpus=4), None)
    cost = {c.id: 1000.0 for c in cases}
    cheap = cases[-1]
    cost[cheap.id] = 5.0
    assert select_for_budget(cases, 10.0, cost) == [cheap]
