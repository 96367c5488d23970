"""Pure: worker samples -> per-cgroup and run-wide statistics.

A ``Sample`` is a worker's validated report plus what the host itself knows
of that worker: the CPUs its cgroups allowed and how long it was planned to
run (``spec/ledger.py``). Rates and shares are taken over the planned time,
never over a time the guest reports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from ktstr.protocol.messages import WorkerReport
from ktstr.spec.ledger import Terms


@dataclass(frozen=True, slots=True)
class Sample:
    report: WorkerReport
    allowed: tuple[int, ...]
    planned_s: float
    #: The CPUs the worker pins itself to, if the plan gives it an affinity.
    affinity: tuple[int, ...] | None = None
    #: How it competes (fairness judgements).
    how: Terms = field(default_factory=Terms)

    @property
    def terms(self) -> tuple[Any, ...]:
        """What it competes on: workers with equal terms (CPUs, pinning, part
        they play, when and how long they ran, where they ended) should fare
        alike."""
        h = self.how
        return (self.allowed, self.affinity, h.role, round(h.start_s, 3), self.planned_s,
                h.end_cgroup)  # fmt: skip

    @property
    def ok(self) -> bool:
        return self.report.error is None

    @property
    def cpus(self) -> frozenset[int]:
        """Where it may run: its cpuset, narrowed by its affinity."""
        if self.affinity is None:
            return frozenset(self.allowed)
        return frozenset(self.allowed) & frozenset(self.affinity) or frozenset(self.allowed)

    @property
    def share(self) -> float:
        """CPUs it used on average over its planned run (0..1)."""
        return max(0.0, min(1.0, self.cpu_used_s / self.seconds))

    @property
    def cpu_used_s(self) -> float:
        """Its time on a CPU: schedstat's, else its own rusage."""
        return self.report.on_cpu_ms / 1000 or self.report.cpu_s

    @property
    def seconds(self) -> float:
        """The time rates are taken over: the planned run, at least 1 ms."""
        return max(self.planned_s, 1e-3)


@dataclass(frozen=True, slots=True)
class Group:
    """The samples of one cgroup of one scenario."""

    name: str
    samples: tuple[Sample, ...]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def off_cpu_pct(s: Sample) -> float:
    """Share of the worker's planned time it was not on a CPU."""
    return 100.0 * (1.0 - s.share)


@dataclass(frozen=True, slots=True)
class CgroupStats:
    name: str
    workers: int
    cpus: tuple[int, ...]
    spread_pct: float
    max_gap_ms: float
    max_gap_cpu: int
    max_gap_at_ms: float
    migrations: int
    iterations: int
    work_units: int
    wake_p50_us: float
    wake_p99_us: float
    wake_samples: int
    errors: tuple[str, ...] = ()
    allowed: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class ShareStats:
    """The fairness oracle's view: the worst worker's actual and ideal CPU
    share, and the 10th percentile of actual over ideal across workers."""

    worst: str
    actual: float
    ideal: float
    p10_ratio: float
    judged: int


@dataclass(frozen=True, slots=True)
class RunStats:
    cgroups: tuple[CgroupStats, ...] = field(default_factory=tuple)
    share: ShareStats | None = None

    @property
    def workers(self) -> int:
        return sum(c.workers for c in self.cgroups)

    @property
    def cpus(self) -> tuple[int, ...]:
        return tuple(sorted({c for cg in self.cgroups for c in cg.cpus}))

    @property
    def migrations(self) -> int:
        return sum(c.migrations for c in self.cgroups)

    @property
    def worst_spread(self) -> float:
        return max((c.spread_pct for c in self.cgroups), default=0.0)

    @property
    def worst_gap(self) -> CgroupStats | None:
        return max(self.cgroups, key=lambda c: c.max_gap_ms, default=None)


def cgroup_stats(name: str, samples: Sequence[Sample]) -> CgroupStats:
    ok = [s for s in samples if s.ok]
    worst = max(ok, key=lambda s: s.report.max_gap_ms, default=None)
    lats = [x for s in ok for x in s.report.wake_lat_us]
    allowed = sorted({c for s in samples for c in s.allowed})
    return CgroupStats(
        name=name,
        workers=len(samples),
        cpus=tuple(sorted({c for s in ok for c in s.report.cpus})),
        spread_pct=spread(ok),
        max_gap_ms=worst.report.max_gap_ms if worst else 0.0,
        max_gap_cpu=worst.report.max_gap_cpu if worst else -1,
        max_gap_at_ms=worst.report.max_gap_at_ms if worst else 0.0,
        migrations=sum(s.report.migrations for s in ok),
        iterations=sum(s.report.iterations for s in ok),
        work_units=sum(s.report.work_units for s in ok),
        wake_p50_us=percentile(lats, 50),
        wake_p99_us=percentile(lats, 99),
        wake_samples=sum(s.report.wake_samples for s in ok),
        errors=tuple(str(s.report.error) for s in samples if not s.ok),
        allowed=tuple(allowed) if allowed else None,
    )


