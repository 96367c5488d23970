"""Pure: worker reports -> per-cgroup and run-wide statistics."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def off_cpu_pct(report: dict[str, Any]) -> float:
    """Share of the worker's wall time it was not on a CPU."""
    wall = float(report.get("wall_s") or 0.0)
    if wall <= 0:
        return 100.0
    on = float(report.get("on_cpu_ms") or 0.0) / 1000 or float(report.get("cpu_s") or 0.0)
    return max(0.0, min(100.0, 100.0 * (1.0 - on / wall)))


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
class RunStats:
    cgroups: tuple[CgroupStats, ...] = field(default_factory=tuple)

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


def cgroup_stats(
    name: str, reports: Sequence[dict[str, Any]], allowed: Sequence[int] | None = None
) -> CgroupStats:
    ok = [r for r in reports if "error" not in r]
    offs = [off_cpu_pct(r) for r in ok]
    worst = max(ok, key=lambda r: float(r.get("max_gap_ms", 0.0)), default={})
    lats = [float(x) for r in ok for x in r.get("wake_lat_us", [])]
    return CgroupStats(
        name=name,
        workers=len(reports),
        cpus=tuple(sorted({int(c) for r in ok for c in r.get("cpus", [])})),
        spread_pct=(max(offs) - min(offs)) if offs else 0.0,
        max_gap_ms=float(worst.get("max_gap_ms", 0.0)),
        max_gap_cpu=int(worst.get("max_gap_cpu", -1)),
        max_gap_at_ms=float(worst.get("max_gap_at_ms", 0.0)),
        migrations=sum(int(r.get("migrations", 0)) for r in ok),
        iterations=sum(int(r.get("iterations", 0)) for r in ok),
        work_units=sum(int(r.get("work_units", 0)) for r in ok),
        wake_p50_us=percentile(lats, 50),
        wake_p99_us=percentile(lats, 99),
        wake_samples=sum(int(r.get("wake_samples", 0)) for r in ok),
        errors=tuple(str(r["error"]) for r in reports if "error" in r),
        allowed=tuple(allowed) if allowed is not None else None,
    )


def run_stats(
    groups: Iterable[tuple[str, Sequence[dict[str, Any]], Sequence[int] | None]],
) -> RunStats:
    return RunStats(cgroups=tuple(cgroup_stats(n, r, a) for n, r, a in groups))


def format_stats(stats: RunStats) -> list[str]:
    """The stats block ktstr users know."""
    worst = stats.worst_gap
    lines = [
        f"{stats.workers} workers, {len(stats.cpus)} cpus, {stats.migrations} migrations, "
        f"worst_spread={stats.worst_spread:.1f}%, "
        f"worst_gap={worst.max_gap_ms if worst else 0:.0f}ms"
    ]
    for c in stats.cgroups:
        line = (
            f"  {c.name}: workers={c.workers} cpus={len(c.cpus)} spread={c.spread_pct:.1f}% "
            f"gap={c.max_gap_ms:.0f}ms migrations={c.migrations} iter={c.iterations}"
        )
        if c.wake_samples:
            line += f" wake_p50={c.wake_p50_us:.0f}us wake_p99={c.wake_p99_us:.0f}us"
        lines.append(line)
    return lines
