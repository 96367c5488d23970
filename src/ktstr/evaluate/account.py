"""Pure: what the host planned + what the guest sent -> RunData. Fails closed.

A run passes only when the host holds complete, well-formed evidence for
everything it planned (docs/results.md, "Fail closed"):

* no malformed, torn or over-budget frame;
* the agent's Exit with status 0, and one passing TestResult of the planned
  name whose summary shows no leftover cgroups or workers;
* a confirmed attach when a scheduler was planned;
* every planned scenario started and ended, running the host's plan (run
  jobs) or a plan the host accepts (test bodies: its topology, within the
  test's declared duration);
* exactly one report from every worker that plan owes, none from others,
  each covering at least half of its planned time.

Worker counts, identities, allowed CPUs and durations come from the plan
(``spec/ledger.py``), never from the guest.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from ktstr.evaluate.payloads import PayloadResult, measure
from ktstr.evaluate.stats import Group, Sample
from ktstr.evaluate.verdict import Finding, Outcome, RunData
from ktstr.protocol.evidence import Damage, Evidence, ScenarioRecord
from ktstr.protocol.messages import PayloadError, RunSummary, WorkerReport
from ktstr.protocol.validate import check
from ktstr.spec.ledger import ExpectedPayload, ExpectedWorker, expected_payloads, expected_workers
from ktstr.spec.plan import Plan
from ktstr.spec.serde import from_data, to_data
from ktstr.spec.topology import Topology

#: A worker report must cover this share of its planned time.
MIN_RUN_SHARE = 0.5
#: Workers named in one finding's message (all are in its evidence).
NAMED = 6


@dataclass(frozen=True, slots=True, kw_only=True)
class Expectation:
    """What the host planned for one VM: the evidence a PASS needs."""

    name: str  # of the TestResult the job ends with
    topology: Topology
    #: Run jobs: the host's own plans, in order. Test bodies (None): their
    #: scenarios are known only as they run; each announced plan is checked.
    plans: tuple[Plan, ...] | None
    #: Test bodies: the longest scenario the test declared.
    max_scenario_s: float = 0.0
    scheduler: bool = False


def _fail(check: str, message: str, **evidence: Any) -> Finding:
    return Finding(check, "fail", message, evidence)


def _damage(name: str, what: str, count: int, items: list[Damage]) -> Finding:
    where = ""
    if items:
        d = items[0]
        where = f"; first: {d.kind} #{d.seq} at +{d.at:.1f}s: {d.problem}"
    return _fail(
        name,
        f"{count} {what} from the guest{where}",
        count=count,
        frames=[dataclasses.asdict(d) for d in items],
    )


def integrity(ev: Evidence) -> list[Finding]:
    out = []
    if ev.malformed_count:
        out.append(
            _damage("malformed_frame", "malformed frame(s)", ev.malformed_count, ev.malformed)
        )
    if ev.torn_count:
        out.append(_damage("torn_frame", "torn frame(s)", ev.torn_count, ev.torn))
    if ev.overflow:
        out.append(
            _fail(
                "evidence_overflow",
                "the guest sent more than the host keeps: "
                + ", ".join(f"{k} x{v}" for k, v in sorted(ev.overflow.items())),
                overflow=dict(ev.overflow),
            )
        )
    if ev.torn_text:
        out.append(Finding("torn_text", "info", f"{ev.torn_text} torn text frame(s) dropped"))
    return out


def worker_pids(ev: Evidence) -> dict[int, str]:
    """pid -> worker name, from the pids the agent announced at spawn."""
    out: dict[int, str] = {}
    for rec in ev.scenarios:
        for st in rec.stimuli:
            pids = st.detail.get("pids") if isinstance(st.detail, dict) else None
            if isinstance(pids, dict):
                out.update({v: k for k, v in pids.items() if isinstance(v, int)})
    return out


def _name_tasks(text: str, names: dict[int, str]) -> str:
    """``python[67]`` in a kernel message -> which worker that was."""
    found = {m.group(0): names.get(int(m.group(1))) for m in _TASK.finditer(text)}
    return text + "".join(f" [{t} is worker {n}]" for t, n in found.items() if n)


_TASK = re.compile(r"\w[\w.:/-]*\[(\d+)\]")


def _stuck(ev: Evidence) -> str:
    """What the agent said of workers that would not stop."""
    parts = []
    for _, lc in ev.lifecycle:
        if lc.phase == "worker_stuck" and isinstance(lc.detail, dict):
            parts.append(f"{lc.detail.get('worker')} ({str(lc.detail.get('task', ''))[:300]})")
    return "; stuck: " + "; ".join(parts[:4]) if parts else ""


def outcome_from(ev: Evidence, host: Outcome) -> Outcome:
    """The host's view of how the run ended, plus what the guest reported."""
    se, changes = ev.sched_exit, dict[str, Any]()
    names = worker_pids(ev)
    if se is not None:
        changes["sched_dump"] = se.dump
        if se.exit_kind == "not_attached":
            changes["sched_not_attached"] = se.reason or "not attached"
        else:
            changes["sched_died"] = (se.exit_kind, _name_tasks(se.reason, names))
    if ev.crash is not None and not host.agent_crash:
        changes["agent_crash"] = ev.crash.error
    if host.timeout is not None:
        changes["timeout"] = (host.timeout[0], host.timeout[1] + _stuck(ev))
    changes["sched_log_tail"] = ev.sched_log_tail()[-4000:]
    return dataclasses.replace(host, **changes)