def _equal_terms(ok: Sequence[Sample]) -> list[list[Sample]]:
    """Workers on equal terms (same cpuset, pinning, role, start...), in
    buckets of two or more: workers pinned to different CPUs face different
    competition by design, so comparing them says nothing about fairness."""
    by_terms: dict[Any, list[Sample]] = {}
    for s in ok:
        by_terms.setdefault(s.terms, []).append(s)
    return [v for v in by_terms.values() if len(v) > 1]


def spread(ok: Sequence[Sample]) -> float:
    """Off-CPU % spread (max - min) among workers on equal terms."""
    offs = [[off_cpu_pct(s) for s in v] for v in _equal_terms(ok)]
    return max((max(v) - min(v) for v in offs), default=0.0)


def unfair_spread(
    ok: Sequence[Sample], max_pct: float, min_ratio: float | None
) -> tuple[float, float] | None:
    """The widest off-CPU spread among workers on equal terms that is over
    ``max_pct`` points while the 10th percentile of their CPU shares is
    under ``min_ratio`` of their mean (schtest's bar for equal weights;
    ``None``: the spread alone), as (spread, ratio); None when there is none.

    Both, because each alone misleads: in points, workers that each get
    most of their due differ widely when per-CPU queues split them unevenly
    (12 busy tasks on 8 CPUs: 2.2 s against 3.0 s of CPU under EEVDF), and
    as a ratio, workers that sleep nearly always differ by a factor from
    noise (10 ms against 25 ms).
    """
    worst: tuple[float, float] | None = None
    for v in _equal_terms(ok):
        offs = [off_cpu_pct(s) for s in v]
        width = max(offs) - min(offs)
        shares = [s.share for s in v]
        mean = sum(shares) / len(shares)
        ratio = percentile(shares, 10) / mean if mean > 0 else 1.0
        unfair = width > max_pct and (min_ratio is None or ratio < min_ratio)
        if unfair and (worst is None or width > worst[0]):
            worst = (width, ratio)
    return worst


def run_stats(groups: Iterable[Group]) -> RunStats:
    return RunStats(cgroups=tuple(cgroup_stats(g.name, g.samples) for g in groups))


def format_stats(stats: RunStats) -> list[str]:
    """The stats block ktstr users know."""
    worst = stats.worst_gap
    lines = [
        f"{stats.workers} workers, {len(stats.cpus)} cpus, {stats.migrations} migrations, "
        f"worst_spread={stats.worst_spread:.1f}%, "
        f"worst_gap={worst.max_gap_ms if worst else 0:.0f}ms"
    ]
    if stats.share is not None:
        sh = stats.share
        lines.append(
            f"  ideal share: p10 actual/ideal {sh.p10_ratio:.2f} over {sh.judged} CPU-bound "
            f"workers; worst {sh.worst}: {sh.actual:.2f} CPU of its ideal {sh.ideal:.2f}"
        )
    for c in stats.cgroups:
        line = (
            f"  {c.name}: workers={c.workers} cpus={len(c.cpus)} spread={c.spread_pct:.1f}% "
            f"gap={c.max_gap_ms:.0f}ms migrations={c.migrations} iter={c.iterations}"
        )
        if c.wake_samples:
            line += f" wake_p50={c.wake_p50_us:.0f}us wake_p99={c.wake_p99_us:.0f}us"
        lines.append(line)
    return lines


def wilson(passed: int, runs: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (a pass rate, a share of
    samples), two-sided at ``confidence``: SciPy's
    ``binomtest(...).proportion_ci(method="wilson")`` in closed form, since
    importing scipy.stats costs a second of every verdict that needs one."""
    if runs == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, z2 = passed / runs, z * z / runs
    center = (p + z2 / 2) / (1 + z2)
    half = z * math.sqrt(p * (1 - p) / runs + z2 / (4 * runs)) / (1 + z2)
    return max(0.0, center - half), min(1.0, center + half)
