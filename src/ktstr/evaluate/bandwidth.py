"""Pure: does a ``cpu.max``-limited cgroup stay within its quota?

``max_bandwidth_pct``: how far over its quota (CPUs' worth per period) a
cgroup's workers may run together, measured as their summed CPU time over
the time the cgroup held them (the longest of their runs, at least the
planned time). Judged only for runs whose competition is static (the
limit held from start to end). Whether the others got the rest is the share
oracle's part: while this check is on it counts the limit as a demand cap.

The kernel enforces cpu.max for its own classes (CONFIG_CFS_BANDWIDTH); a
sched_ext scheduler only if it implements ``ops.cgroup_set_bandwidth``, so
ktstr's defaults turn this check off under sched_ext (``defaults_for``).
"""

from __future__ import annotations

from ktstr.evaluate.placement import Found
from ktstr.evaluate.stats import Group, Sample


def capped(group: Group) -> tuple[float, list[Sample]]:
    """The group's cpu.max in CPUs (0 = none) and its reporting workers."""
    ok = [s for s in group.samples if s.ok]
    return max((s.how.cpu_max for s in ok), default=0.0), ok


def held(ok: list[Sample]) -> float:
    """How long the cgroup held its workers: the longest of their runs, at
    least the planned time (throttled workers take a while to stop: 6.2 s
    for a 5 s plan at 8 vCPUs under TCG), at most half as long again, so a
    report's own ``wall_s`` cannot dilute the usage."""
    plan = max(s.planned_s for s in ok)
    return max(1e-3, min(max(s.report.wall_s for s in ok), 1.5 * plan + 1.0), plan)


def bandwidth(groups: tuple[Group, ...], limit: float | None) -> list[Found]:
    out: list[Found] = []
    for g in groups:
        cap, ok = capped(g)
        if cap <= 0 or not ok:
            continue
        if limit is None:
            out.append(("bandwidth", "info", f"not judged for {g.name}: "
                        "max_bandwidth_pct is off (sched_ext schedulers enforce cpu.max only "
                        "if they implement it)", {"cgroup": g.name}))  # fmt: skip
            continue
        used = sum(s.cpu_used_s for s in ok) / held(ok)
        ev = {"cgroup": g.name, "used_cpus": round(used, 3), "cpu_max": cap, "limit_pct": limit}
        msg = f"{g.name} used {used:.2f} CPUs under cpu.max {cap:g}"
        if used > cap * (1 + limit / 100):
            out.append(("bandwidth", "fail", f"{msg} (over by more than {limit:g}%)", ev))
        else:
            out.append(("bandwidth", "info", msg, ev))
    return out
