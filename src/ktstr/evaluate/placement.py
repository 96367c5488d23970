"""Pure: where the workers ran, judged from the host monitor's samples.

Each check is on only where it means something; otherwise the verdict says
why it was not judged. All count samples of the workload after it settled
(the first fifth of each scenario is left out). A check fails only where
its samples show the share under the floor (the upper bound of a one-sided
95 % Wilson interval is below it): 22 of 24 samples (92 %) do not show a
scheduler under 95 %, 80 of 100 do.

* ``spread_out`` (``min_spread_out_pct``): CPU-bound workers, fewer than the
  cores they may use, should each get a core. A sample is good when no core
  runs two of them while one of their cores is idle, and none of their LLCs
  is idle while a CPU of another has tasks queued behind the running one.
* ``together`` (``min_together_pct``): workers that talk (the two of a pair
  of a paired kind; a producer/consumer cgroup) should share an LLC where
  they may run on several. A pair's workers count every wake-up by their
  partner by where both ran (``WorkerReport.wake_places``): the share is of
  those wake-ups, the whole run's, exact rather than sampled. A team
  without such counts is judged from the samples: a worker is placed at the
  CPU it was last seen on (running or queued); a sample counts for a team
  once all its members were placed and one of them is seen in it; it is
  good when they share an LLC.
* ``numa_local`` (``min_numa_local_pct``): a worker whose memory is on a
  known node (``WorkerReport.mem_node``) and who may run on several nodes
  should run on its memory's node: counted per sample it is seen running.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ktstr.evaluate.monitor import cpu_load
from ktstr.evaluate.stats import Group, wilson
from ktstr.inspect.sample import CpuState, Sample
from ktstr.spec.topology import Topology, format_cpus

#: Fewer judged samples than this and a placement check says nothing.
MIN_SAMPLES = 10
#: Fewer counted wake-ups than this and a team is judged from samples.
MIN_WAKES = 100

#: A check fails only when it is this sure the share is under its floor.
#: Samples 0.1 s apart are not independent (a split the scheduler undoes in
#: 0.3 s shows in 3 of them), so the bound errs towards failing.
CONFIDENCE = 0.95

#: A team member last seen more samples ago than this is not placed: the
#: monitor sees only running and sched_ext-queued tasks, and a pair that
#: shares one CPU shows one member at a time, so an old sighting of the
#: other says little about where it is now. Under EEVDF a pipe pair's
#: members migrate about 3 times a second each: with sightings up to 0.5 s
#: old, 5 runs of 15 s at 4 vCPUs read 86-99 % together, yet every sample
#: that saw both members at once (2-13 per run) saw them on one LLC; with
#: sightings up to 0.1 s old, 89-100 %.
FRESH_SAMPLES = 1

_NO_SAMPLES = "no monitor samples of the workload"

#: (check, class "fail" | "info", message, evidence)
Found = tuple[str, str, str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Placed:
    """A worker the placement checks follow."""

    pid: int
    who: str  # cg0[3]
    allowed: tuple[int, ...]
    cpu_bound: bool = False
    team: str = ""  # workers of one team talk to each other
    mem_node: int = -1
    #: (partner's CPU, own CPU, wake-ups): where the partner's wake-ups found both
    wakes: tuple[tuple[int, int, int], ...] = ()
    woken: int = 0  # wake-ups it measured a latency for (``wake_samples``)


@dataclass(frozen=True, slots=True)
class Placement:
    topology: Topology
    workers: tuple[Placed, ...]
    samples: tuple[Sample, ...]  # the workload's, settled


def placed(groups: Iterable[Group]) -> tuple[Placed, ...]:
    """The reported workers the placement checks can follow: those that ran
    their work in their own task (not through threads or children)."""
    return tuple(
        Placed(
            pid=s.report.pid,
            who=f"{g.name}[{s.report.index}]",
            allowed=tuple(sorted(s.cpus)),
            cpu_bound=s.how.cpu_bound,
            team=s.how.team,
            mem_node=s.report.mem_node,
            wakes=tuple((w.waker_cpu, w.cpu, w.count) for w in s.report.wake_places),
            woken=s.report.wake_samples,
        )
        for g in groups
        for s in g.samples
        if s.ok and s.report.pid > 0 and not s.how.opaque
    )


def settled(
    samples: Iterable[Sample], windows: Iterable[tuple[float, float]]
) -> tuple[Sample, ...]:
    """Samples inside a scenario's window (host seconds), past its first fifth."""
    spans = [(a + 0.2 * (b - a), b) for a, b in windows if b > a]
    return tuple(s for s in samples if any(a <= s.t <= b for a, b in spans))


