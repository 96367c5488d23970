"""Pure: does an interactive task get the CPU soon after it wakes beside
hogs? ``max_interactive_ratio``: the p90 wake-up lateness of the run's
interactive workers over the hogs' mean timeslice (their time on a CPU per
time switched in, from schedstat). Below 0.5, schtest's bar for adaptive
priority, a woken interactive task waits well under one hog timeslice; at
1 it waits out whole slices, as under a scheduler that never preempts."""

from __future__ import annotations

from ktstr.evaluate.placement import Found
from ktstr.evaluate.stats import Group, percentile

INTERACTIVE = "interactive"


def interactive_ratio(groups: tuple[Group, ...], limit: float) -> Found:
    samples = [s for g in groups for s in g.samples if s.ok]
    lats = [x for s in samples if s.how.kind == INTERACTIVE for x in s.report.wake_lat_us]
    hogs = [s.report for s in samples if s.how.cpu_bound and s.report.timeslices > 0]
    if not lats or not hogs:
        why = "no interactive wake-ups" if not lats else "no hog with timeslices"
        return ("interactive", "info", f"not judged: {why}", {})
    slice_ms = sum(r.on_cpu_ms for r in hogs) / sum(r.timeslices for r in hogs)
    p90_ms = percentile(lats, 90) / 1000.0
    ratio = p90_ms / slice_ms if slice_ms > 0 else float("inf")
    ev = {"p90_wake_ms": round(p90_ms, 3), "hog_slice_ms": round(slice_ms, 3),
          "ratio": round(ratio, 3), "limit": limit, "wakeups": len(lats)}  # fmt: skip
    msg = (
        f"interactive wake-up p90 {p90_ms:.2f} ms over a hog timeslice of {slice_ms:.2f} ms: "
        f"ratio {ratio:.2f}"
    )
    if ratio > limit:
        return ("interactive", "fail", f"{msg} > {limit:g}", ev)
    return ("interactive", "info", msg, ev)