def _summary(ev: Evidence, ex: Expectation) -> list[Finding]:
    if ev.exit is None:
        return [_fail("no_exit", "the guest agent never reported its exit status")]
    out = []
    if ev.exit.code != 0:
        out.append(_fail("agent_exit", f"the guest agent exited with status {ev.exit.code}"))
    mine = [r for r in ev.results if r.name == ex.name]
    if len(mine) != 1:
        what = "no" if not mine else f"{len(mine)}"
        return [*out, _fail("no_result", f"{what} result for {ex.name!r} from the guest")]
    result = mine[0]
    try:
        summary = check(RunSummary, result.data, "TEST_RESULT.data")
    except PayloadError as exc:
        return [*out, _fail("malformed_frame", f"1 malformed frame(s) from the guest: {exc}")]
    if not result.passed or summary.leftover_cgroups or summary.leftover_workers:
        out.append(
            _fail(
                "agent_result",
                f"the agent reported failure: {len(summary.leftover_cgroups)} leftover "
                f"cgroup(s), {summary.leftover_workers} leftover worker(s)",
                leftover_cgroups=summary.leftover_cgroups,
            )
        )
    if summary.scheduler_died and ev.sched_exit is None:
        out.append(_fail("scheduler_died", "the agent saw the scheduler die; no exit report"))
    return out


Paired = list[tuple[ScenarioRecord, Plan]]


def _plans(ev: Evidence, ex: Expectation) -> tuple[Paired, list[Finding]]:
    """Pair each announced scenario with the plan the host holds it to."""
    out: Paired = []
    problems = []
    if ex.plans is not None:
        for i, plan in enumerate(ex.plans):
            if i >= len(ev.scenarios):
                problems.append(_fail("missing_scenario", f"scenario {plan.scenario!r} never ran"))
                continue
            rec = ev.scenarios[i]
            if rec.start.plan != to_data(plan):
                problems.append(
                    _fail(
                        "plan_mismatch",
                        f"scenario {i + 1} ran a plan other than the host's {plan.scenario!r}",
                    )
                )
                continue
            out.append((rec, plan))
        if len(ev.scenarios) > len(ex.plans):
            problems.append(
                _fail("unexpected_scenario", f"{len(ev.scenarios) - len(ex.plans)} unplanned")
            )
        return out, problems
    if not ev.scenarios:
        problems.append(_fail("missing_scenario", "the test body ran no scenario"))
    for i, rec in enumerate(ev.scenarios):
        try:
            plan = from_data(Plan, rec.start.plan)
            if not isinstance(plan, Plan):
                raise TypeError("not a plan")
        except Exception as exc:  # guest data at the boundary: any failure is a finding
            problems.append(
                _fail("plan_mismatch", f"scenario {i + 1}: unreadable plan: {exc}"[:300])
            )
            continue
        total = sum(s.hold_s for s in plan.steps)
        if plan.topology != ex.topology.name:
            problems.append(_fail("plan_mismatch", f"scenario {i + 1} planned for {plan.topology}"))
        elif total > ex.max_scenario_s + 1e-6:
            problems.append(
                _fail(
                    "plan_mismatch",
                    f"scenario {i + 1} runs {total:g}s, longer than the test's declared "
                    f"duration {ex.max_scenario_s:g}s",
                )
            )
        else:
            out.append((rec, plan))
    return out, problems