def _busy(c: CpuState) -> bool:
    return not c.idle and c.curr_pid != 0


def _verdict(
    check: str,
    good: int,
    floor: float,
    total: int,
    what: str,
    *,
    unit: str = "samples",
    **ev: Any,
) -> Found:
    """Fail only where the samples show the share below ``floor``: the upper
    one-sided bound (``CONFIDENCE``) of its Wilson interval is under it."""
    pct = 100.0 * good / total
    upper = 100.0 * wilson(good, total, 2 * CONFIDENCE - 1)[1]
    ev = {"pct": round(pct, 1), "upper_pct": round(upper, 1), "min_pct": floor,
          unit.replace("-", "_"): total, **ev}  # fmt: skip
    msg = f"{what} in {pct:.0f}% of {total} {unit}"
    if upper < floor:
        return (check, "fail", f"{msg} (want >= {floor:g}%; at most {upper:.1f}%)", ev)
    if pct < floor:
        msg += f" (under {floor:g}%, but {total} {unit} cannot show it: up to {upper:.1f}%)"
    return (check, "info", msg, ev)


def _declined(check: str, why: str) -> Found:
    return (check, "info", f"not judged: {why}", {})


def spread_out(p: Placement, floor: float) -> Found:
    topo, spinners = p.topology, [w for w in p.workers if w.cpu_bound]
    allowed = sorted({c for w in spinners for c in w.allowed if c < topo.cpus})
    cores = {topo.core_cpus(c) for c in allowed}
    if not spinners or len(spinners) >= len(cores):
        return _declined("spread_out", f"{len(spinners)} CPU-bound workers for {len(cores)} cores")
    if not p.samples:
        return _declined("spread_out", _NO_SAMPLES)
    pids = {w.pid for w in spinners}
    llcs = {topo.llc_of(c) for c in allowed}
    bad = total = 0
    first: dict[str, Any] = {}
    for s in p.samples:
        if len(s.cpus) < topo.cpus:
            continue
        running = {c for c in allowed if s.cpus[c].curr_pid in pids}
        if not running:
            continue
        total += 1
        idle_core = any(all(not _busy(s.cpus[c]) for c in core) for core in cores)
        doubled = [core for core in cores if len(running & set(core)) > 1]
        idle_llc = any(
            all(not _busy(s.cpus[c]) for c in topo.llc_cpus(x) if c in allowed) for x in llcs
        )
        scx = s.scx.enable_state == "SCX_ENABLED"
        queued = [c for c in allowed if cpu_load(s.cpus[c], scx) > 1]
        if (doubled and idle_core) or (idle_llc and queued):
            bad += 1
            first = first or {
                "at_s": round(s.t, 2),
                "doubled_cores": [format_cpus(core) for core in doubled],
                "queued_cpus": format_cpus(queued),
            }
    if total < MIN_SAMPLES:
        return _declined("spread_out", f"{total} samples with a worker running")
    what = f"{len(spinners)} spinners on {len(cores)} cores had a core each"
    return _verdict("spread_out", total - bad, floor, total, what, first_bad=first)


def _seen(s: Sample) -> dict[int, int]:
    """pid -> CPU for every task a sample shows, running or queued."""
    at = {t.pid: t.cpu for t in s.waiting}
    at.update({c.curr_pid: i for i, c in enumerate(s.cpus) if _busy(c)})
    return at


def together(p: Placement, floor: float) -> Found:
    topo = p.topology
    teams: dict[str, list[Placed]] = {}
    for w in p.workers:
        if w.team:
            teams.setdefault(w.team, []).append(w)
    teams = {
        k: ws
        for k, ws in teams.items()
        if len(ws) > 1 and len({topo.llc_of(c) for w in ws for c in w.allowed}) > 1
    }
    if not teams:
        return _declined("together", "no talking workers that may run on several LLCs")
    counted = {k: ws for k, ws in teams.items() if _wakes(ws) >= MIN_WAKES}
    found = [_together_counted(topo, counted, floor)] if counted else []
    sampled = {k: ws for k, ws in teams.items() if k not in counted}
    if sampled:
        found.append(_together_sampled(p, sampled, floor))
    failed = [f for f in found if f[1] == "fail"]
    if failed or len(found) == 1:
        return (failed or found)[0]
    return ("together", "info", "; ".join(f[2] for f in found), found[0][3])


