"""Render run results: terminal text, the JSON sidecar, JUnit XML, KTAP.

The sidecar schema is ``ktstr.result/1`` (docs/results.md). Every renderer
takes the same RunRecord, so the four outputs never disagree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ktstr.evaluate.payloads import PayloadResult
from ktstr.evaluate.stats import format_stats
from ktstr.evaluate.verdict import SHAPE_CHECKS, Status, Verdict
from ktstr.evaluate.verifier import Program, as_json
from ktstr.evaluate.verifier import summary as verifier_summary

SCHEMA = "ktstr.result/1"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    test: str
    scenario: str
    topology: str
    kernel: dict[str, str]
    scheduler: dict[str, Any] | None
    accel: str
    qemu: str
    durations: dict[str, float]
    verdict: Verdict
    artifacts: str | None = None
    sched_log_tail: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: The monitor's summary (None: it did not run), and its view of the
    #: seconds before a failure.
    monitor: dict[str, Any] | None = None
    monitor_view: tuple[str, ...] = ()
    #: Snapshots taken (each with its ``file`` in the results directory), the
    #: one that explains a failure, the host's BPF writes, and the timeline.
    snapshots: tuple[dict[str, Any], ...] = ()
    explained_by: dict[str, Any] | None = None
    bpf_writes: tuple[dict[str, Any], ...] = ()
    timeline: tuple[dict[str, Any], ...] = ()
    #: Host seconds since QEMU launched at which each phase began (PHASES).
    phases: dict[str, float] = field(default_factory=dict)
    #: What the verifier spent on each of the scheduler's BPF programs.
    verifier: tuple[Program, ...] = ()
    #: The host it ran on: CPUs, ktstr version (what a comparison pairs by).
    host: dict[str, Any] = field(default_factory=dict)

    #: Where result.json and the snapshots are.
    artifacts_dir: str | None = None

    @property
    def status(self) -> Status:
        return self.verdict.status


def to_json(rec: RunRecord) -> dict[str, Any]:
    v = rec.verdict
    return {
        "schema": SCHEMA,
        "test": rec.test,
        "scenario": rec.scenario,
        "status": v.status.value,
        "topology": rec.topology,
        "kernel": rec.kernel,
        "scheduler": rec.scheduler,
        "accel": rec.accel,
        "host": rec.host,
        "qemu": rec.qemu,
        "durations": {**rec.durations, **({"phases": rec.phases} if rec.phases else {})},
        "thresholds": v.thresholds.active(),
        "scale": {"factor": v.scale.factor, "reason": v.scale.reason},
        "stats": {
            "workers": v.stats.workers,
            "cpus": len(v.stats.cpus),
            "migrations": v.stats.migrations,
            "worst_spread_pct": round(v.stats.worst_spread, 3),
            "worst_gap_ms": round(v.stats.worst_gap.max_gap_ms, 3) if v.stats.worst_gap else 0.0,
            "share": dataclasses.asdict(v.stats.share) if v.stats.share else None,
            "cgroups": [
                {
                    k: (list(x) if isinstance(x, tuple) else x)
                    for k, x in dataclasses.asdict(c).items()
                }
                for c in v.stats.cgroups
            ],
        },
        "findings": [dataclasses.asdict(f) for f in v.findings],
        "payloads": [payload_json(p) for p in v.payloads],
        "artifacts": rec.artifacts,
        "notes": list(rec.notes),
        "monitor": rec.monitor,
        "snapshots": list(rec.snapshots),
        "explained_by": rec.explained_by["file"] if rec.explained_by else None,
        "bpf_writes": list(rec.bpf_writes),
        "timeline": list(rec.timeline),
        "verifier": as_json(rec.verifier),
    }


def payload_json(p: PayloadResult) -> dict[str, Any]:
    d = dataclasses.asdict(p)
    d["command"] = list(p.command)
    return d


def payload_lines(v: Verdict) -> list[str]:
    """One line per payload run: how it ended and its headline metrics."""
    out = []
    for p in v.payloads:
        where = f"payload {p.name}" + (f" #{p.index}" if p.index else "") + f" ({p.cgroup})"
        how = f"exit {p.exit_code}" if p.ended == "exit" else f"{p.ended}, status {p.exit_code}"
        shown = sorted(p.metrics.items(), key=lambda kv: (kv[0].count("."), kv[0]))[:8]
        metrics = " ".join(f"{k}={x:.4g}" for k, x in shown)
        more = f" (+{len(p.metrics) - 8} more)" if len(p.metrics) > 8 else ""
        out.append(
            f"{where}: {how}, {p.duration_s:.2f}s; {metrics or p.problem or 'no metrics'}{more}"
        )
    return out


@dataclass(frozen=True, slots=True)
class Trial:
    """One run of a repeated case, as much as a pass rate needs: whether it
    failed, and the checks that failed it (each once)."""

    failed: bool
    checks: tuple[str, ...] = ()

    @classmethod
    def of(cls, rec: RunRecord) -> Trial:
        return cls(
            rec.status is Status.FAIL, tuple(dict.fromkeys(f.check for f in rec.verdict.failures))
        )


def pass_rate_line(name: str, runs: list[Trial]) -> str:
    """One repeated case: how often it passed, with a 95 % Wilson interval,
    and the failing runs' findings counted by check."""
    from ktstr.evaluate.stats import wilson

    ok = sum(not r.failed for r in runs)
    lo, hi = wilson(ok, len(runs))
    what = "passed" if ok == len(runs) else "FAILED" if ok == 0 else "FLAKY"
    checks: dict[str, int] = {}
    for r in runs:
        for c in r.checks:
            checks[c] = checks.get(c, 0) + 1
    by = ", ".join(f"{c} x{n}" for c, n in sorted(checks.items()))
    return f"{name}: {ok}/{len(runs)} {what} ({ok / len(runs):.0%}, {lo:.0%}-{hi:.0%})" + (
        f"; failing checks: {by}" if by else ""
    )