def _match(
    rec: ScenarioRecord, want: tuple[ExpectedWorker, ...], label: str
) -> tuple[list[Group], list[Finding]]:
    got: dict[tuple[str, int], list[WorkerReport]] = {}
    for r in rec.reports:
        got.setdefault((r.cgroup, r.index), []).append(r)
    keys = {(w.cgroup, w.index) for w in want}
    missing = [f"{w.cgroup}[{w.index}]" for w in want if (w.cgroup, w.index) not in got]
    dup = [f"{c}[{i}]" for (c, i), rs in got.items() if len(rs) > 1]
    extra = [f"{c}[{i}]" for (c, i) in got if (c, i) not in keys]
    problems = []
    for name, what, names in (
        ("lost_reports", "no report from", missing),
        ("duplicate_report", "more than one report from", dup),
        ("unexpected_report", "reports from unplanned", extra),
    ):
        if names:
            shown = ", ".join(names[:NAMED]) + (" ..." if len(names) > NAMED else "")
            problems.append(
                _fail(name, f"{label}{what} {len(names)} worker(s): {shown}", workers=names)
            )
    groups: dict[str, list[Sample]] = {}
    for w in want:
        reports = got.get((w.cgroup, w.index), [])
        if len(reports) != 1:
            continue
        r = reports[0]
        short = r.error is None and r.wall_s < MIN_RUN_SHARE * w.planned_s
        if short:
            problems.append(
                _fail(
                    "short_run",
                    f"{label}{w.cgroup}[{w.index}] ran {r.wall_s:.2f}s of its planned "
                    f"{w.planned_s:.2f}s",
                )
            )
        groups.setdefault(w.cgroup, []).append(
            Sample(r, w.allowed, w.planned_s, w.affinity, w.terms)
        )
    return [Group(label + name, tuple(s)) for name, s in groups.items()], problems


def _match_payloads(
    rec: ScenarioRecord, want: tuple[ExpectedPayload, ...], label: str
) -> tuple[list[PayloadResult], list[Finding]]:
    """One result per planned payload run, measured; the rest are findings."""
    got: dict[tuple[str, str, int], list[Any]] = {}
    for m in rec.payloads:
        got.setdefault((m.payload, m.cgroup, m.index), []).append(m)
    keys = {(w.payload.name, w.cgroup, w.index) for w in want}
    problems = []
    missing = [w.label for w in want if (w.payload.name, w.cgroup, w.index) not in got]
    dup = [f"{n}@{c}" for (n, c, _), ms in got.items() if len(ms) > 1]
    extra = [f"{n}@{c}" for (n, c, i) in got if (n, c, i) not in keys]
    for name, what, names in (
        ("lost_payload", "no result from payload", missing),
        ("duplicate_payload", "more than one result from payload", dup),
        ("unexpected_payload", "results from unplanned payload", extra),
    ):
        if names:
            shown = ", ".join(names[:NAMED]) + (" ..." if len(names) > NAMED else "")
            problems.append(_fail(name, f"{label}{what}(s) {shown}", payloads=names))
    results = [
        measure(w, got[(w.payload.name, w.cgroup, w.index)][0])
        for w in want
        if len(got.get((w.payload.name, w.cgroup, w.index), ())) == 1
    ]
    return results, problems


def account(
    ev: Evidence, ex: Expectation
) -> tuple[list[Group], list[Finding], list[PayloadResult]]:
    """The worker samples and payload results the host can vouch for, and the
    completeness findings (what the plan owed and the guest did not deliver)."""
    problems = _summary(ev, ex)
    if ex.scheduler and "scheduler_attached" not in ev.phases() and ev.sched_exit is None:
        problems.append(_fail("no_attach", "no confirmation that the scheduler attached"))
    pairs, plan_problems = _plans(ev, ex)
    problems += plan_problems
    cpus = tuple(range(ex.topology.cpus))
    groups: list[Group] = []
    payloads: list[PayloadResult] = []
    for i, (rec, plan) in enumerate(pairs):
        label = f"s{i + 1}:" if len(pairs) > 1 else ""
        if rec.ended_at is None:
            problems.append(_fail("scenario_unfinished", f"scenario {plan.scenario!r} never ended"))
        g, p = _match(rec, expected_workers(plan, cpus), label)
        groups += g
        problems += p
        r, p = _match_payloads(rec, expected_payloads(plan, cpus), label)
        payloads += r
        problems += p
    return groups, problems, payloads


def run_data(ev: Evidence, ex: Expectation, host: Outcome) -> RunData:
    groups, completeness, payloads = account(ev, ex)
    return RunData(
        groups=tuple(groups),
        payloads=tuple(payloads),
        outcome=outcome_from(ev, host),
        integrity=tuple(integrity(ev)),
        completeness=tuple(completeness),
    )
