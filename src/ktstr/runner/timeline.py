"""What happened when, on the host's clock (seconds since QEMU launched):
scenarios and their stimuli, the host's snapshots and BPF writes, and the
scheduler's exit; and which snapshot explains a failing run."""

from __future__ import annotations

from typing import Any

from ktstr.evaluate.verdict import Status, Verdict
from ktstr.runner.boot import GuestRun

#: Events a report prints (the last ones; result.json keeps them all).
SHOWN = 20


def timeline(run: GuestRun) -> list[dict[str, Any]]:
    ev = run.evidence
    events: list[tuple[float, str, str]] = []
    for sc in ev.scenarios:
        events.append((sc.started_at, "scenario", f"scenario {sc.start.name} started"))
        for st in sc.stimuli:
            events.append((sc.started_at + st.t_ms / 1000, "stimulus", _stimulus(st.op, st.detail)))
        if sc.ended_at is not None:
            events.append((sc.ended_at, "scenario", f"scenario {sc.start.name} ended"))
    snaps = run.snapshots
    if snaps is not None:
        for t in snaps.taken:
            m = t.meta
            events.append((m["at_s"], "snapshot", f"snapshot {m['name']} ({m['trigger']})"))
        for w in snaps.writes:
            what = f"host wrote {w['var']} = {w['value']}"
            what += f" (was {w['old']})" if "old" in w else f" - refused: {w.get('error', '')}"
            events.append((w["at_s"], "bpf_write", what))
        if snaps.exit_at is not None:
            what = "scheduler entered sched_ext's disable path"
            events.append((snaps.exit_at, "sched_exit", what))
    if ev.sched_exit is not None and ev.sched_exit_at is not None:
        reason = ev.sched_exit.reason or ev.sched_exit.exit_kind
        events.append((ev.sched_exit_at, "sched_exit", f"scheduler exited: {reason}"[:200]))
    events.sort(key=lambda e: e[0])
    return [{"at_s": round(at, 3), "kind": kind, "what": what} for at, kind, what in events]


def _stimulus(op: str, detail: Any) -> str:
    if isinstance(detail, dict) and detail:
        args = " ".join(f"{k}={v}" for k, v in list(detail.items())[:6])
        return f"{op} {args}"[:200]
    return op


def lines(events: list[dict[str, Any]]) -> tuple[str, ...]:
    return tuple(f"+{e['at_s']:7.3f}s {e['what']}" for e in events[-SHOWN:])


def explaining(run: GuestRun | None, verdict: Verdict) -> dict[str, Any] | None:
    """The snapshot that explains a failing run: the scheduler's exit, else
    the runnable-wait warning, else the last one taken."""
    if run is None or run.snapshots is None or verdict.status is not Status.FAIL:
        return None
    taken = [t.meta for t in run.snapshots.taken if "file" in t.meta]
    for trigger in ("scheduler_exit", "runnable_wait"):
        found = next((m for m in taken if m["trigger"] == trigger), None)
        if found is not None:
            return found
    return taken[-1] if taken else None


def phases(run: GuestRun | None, verdict_at: float) -> dict[str, float]:
    """Each phase's start in host seconds since QEMU launched (phases the run
    never reached are absent): where the time to a verdict goes."""
    if run is None:
        return {}
    ev, t = run.evidence, run.timings
    attached = next((at for at, lc in ev.lifecycle if lc.phase == "scheduler_attached"), None)
    ends = [sc.ended_at for sc in ev.scenarios if sc.ended_at is not None]
    at = {
        "qemu_start": 0.0,
        "kernel_start": t.kernel_start,
        "agent_ready": t.ready,
        "scheduler_attached": attached,
        "workload_start": ev.scenarios[0].started_at if ev.scenarios else None,
        "workload_end": max(ends) if ends else None,
        "reports_in": ev.reports_at or t.exit_frame,
        "qemu_exit": t.qemu_exit,
        "verdict_written": verdict_at,
    }
    return {k: round(max(0.0, v), 3) for k, v in at.items() if v is not None}