def over_flake_rate(cases: dict[str, list[Trial]], rate: float) -> list[str]:
    """Repeated cases that failed more often than the accepted flake rate
    ``rate`` (0..1), as "NAME: F/N failed"; empty when all are within it."""
    return [
        f"{name}: {sum(t.failed for t in runs)}/{len(runs)} failed"
        for name, runs in cases.items()
        if runs and sum(t.failed for t in runs) / len(runs) > rate
    ]


def write_sidecar(rec: RunRecord, directory: Path) -> Path:
    """``directory/result.json``, written whole (temp file + rename), 0600."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / "result.json"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".result.json.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(to_json(rec), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


#: Characters XML 1.0 cannot carry at all (most C0 controls, surrogates,
#: U+FFFE/U+FFFF): scheduler output may contain any of them.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """``text`` with what XML cannot carry shown as ``\\xNN`` escapes."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def to_text(rec: RunRecord) -> str:
    v = rec.verdict
    sched = rec.scheduler["name"] if rec.scheduler else "EEVDF"
    accel = rec.accel.split(" (")[0]
    kernel = f"Linux {rec.kernel['version']}, " if rec.kernel.get("version") else ""
    lines = [f"{v.status.value.upper()} {rec.test} [{rec.topology}, {sched}, {kernel}{accel}]"]
    lines += [f"  {f.message}" for f in v.findings if f.cls == "fail"]
    if v.status is Status.SKIP:  # why, and nothing measured to show
        return "\n".join([*lines, *(f"  skipped: {f.message}" for f in v.findings)])
    lines += format_stats(v.stats)
    lines += [f"  {f.check}: {f.message}" for f in v.findings
              if f.cls == "info" and f.check in SHAPE_CHECKS]  # fmt: skip
    lines += payload_lines(v)
    if rec.verifier:
        lines.append(verifier_summary(rec.verifier))
    if rec.monitor:
        lines.append(monitor_line(rec.monitor))
    if rec.phases:
        lines.append(phase_line(rec.phases))
    if v.scale.factor != 1.0:
        lines.append(f"timing thresholds scaled x{v.scale.factor:g} ({v.scale.reason})")
    if rec.monitor_view and v.status is Status.FAIL:
        lines.append("monitor, the seconds before the end:")
        lines += [f"  | {ln}" for ln in rec.monitor_view]
    died = next((f for f in v.findings if f.check == "scheduler_died"), None)
    if died is not None:
        dump = str(died.evidence.get("dump", "")).strip().splitlines()
        if dump:
            lines.append("scheduler dump (tail):")
            lines += [f"  | {ln}" for ln in dump[-20:]]
    if v.status is Status.FAIL and rec.timeline:
        lines.append("timeline (host seconds since launch):")
        lines += [f"  | +{e['at_s']:7.3f}s {e['what']}" for e in rec.timeline[-20:]]
    if rec.explained_by is not None:
        lines.append(snapshot_line(rec.explained_by, rec.artifacts_dir))
    if rec.sched_log_tail.strip() and v.status is Status.FAIL:
        lines.append("scheduler output (tail):")
        lines += [f"  | {ln}" for ln in rec.sched_log_tail.strip().splitlines()[-10:]]
    if v.status is Status.FAIL:
        lines += [f"note: {n}" for n in rec.notes]
    if rec.artifacts:
        lines.append(f"artifacts: {rec.artifacts}")
    return "\n".join(lines)


#: The phases of a run in order, as ``durations.phases`` names them.
PHASES = ("qemu_start", "kernel_start", "agent_ready", "scheduler_attached", "workload_start",
          "workload_end", "reports_in", "qemu_exit", "verdict_written")  # fmt: skip

#: What the time up to a mark (from the one before) is spent on.
_SPENT = {
    "kernel_start": "qemu", "agent_ready": "boot", "scheduler_attached": "attach",
    "workload_start": "setup", "workload_end": "workload", "reports_in": "reports",
    "qemu_exit": "shutdown", "verdict_written": "verdict",
}  # fmt: skip


