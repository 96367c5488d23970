"""The ideal-share oracle: max-min fair shares over CPU sets, per task and
per cgroup, and the judgement of actual shares against them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ktstr.evaluate.fairness import Claim, Competitor, ideal_shares, judge, max_min

ALL2 = frozenset({0, 1})


def claims(*spec):
    return [Claim(i, frozenset(c), w, d) for i, (c, w, d) in enumerate(spec)]


def test_equal_spinners_share_the_cpus():
    got = max_min(claims(({0, 1}, 1, 1), ({0, 1}, 1, 1), ({0, 1}, 1, 1)))
    assert got == pytest.approx({0: 2 / 3, 1: 2 / 3, 2: 2 / 3})


def test_pinned_workers_share_their_cpu_and_the_free_one_gets_the_rest():
    got = max_min(claims(({0}, 1, 1), ({0}, 1, 1), ({0, 1}, 1, 1)))
    assert got == pytest.approx({0: 0.5, 1: 0.5, 2: 1.0})


def test_three_on_cpu0_and_one_free_on_both():
    # cpu0 is oversubscribed by its pinned workers; the free one takes cpu1 whole
    got = max_min(claims(({0}, 1, 1), ({0}, 1, 1), ({0}, 1, 1), ({0, 1}, 1, 1)))
    assert got == pytest.approx({0: 1 / 3, 1: 1 / 3, 2: 1 / 3, 3: 1.0})


def test_weights_and_demands():
    assert max_min(claims(({0}, 2, 1), ({0}, 1, 1))) == pytest.approx({0: 2 / 3, 1: 1 / 3})
    assert max_min(claims(({0, 1, 2, 3}, 1, 1))) == pytest.approx({0: 1.0})
    # a sleeper that used 0.2 leaves the rest to the spinner
    assert max_min(claims(({0}, 1, 0.2), ({0}, 1, 1))) == pytest.approx({0: 0.2, 1: 0.8})


def worker(key, cpus, groups, weight=1024.0, demand=1.0):
    return Competitor(key, frozenset(cpus), weight, tuple(groups), demand)


def test_cgroups_compete_by_weight_in_the_group_model():
    a = [worker(("a", i), {0}, [("a", 100)]) for i in range(2)]
    b = [worker(("b", 0), {0}, [("b", 100)])]
    flat, group = ideal_shares(a + b)
    assert flat == pytest.approx({("a", 0): 1 / 3, ("a", 1): 1 / 3, ("b", 0): 1 / 3})
    assert group == pytest.approx({("a", 0): 0.25, ("a", 1): 0.25, ("b", 0): 0.5})
    heavy = [worker(("h", 0), {0, 1}, [("h", 300)]), worker(("l", 0), {0, 1}, [("l", 100)])]
    heavy += [worker(("h", 1), {0, 1}, [("h", 300)]), worker(("l", 1), {0, 1}, [("l", 100)])]
    _, group = ideal_shares(heavy)
    assert group[("h", 0)] == pytest.approx(0.75) and group[("l", 0)] == pytest.approx(0.25)


def test_nested_cgroups_split_their_parents_share():
    ws = [worker(("p/c", 0), {0}, [("p", 100), ("p/c", 100)]),
          worker(("p/d", 0), {0}, [("p", 100), ("p/d", 300)]),
          worker(("q", 0), {0}, [("q", 100)])]  # fmt: skip
    _, group = ideal_shares(ws)
    assert group == pytest.approx({("p/c", 0): 0.125, ("p/d", 0): 0.375, ("q", 0): 0.5})


def test_judgement_takes_the_lower_ideal_and_names_the_worst():
    a = [worker(("a", i), {0}, [("a", 100)]) for i in range(2)]
    b = [worker(("b", 0), {0}, [("b", 100)])]
    actual = {("a", 0): 0.33, ("a", 1): 0.33, ("b", 0): 0.33}  # per-task fair
    j = judge(a + b, actual, actual)
    assert j is not None and min(j.ratios.values()) > 0.6  # fine under either model
    starved = {("a", 0): 0.05, ("a", 1): 0.45, ("b", 0): 0.5}
    j = judge(a + b, starved, starved)
    assert j.worst == ("a", 0) and j.ideal == pytest.approx(0.25) and j.ratios[j.worst] < 0.25
    by_group = judge(a + b, actual, actual, group_only=True)
    assert by_group.worst == ("b", 0) and by_group.ideal == pytest.approx(0.5)


@given(st.lists(st.tuples(st.frozensets(st.integers(0, 5), min_size=1),
                          st.floats(1, 100), st.floats(0, 1)), min_size=1, max_size=8))  # fmt: skip
def test_shares_are_feasible_and_within_demand(spec):
    got = max_min(claims(*spec))
    assert got is not None
    for i, (_cpus, _w, demand) in enumerate(spec):
        assert -1e-9 <= got[i] <= demand + 1e-9
    every = frozenset().union(*(c for c, _, _ in spec))
    assert sum(got.values()) <= len(every) + 1e-6
    for u in {c for c, _, _ in spec}:  # Hall: workers confined to u fit in u
        assert sum(got[i] for i, (c, _, _) in enumerate(spec) if c <= u) <= len(u) + 1e-6
