"""Pure: (worker reports, run outcome, thresholds) -> Verdict.

Every finding has a check name, a class (``fail`` or ``info``), a one-line
message and its evidence. Run outcomes (scheduler not attached or dead,
guest or agent crash, timeouts, lost reports) are findings of their own and
take precedence: when the run itself broke, the worker checks say nothing.
"""

from __future__ import annotations

import dataclasses
import enum
import statistics
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from ktstr.evaluate.bandwidth import bandwidth, capped
from ktstr.evaluate.fairness import Competitor, judge
from ktstr.evaluate.latency import interactive_ratio
from ktstr.evaluate.payloads import PayloadResult, payload_findings
from ktstr.evaluate.placement import CHECKS as PLACEMENT_CHECKS
from ktstr.evaluate.placement import Found, Placement, placement_findings
from ktstr.evaluate.stats import (
    CgroupStats,
    Group,
    RunStats,
    Sample,
    ShareStats,
    percentile,
    run_stats,
    unfair_spread,
)
from ktstr.spec.checks import Scale, Thresholds, scaled
from ktstr.spec.topology import format_cpus


class Status(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    cls: str  # "fail" | "info"
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How the run itself ended."""

    sched_not_attached: str = ""  # reason
    sched_died: tuple[str, str] | None = None  # (exit kind, reason)
    sched_dump: str = ""
    sched_log_tail: str = ""
    guest_crash: str = ""  # kernel panic line
    agent_crash: str = ""
    timeout: tuple[str, str] | None = None  # (kind, message)
    infra: str = ""  # the host could not carry the run through
    skip_reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunData:
    groups: tuple[Group, ...] = ()
    outcome: Outcome = field(default_factory=Outcome)
    #: Damage to the evidence itself (malformed or torn frames, overflow):
    #: reported whatever else happened.
    integrity: tuple[Finding, ...] = ()
    #: Evidence the plan owed and did not get (reports, results, exit status):
    #: reported when the run did not already break for a clearer reason.
    completeness: tuple[Finding, ...] = ()
    #: What the host's monitor saw in the guest kernel (evaluate/monitor.py):
    #: failures, or, when the run broke anyway, its explanation (info).
    monitor: tuple[Finding, ...] = ()
    #: Every planned payload run the guest reported, measured.
    payloads: tuple[PayloadResult, ...] = ()
    #: Where the workers ran (the monitor's samples), for the placement checks.
    placement: Placement | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    status: Status
    findings: tuple[Finding, ...]
    stats: RunStats
    thresholds: Thresholds  # as applied (after scaling)
    scale: Scale
    payloads: tuple[PayloadResult, ...] = ()

    @property
    def failures(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.cls == "fail")


def _fail(check: str, message: str, **evidence: Any) -> Finding:
    return Finding(check, "fail", message, evidence)


def outcome_findings(o: Outcome) -> list[Finding]:
    out = []
    if o.sched_not_attached:
        out.append(
            _fail(
                "scheduler_not_attached",
                f"scheduler not attached: {o.sched_not_attached}",
                output=o.sched_dump,
            )
        )
    if o.sched_died:
        kind, reason = o.sched_died
        out.append(
            _fail(
                "scheduler_died",
                f"scheduler died: {kind}: {reason}",
                exit_kind=kind,
                reason=reason,
                dump=o.sched_dump,
                log_tail=o.sched_log_tail,
            )
        )
    if o.guest_crash:
        out.append(_fail("guest_crash", f"guest kernel crashed: {o.guest_crash}"))
    if o.agent_crash:
        out.append(_fail("agent_crash", f"guest agent crashed: {o.agent_crash}"))
    if o.timeout:
        out.append(_fail(o.timeout[0], o.timeout[1]))
    if o.infra:
        out.append(_fail("infrastructure", o.infra))
    return out


def _cv(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = statistics.fmean(values)
    return statistics.pstdev(values) / mean if mean > 0 else 0.0


def _worker_checks(t: Thresholds, s: Sample, who: str) -> list[Finding]:
    out = []
    r = s.report
    if t.not_starved and r.work_units == 0:
        out.append(
            _fail(
                "starvation",
                f"{who} made no progress (0 work units in {s.planned_s:.1f}s)",
                worker=who,
            )
        )
    limit = t.max_gap_ms
    if limit not in (None, False) and r.max_gap_ms > float(limit):
        out.append(
            _fail(
                "gap",
                f"stuck {r.max_gap_ms:.0f}ms on cpu{r.max_gap_cpu} at "
                f"+{r.max_gap_at_ms:.0f}ms ({who}; limit {float(limit):.0f}ms)",
                worker=who,
                gap_ms=r.max_gap_ms,
                cpu=r.max_gap_cpu,
                at_ms=r.max_gap_at_ms,
            )
        )
    outside = sorted(set(r.cpus) - set(s.allowed))
    if t.isolation and outside:
        out.append(
            _fail(
                "isolation",
                f"{who} ran on cpu {format_cpus(outside)} outside its "
                f"cpuset {format_cpus(list(s.allowed))}",
                worker=who,
                outside=outside,
                cpuset=list(s.allowed),
            )
        )
    for name, value, unit in (
        ("min_work_rate", r.work_units, "work units"),
        ("min_iteration_rate", r.iterations, "iterations"),
    ):
        limit = getattr(t, name)
        rate = value / s.seconds
        if limit not in (None, False) and rate < float(limit):
            out.append(
                _fail(
                    name, f"{who} did {rate:.1f} {unit}/s < {float(limit):g}", worker=who, rate=rate
                )
            )
    return out


def _cgroup_checks(
    t: Thresholds, c: CgroupStats, samples: tuple[Sample, ...], oracle: bool = False
) -> list[Finding]:
    out = []
    ok = [s for s in samples if s.ok]
    # CPU-bound workers the share oracle judged are held to their own ideal;
    # the spread check keeps the rest
    rest = [s for s in ok if not (oracle and s.how.cpu_bound)]
    cap, bar = _ratio(t.max_spread_pct), _ratio(t.min_share_ratio)
    unfair = unfair_spread(rest, cap, bar) if cap is not None and len(rest) >= 2 else None
    if unfair is not None:
        width, ratio = unfair
        out.append(
            _fail(
                "fairness",
                f"{c.name}: off-CPU spread {width:.1f}% > {cap:g}%"
                + (f", p10 share {ratio:.2f} of the mean < {bar:g}" if bar is not None else ""),
                cgroup=c.name,
                spread=width,
                ratio=ratio,
            )
        )
    if t.max_throughput_cv not in (None, False) and len(ok) >= 2:
        cv = _cv([s.report.work_units / s.seconds for s in ok])
        if cv > float(t.max_throughput_cv):
            out.append(
                _fail(
                    "throughput_cv",
                    f"{c.name}: work-rate CV {cv:.2f} > {float(t.max_throughput_cv):g}",
                    cgroup=c.name,
                    cv=cv,
                )
            )
    lats = [x for s in ok for x in s.report.wake_lat_us]
    if lats and t.max_wake_p99_us not in (None, False):
        p99 = percentile(lats, 99)
        if p99 > float(t.max_wake_p99_us):
            out.append(
                _fail(
                    "wake_p99",
                    f"{c.name}: p99 wake latency {p99:.0f}us > {float(t.max_wake_p99_us):.0f}us",
                    cgroup=c.name,
                    p99_us=p99,
                )
            )
    if lats and t.max_wake_cv not in (None, False) and _cv(lats) > float(t.max_wake_cv):
        out.append(
            _fail(
                "wake_cv",
                f"{c.name}: wake latency CV {_cv(lats):.2f} > {float(t.max_wake_cv):g}",
                cgroup=c.name,
                cv=_cv(lats),
            )
        )
    if t.max_migration_ratio not in (None, False) and c.iterations:
        ratio = c.migrations / c.iterations
        if ratio > float(t.max_migration_ratio):
            out.append(
                _fail(
                    "migration_ratio",
                    f"{c.name}: {ratio:.3f} migrations per "
                    f"iteration > {float(t.max_migration_ratio):g}",
                    cgroup=c.name,
                    ratio=ratio,
                )
            )
    for err in c.errors:
        out.append(_fail("worker_error", f"{c.name}: worker failed: {err}", cgroup=c.name))
    return out


def _ratio(v: float | bool | None) -> float | None:
    """A threshold's number, or None when it is off."""
    return None if v is None or v is False else float(v)


def _share(t: Thresholds, groups: tuple[Group, ...], payloads: bool) -> ShareStats | None:
    """The fairness oracle over the whole run (evaluate/fairness.py): only
    where the competition was static and every CPU consumer is a worker."""
    samples = [(g.name, s) for g in groups for s in g.samples if s.ok]
    if payloads or not samples or not all(s.how.static and not s.how.opaque for _, s in samples):
        return None  # changing competition, or CPU use the reports cannot see
    if any(s.report.on_cpu_ms <= 0 and s.report.cpu_s <= 0 for _, s in samples):
        return None  # a report without CPU accounting measures no share
    keys = {f"{n}[{s.report.index}]": s for n, s in samples}
    caps = _caps(groups) if _enforced(t) is not None else {}
    workers = [
        Competitor(
            k,
            s.cpus,
            s.how.weight,
            s.how.groups,
            min(1.0 if s.how.cpu_bound else s.share, caps.get(k, 1.0)),
        )
        for k, s in keys.items()
    ]
    actual: dict[Hashable, float] = {k: s.share for k, s in keys.items()}
    judged = [k for k, s in keys.items() if s.how.cpu_bound]
    j = judge(workers, actual, judged, group_only=bool(t.cgroup_weights))
    if j is None:
        return None
    return ShareStats(
        str(j.worst), j.actual, j.ideal, percentile(list(j.ratios.values()), 10), len(j.ratios)
    )


#: Checks whose passing figures the report shows (their info findings).
SHAPE_CHECKS = frozenset(
    {name.removeprefix("min_").removesuffix("_pct") for name, _ in PLACEMENT_CHECKS}
    | {"interactive", "bandwidth"}
)


def _shape_checks(t: Thresholds, data: RunData) -> list[Found]:
    """Placement (monitor samples) and interactive latency: each on where a
    scenario asks for it; an info line where it could not be judged."""
    limits = {
        name: float(v)
        for name, _ in PLACEMENT_CHECKS
        if (v := getattr(t, name)) not in (None, False, True)
    }
    out = placement_findings(data.placement, limits)
    if t.max_interactive_ratio not in (None, False, True):
        out.append(interactive_ratio(data.groups, float(t.max_interactive_ratio)))
    return out + bandwidth(data.groups, _enforced(t))


def _enforced(t: Thresholds) -> float | None:
    """The allowed excess over cpu.max, or None when cpu.max is not expected to bind."""
    v = t.max_bandwidth_pct
    return None if v in (None, False, True) else float(v)


def _caps(groups: tuple[Group, ...]) -> dict[Hashable, float]:
    """Per worker, its share of its cgroup's cpu.max (split evenly)."""
    out: dict[Hashable, float] = {}
    for g in groups:
        cap, ok = capped(g)
        if cap > 0:
            out.update({f"{g.name}[{s.report.index}]": cap / len(ok) for s in ok})
    return out


def _share_check(t: Thresholds, share: ShareStats | None) -> list[Finding]:
    limit = t.min_share_ratio
    if share is None or limit in (None, False) or share.p10_ratio >= float(limit):
        return []
    return [
        _fail(
            "share",
            f"CPU-bound workers got {share.p10_ratio:.2f} of their ideal share (p10; "
            f"limit {float(limit):g}); worst {share.worst}: {share.actual:.2f} CPU of "
            f"{share.ideal:.2f}",
            worker=share.worst,
            actual=share.actual,
            ideal=share.ideal,
            p10_ratio=share.p10_ratio,
        )
    ]


NO_SCALE = Scale()


def evaluate(data: RunData, thresholds: Thresholds, scale: Scale = NO_SCALE) -> Verdict:
    """Findings in order of precedence: how the run ended (a broken run's
    worker checks would only restate it), damage to the evidence, evidence
    the plan owed and did not get, then the checks on every worker."""
    t = scaled(thresholds, scale)
    stats = run_stats(data.groups)
    stats = dataclasses.replace(stats, share=_share(t, data.groups, bool(data.payloads)))
    findings = outcome_findings(data.outcome)
    o = data.outcome
    if o.skip_reason and not findings and not data.integrity:
        return Verdict(
            status=Status.SKIP,
            findings=(Finding("skip", "info", o.skip_reason),),
            stats=stats,
            thresholds=t,
            scale=scale,
        )
    broken = bool(findings)
    findings += data.integrity
    findings += [dataclasses.replace(f, cls="info") if broken else f for f in data.monitor]
    if not broken:
        findings += data.completeness
        for group, c in zip(data.groups, stats.cgroups, strict=True):
            for s in group.samples:
                if s.ok:
                    findings += _worker_checks(t, s, f"{group.name}[{s.report.index}]")
            findings += _cgroup_checks(t, c, group.samples, stats.share is not None)
        findings += _share_check(t, stats.share)
        findings += [Finding(*f) for f in _shape_checks(t, data)]
        findings += [
            Finding(check, "fail", msg, ev)
            for check, msg, ev in payload_findings(data.payloads, t.payload, scale.reason)
        ]
    status = Status.FAIL if any(f.cls == "fail" for f in findings) else Status.PASS
    return Verdict(
        status=status,
        findings=tuple(findings),
        stats=stats,
        thresholds=t,
        scale=scale,
        payloads=data.payloads,
    )