def phase_spent(marks: dict[str, float]) -> dict[str, float]:
    """Seconds per phase (qemu, boot, attach, setup, workload, ...)."""
    named = [(k, marks[k]) for k in PHASES if k in marks]
    return {_SPENT[b]: tb - ta for (_, ta), (b, tb) in itertools.pairwise(named)}


def phase_line(marks: dict[str, float]) -> str:
    """One line: what the time went to, from each mark to the next."""
    parts = [f"{k} {v:.2f}s" for k, v in phase_spent(marks).items()]
    return "time: " + ", ".join(parts) if parts else ""


def phase_totals(spent: list[dict[str, float]]) -> str:
    """Many runs: the seconds each phase took in all, and its share, so the
    dominant cost is plain."""
    total: dict[str, float] = {}
    for one in spent:
        for k, v in one.items():
            total[k] = total.get(k, 0.0) + v
    whole = sum(total.values()) or 1.0
    order = sorted(total.items(), key=lambda kv: -kv[1])
    parts = [f"{k} {v:.1f}s ({v / whole:.0%})" for k, v in order]
    return f"time over {len(spent)} runs: " + ", ".join(parts) if parts else ""


def snapshot_line(m: dict[str, Any], directory: str | None) -> str:
    """Which snapshot explains the failure, and where it is."""
    where = f"{directory}/{m['file']}" if directory else m["file"]
    why = ": ".join(x for x in (m.get("exit_reason"), m.get("exit_msg")) if x)
    why = why or m.get("exit_kind") or m["trigger"]
    late = " (late: after the kernel's teardown)" if m.get("late") else ""
    return f"snapshot explaining it: {where} [{m['trigger']}: {why}]{late}"


def monitor_line(m: dict[str, Any]) -> str:
    """One line of what the host saw inside the guest kernel."""
    failed = [k for k, v in m.get("checks", {}).items() if v == "fail"]
    line = (
        f"monitor: {m.get('samples', 0)} samples at {m.get('hz', 0):g} Hz over "
        f"{m.get('cpus', 0)} cpus; max imbalance {m.get('max_imbalance', 0):g}, "
        f"max local DSQ {m.get('max_local_dsq', 0)}, longest runnable wait "
        f"{m.get('max_runnable_wait_ms', 0):.0f}ms, idle while waiting "
        f"{m.get('idle_while_waiting_ms', 0):.0f}ms"
    )
    wd = m.get("watchdog")
    if wd and not wd.get("skipped"):
        line += f"; sched_ext watchdog {wd['from_s']:g}s -> {wd['to_s']:g}s"
    return line + (f"; failed: {', '.join(failed)}" if failed else "")


def to_junit(records: list[RunRecord], suite: str = "ktstr") -> str:
    """JUnit XML as CI systems read it (testsuites/testsuite/testcase)."""
    failures = sum(r.status is Status.FAIL for r in records)
    skipped = sum(r.status is Status.SKIP for r in records)
    total = sum(r.durations.get("total_s", 0.0) for r in records)
    attrs = {
        "name": suite,
        "tests": str(len(records)),
        "failures": str(failures),
        "errors": "0",
        "skipped": str(skipped),
        "time": f"{total:.3f}",
    }
    root = ET.Element("testsuites", attrs)
    ts = ET.SubElement(root, "testsuite", attrs)
    for rec in records:
        tc = ET.SubElement(
            ts,
            "testcase",
            classname=f"{suite}.{rec.kernel.get('version', 'unknown')}.{rec.topology}",
            name=rec.test,
            time=f"{rec.durations.get('total_s', 0.0):.3f}",
        )
        if rec.status is Status.FAIL:
            first = rec.verdict.failures[0] if rec.verdict.failures else None
            fail = ET.SubElement(
                tc,
                "failure",
                message=xml_text(first.message if first else "failed"),
                type=first.check if first else "failure",
            )
            fail.text = xml_text(to_text(rec))
        elif rec.status is Status.SKIP:
            ET.SubElement(tc, "skipped", message=xml_text(rec.verdict.findings[0].message))
        out = ET.SubElement(tc, "system-out")
        out.text = xml_text("\n".join(format_stats(rec.verdict.stats) + payload_lines(rec.verdict)))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def to_ktap(records: list[RunRecord]) -> str:
    """KTAP v1: version line, plan, one result line per test, diagnostics."""
    lines = ["KTAP version 1", f"1..{len(records)}"]
    for i, rec in enumerate(records, 1):
        for ln in to_text(rec).splitlines()[1:]:
            lines.append(f"# {ln}".rstrip())
        name = rec.test.replace("#", "_")
        if rec.status is Status.PASS:
            lines.append(f"ok {i} {name}")
        elif rec.status is Status.SKIP:
            lines.append(f"ok {i} {name} # SKIP {rec.verdict.findings[0].message}")
        else:
            lines.append(f"not ok {i} {name}")
    return "\n".join(lines) + "\n"