def _wakes(ws: Iterable[Placed]) -> int:
    return sum(n for w in ws for _, _, n in w.wakes)


def _together_counted(topo: Topology, teams: dict[str, list[Placed]], floor: float) -> Found:
    """From the wake-ups each worker counted by its partner's CPU and its own.
    The counts come from the guest, so only plausible ones can be good: both
    CPUs where the two may run, and no more than the wake-ups the worker
    measured; the rest count as apart."""
    good = total = 0
    apart: dict[tuple[str, str, int, int], int] = {}
    for name, ws in teams.items():
        for w in ws:
            others = {c for o in ws if o is not w for c in o.allowed}
            plausible = sum(n for _, _, n in w.wakes) <= w.woken
            for waker, cpu, n in w.wakes:
                total += n
                if (plausible and waker in others and cpu in w.allowed
                        and topo.llc_of(waker) == topo.llc_of(cpu)):  # fmt: skip
                    good += n
                else:
                    apart[(name, w.who, waker, cpu)] = n
    worst = max(apart, key=apart.__getitem__, default=None)
    ev: dict[str, Any] = {}
    if worst is not None:
        ev["most_apart"] = {"team": worst[0], "woken": worst[1], "waker_cpu": worst[2],
                            "cpu": worst[3], "wake_ups": apart[worst]}  # fmt: skip
    what = f"{len(teams)} talking team(s) shared an LLC"
    return _verdict("together", good, floor, total, what, unit="wake-ups", **ev)


def _together_sampled(p: Placement, teams: dict[str, list[Placed]], floor: float) -> Found:
    topo = p.topology
    if not p.samples:
        return _declined("together", _NO_SAMPLES)
    last: dict[int, tuple[int, int]] = {}  # pid -> (sample index, CPU) of its last sighting
    good = total = 0
    apart: dict[str, Any] = {}
    for i, s in enumerate(p.samples):
        seen = _seen(s)
        last.update((pid, (i, cpu)) for pid, cpu in seen.items() if cpu < topo.cpus)
        for name, ws in teams.items():
            if not any(w.pid in seen for w in ws) or not all(
                w.pid in last and i - last[w.pid][0] <= FRESH_SAMPLES for w in ws
            ):
                continue
            total += 1
            where = {w.who: last[w.pid][1] for w in ws}
            if len({topo.llc_of(c) for c in where.values()}) == 1:
                good += 1
            else:
                apart = apart or {"at_s": round(s.t, 2), "team": name, "cpus": where}
    if total < MIN_SAMPLES:
        return _declined("together", f"{total} samples placed a whole team")
    what = f"{len(teams)} talking team(s) shared an LLC"
    return _verdict("together", good, floor, total, what, first_apart=apart)


def numa_local(p: Placement, floor: float) -> Found:
    topo = p.topology
    ws = [
        w
        for w in p.workers
        if 0 <= w.mem_node < topo.numa_nodes and len({topo.node_of(c) for c in w.allowed}) > 1
    ]
    if not ws:
        return _declined("numa_local", "no worker with its memory on a node may leave it")
    if not p.samples:
        return _declined("numa_local", _NO_SAMPLES)
    local = total = 0
    away: dict[str, Any] = {}
    for s in p.samples:
        on = {c.curr_pid: i for i, c in enumerate(s.cpus) if _busy(c)}
        for w in ws:
            cpu = on.get(w.pid)
            if cpu is None:
                continue
            total += 1
            if topo.node_of(cpu) == w.mem_node:
                local += 1
            else:
                away = away or {"at_s": round(s.t, 2), "worker": w.who, "cpu": cpu,
                                "mem_node": w.mem_node}  # fmt: skip
    if total < MIN_SAMPLES:
        return _declined("numa_local", f"{total} samples saw such a worker running")
    what = f"{len(ws)} memory-bound workers ran on their memory's node"
    return _verdict("numa_local", local, floor, total, what, first_away=away)


CHECKS = (
    ("min_spread_out_pct", spread_out),
    ("min_together_pct", together),
    ("min_numa_local_pct", numa_local),
)


def placement_findings(p: Placement | None, limits: dict[str, float]) -> list[Found]:
    """The placement checks ``limits`` turns on (threshold name -> floor %)."""
    out: list[Found] = []
    for name, check in CHECKS:
        if name not in limits:
            continue
        if p is None:
            out.append(_declined(check.__name__, _NO_SAMPLES))
        else:
            out.append(check(p, limits[name]))
    return out
