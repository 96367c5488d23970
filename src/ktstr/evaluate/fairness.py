"""Pure: each worker's ideal CPU share, and how far its actual share fell
short of it.

A scheduler is fair when every CPU-bound worker gets what a weighted max-min
fair allocation gives it, over the CPUs it may run on. That allocation is
computed here by progressive filling: all shares grow in proportion to their
weights until a worker reaches its demand (one CPU) or a set of CPUs is used
up by the workers confined to it (Hall's condition: the binding sets are
unions of the workers' CPU sets that overlap); those freeze, the rest grow on.

Two models, because schedulers differ in what they are fair to:

- **per task** (``flat``): every worker competes by its own weight (nice);
  a scheduler that ignores cgroups (scx_simple) aims at this;
- **per cgroup** (``group``): cgroups compete by ``cpu.weight`` level by
  level, then workers within one by nice, as EEVDF with the cpu controller
  does.

A worker is judged against the lower of its two ideals (or the group one
alone where the scenario asks for cgroup weights to be honoured), so a
scheduler is never failed for choosing either model. Workers that are not
CPU-bound (sleepers, ping-pong, churn) are not judged; they count with the
share they actually used.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Beyond this many distinct binding sets the oracle declines (no verdict).
MAX_SETS = 4096
EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Claim:
    """A competitor: what it may run on, its weight, and its demand in CPUs."""

    key: Hashable
    cpus: frozenset[int]
    weight: float
    demand: float


def _binding_sets(sets: Iterable[frozenset[int]]) -> list[frozenset[int]] | None:
    """Every union of overlapping CPU sets (disjoint unions never bind
    tighter than their parts); None when there are too many."""
    base = sorted(set(sets), key=sorted)
    seen: set[frozenset[int]] = set(base)
    frontier = list(base)
    while frontier:
        nxt = []
        for u in frontier:
            for s in base:
                if u & s and not s <= u:
                    v = u | s
                    if v not in seen:
                        seen.add(v)
                        nxt.append(v)
            if len(seen) > MAX_SETS:
                return None
        frontier = nxt
    return list(seen)


def max_min(
    claims: Sequence[Claim], capacity: Callable[[frozenset[int]], float] = len
) -> dict[Hashable, float] | None:
    """Weighted max-min fair shares (in CPUs) of ``claims``; ``capacity`` of
    a CPU set is its size unless given. None when the oracle declines."""
    sets = _binding_sets(c.cpus for c in claims if c.cpus)
    if sets is None:
        return None
    share: dict[Hashable, float] = {c.key: 0.0 for c in claims if not c.cpus or c.demand <= 0}
    active = [c for c in claims if c.key not in share]
    within = {u: [c for c in claims if c.cpus and c.cpus <= u] for u in sets}
    while active:
        level = min(c.demand / c.weight for c in active)
        tight: list[Claim] = []
        for u, inside in within.items():
            w = sum(c.weight for c in inside if c.key not in share)
            if w <= 0:
                continue
            used = sum(share[c.key] for c in inside if c.key in share)
            t = max(0.0, capacity(u) - used) / w
            if t < level - EPS:
                level, tight = t, [c for c in inside if c.key not in share]
            elif abs(t - level) <= EPS:
                tight += [c for c in inside if c.key not in share]
        capped = [c for c in active if abs(c.demand / c.weight - level) <= EPS]
        for c in {id(c): c for c in [*tight, *capped]}.values():
            share[c.key] = min(c.demand, c.weight * level)
        active = [c for c in active if c.key not in share]
    return share


@dataclass(frozen=True, slots=True)
class Competitor:
    """One worker as the oracle sees it."""

    key: Hashable
    cpus: frozenset[int]  # its cpuset, narrowed by its affinity
    weight: float  # its nice weight
    #: The cgroup entities above it, outermost first: (path, cpu.weight).
    groups: tuple[tuple[str, int], ...]
    demand: float  # 1.0 for a CPU-bound worker, else what it used


def ideal_shares(
    workers: Sequence[Competitor],
) -> tuple[dict[Hashable, float] | None, dict[Hashable, float] | None]:
    """(per-task, per-cgroup) ideal shares of ``workers``, in CPUs; either is
    None where the oracle declines."""
    flat = max_min([Claim(w.key, w.cpus, w.weight, w.demand) for w in workers])
    return flat, _group(workers, 0, None)


def _group(
    workers: Sequence[Competitor], depth: int, budget: float | None
) -> dict[Hashable, float] | None:
    """Shares of ``workers`` under one cgroup node: its children compete by
    weight; at the root for CPUs, below it for the node's ``budget``."""
    children: dict[tuple[str, Any], list[Competitor]] = {}
    for w in workers:
        node: tuple[str, Any] = w.groups[depth] if depth < len(w.groups) else ("", w.key)
        children.setdefault(node, []).append(w)
    claims = []
    for node, members in children.items():
        cpus = frozenset().union(*(m.cpus for m in members))
        weight = members[0].weight if node[0] == "" else float(node[1])
        demand = sum(m.demand for m in members)
        claims.append(Claim(node, cpus, weight, min(demand, len(cpus))))
    if budget is None:
        top = max_min(claims)
    elif len({c.cpus for c in claims}) == 1:  # one CPU set: the budget is the capacity
        top = max_min(claims, capacity=lambda _u: budget)
    else:
        return None  # siblings on different CPUs below the root: no model here
    if top is None:
        return None
    out: dict[Hashable, float] = {}
    for node, members in children.items():
        if node[0] == "":
            out[members[0].key] = top[node]
            continue
        sub = _group(members, depth + 1, top[node])
        if sub is None:
            return None
        out.update(sub)
    return out


@dataclass(frozen=True, slots=True)
class ShareJudgement:
    """The judged workers' actual over ideal share, and the worst of them."""

    ratios: dict[Hashable, float]
    worst: Hashable
    actual: float
    ideal: float


def judge(
    workers: Sequence[Competitor],
    actual: Mapping[Hashable, float],
    judged: Iterable[Hashable],
    *,
    group_only: bool = False,
) -> ShareJudgement | None:
    """Each judged worker's actual share over the lower of its ideals (the
    group ideal alone with ``group_only``); None when no model applies."""
    flat, group = ideal_shares(workers)
    if group_only:
        flat = None
    ratios: dict[Hashable, float] = {}
    ideals: dict[Hashable, float] = {}
    for k in judged:
        options = [m[k] for m in (flat, group) if m is not None and k in m]
        if not options or min(options) <= EPS:
            continue
        ideals[k] = min(options)
        ratios[k] = actual.get(k, 0.0) / ideals[k]
    if not ratios:
        return None
    worst = min(ratios, key=lambda k: (ratios[k], str(k)))
    return ShareJudgement(ratios, worst, actual.get(worst, 0.0), ideals[worst])
