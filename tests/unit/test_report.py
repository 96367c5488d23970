"""Golden files for every output (regenerate: KTSTR_REGEN_GOLDEN=1), JUnit
checked against the schema CI systems read, KTAP against the v1 rules."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from pathlib import Path

import pytest
import xmlschema

from ktstr.evaluate.payloads import PayloadResult
from ktstr.evaluate.verdict import Outcome, RunData, evaluate
from ktstr.report import RunRecord, to_json, to_junit, to_ktap, to_text, write_sidecar
from ktstr.spec.checks import DEFAULTS, timing_scale
from tests.unit.fake_reports import group, worker_report

DATA = Path(__file__).parent.parent / "data"


rep = functools.partial(worker_report, units=500, gap=12.0, cpus=(0, 1))


def payload(name: str, problem: str = "", **metrics: float) -> PayloadResult:
    return PayloadResult(
        name=name,
        kind=name,
        cgroup="bench",
        index=0,
        command=(name, "-g", "2"),
        exit_code=0,
        ended="exit",
        duration_s=1.25,
        planned_s=2.0,
        metrics=metrics,
        problem=problem,
        check="payload_unparsed" if problem else "",
        output_tail="cyclictest: unrecognized option" if problem else "",
    )


def record(name: str, groups, outcome=None, scheduler=None, payloads=()) -> RunRecord:
    outcome = outcome or Outcome()
    verdict = evaluate(
        RunData(groups=tuple(group(*g) for g in groups), outcome=outcome, payloads=payloads),
        DEFAULTS,
        timing_scale(True, 4, 2),
    )
    return RunRecord(
        test=name,
        scenario=name,
        topology="1n2l2c1t",
        kernel={"version": "6.12.117", "image": "/k/vmlinux"},
        scheduler=scheduler,
        accel="TCG, multi-threaded (no KVM here)",
        qemu="10.0.2",
        durations={"boot_s": 4.5, "workload_s": 2.0, "total_s": 8.25},
        verdict=verdict,
        artifacts=f"/results/{name}" if verdict.failures else None,
        sched_log_tail="qmap: enqueued 200\n" if scheduler else "",
    )


RECORDS = [
    record(
        "steady",
        (("cg0", (rep(0), rep(1)), (0, 1, 2, 3)), ("cg1", (rep(0), rep(1)), (0, 1, 2, 3))),
        payloads=(payload("hackbench", time_s=0.42),),
    ),
    record(
        "stalled",
        (("cg0", (rep(0, gap=35000.0, cpus=(1,)), rep(1, units=0)), (0, 1)),),
        payloads=(
            payload("cyclictest", "printed nothing parseable: the JSON report has no threads"),
        ),
    ),
    record(
        "qmap_error",
        (),
        Outcome(
            sched_died=("error_bpf", "scx_bpf_error: test"),
            sched_dump="CPU 0: nr_run=1\n  R python[68] -170ms",
        ),
        scheduler={"name": "scx_qmap", "binary": "/s/scx_qmap", "args": ["-e", "200"]},
    ),
    record("needs_smt", (), Outcome(skip_reason="topology has no SMT")),
]
EXIT_SNAPSHOT = {
    "name": "scheduler_exit-1", "trigger": "scheduler_exit", "index": 1, "at_s": 44.2,
    "frozen_s": 0.031, "exit_kind": "SCX_EXIT_ERROR_STALL", "exit_reason": "runnable task stall",
    "exit_msg": "python[67] failed to run for 34.0s", "maps": 12,
    "file": "snapshot-01-scheduler_exit-1.json",
}  # fmt: skip
MONITOR = {
    "samples": 52, "hz": 10.0, "cpus": 4, "max_imbalance": 1.0, "max_local_dsq": 1,
    "max_runnable_wait_ms": 34000.0, "longest_waiting": "python[67]",
    "idle_while_waiting_ms": 3300.0,
    "checks": {"rq_imbalance": "pass", "work_conservation": "fail"},
    "watchdog": {"wrote": "scx_root->watchdog_timeout", "from_s": 30.0, "to_s": 5.0,
                 "skipped": ""},
}  # fmt: skip
RECORDS[1] = dataclasses.replace(
    RECORDS[1],
    monitor=MONITOR,
    monitor_view=("- 0.4s cpu0:python[66]/ext cpu1:idle; longest wait python[67] 34000ms on cpu1",),
    artifacts_dir="/r/stall",
    snapshots=(EXIT_SNAPSHOT,),
    explained_by=EXIT_SNAPSHOT,
    timeline=(
        {"at_s": 10.5, "kind": "scenario", "what": "scenario stall started"},
        {"at_s": 44.1, "kind": "sched_exit", "what": "scheduler entered sched_ext's disable path"},
        {"at_s": 44.2, "kind": "snapshot", "what": "snapshot scheduler_exit-1 (scheduler_exit)"},
    ),
)


def golden(name: str, text: str) -> None:
    path = DATA / name
    if os.environ.get("KTSTR_REGEN_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_text_golden():
    golden("report.txt", "\n\n".join(to_text(r) for r in RECORDS) + "\n")
    stalled = to_text(RECORDS[1])
    assert "stuck 35000ms on cpu1 at +1200ms" in stalled
    assert "cg1" not in stalled and "1 workers" not in stalled


def test_json_golden_and_sidecar(tmp_path):
    golden(
        "report.json", json.dumps([to_json(r) for r in RECORDS], indent=2, sort_keys=True) + "\n"
    )
    path = write_sidecar(RECORDS[1], tmp_path / "run")
    doc = json.loads(path.read_text())
    assert doc["schema"] == "ktstr.result/1" and doc["status"] == "fail"
    assert {f["check"] for f in doc["findings"]} == {"starvation", "gap", "payload_unparsed"}
    assert doc["payloads"][0]["name"] == "cyclictest" and doc["payloads"][0]["metrics"] == {}
    assert doc["scale"] == {"factor": 8.0, "reason": "TCG x4, 4 vCPUs on 2 host CPUs x2"}


def test_junit_golden_and_valid_against_schema():
    xml = to_junit(RECORDS)
    golden("report.junit.xml", xml)
    xmlschema.XMLSchema(str(DATA / "junit.xsd")).validate(xml)
    assert 'failures="2"' in xml and 'skipped="1"' in xml


def test_junit_carries_every_byte_of_scheduler_output():
    """Scheduler output and dumps may hold any byte: the XML stays valid and
    shows what it cannot carry as escapes."""
    every = bytes(range(256)).decode("latin-1")
    rec = record(
        "qmap_error",
        (),
        Outcome(sched_died=("error_bpf", f"reason {every}"), sched_dump=every * 2),
        scheduler={"name": "scx_qmap", "binary": "/s/scx_qmap", "args": []},
    )
    rec = dataclasses.replace(rec, sched_log_tail=every)
    xml = to_junit([rec])
    xmlschema.XMLSchema(str(DATA / "junit.xsd")).validate(xml)
    assert "\\x00" in xml and "\\x1b" in xml and "\x00" not in xml


KTAP_RESULT = re.compile(r"^(ok|not ok) (\d+)( [^#]*)?( # (SKIP|TODO)( .*)?)?$")


def assert_valid_ktap(text: str) -> list[str]:
    lines = text.rstrip("\n").split("\n")
    assert lines[0] == "KTAP version 1"
    plan = re.fullmatch(r"1\.\.(\d+)", lines[1])
    assert plan, lines[1]
    results = [ln for ln in lines[2:] if not ln.startswith("#")]
    assert all(ln.startswith("#") or KTAP_RESULT.match(ln) for ln in lines[2:])
    numbers = [int(KTAP_RESULT.match(ln).group(2)) for ln in results]  # type: ignore[union-attr]
    assert numbers == list(range(1, int(plan.group(1)) + 1))
    return results


def test_ktap_golden_and_valid():
    text = to_ktap(RECORDS)
    golden("report.ktap", text)
    assert assert_valid_ktap(text) == [
        "ok 1 steady",
        "not ok 2 stalled",
        "not ok 3 qmap_error",
        "ok 4 needs_smt # SKIP topology has no SMT",
    ]


@pytest.mark.parametrize("bad", ["KTAP version 1\n1..2\nok 1 a\n", "TAP\n1..1\nok 1 a\n"])
def test_ktap_validator_rejects_bad_output(bad):
    with pytest.raises(AssertionError):
        assert_valid_ktap(bad)


def test_phase_line_and_totals_say_where_the_time_went():
    from ktstr.report import phase_line, phase_spent, phase_totals

    marks = {
        "qemu_start": 0.0, "kernel_start": 0.4, "agent_ready": 3.4, "workload_start": 3.9,
        "workload_end": 8.9, "reports_in": 9.0, "qemu_exit": 9.6, "verdict_written": 9.7,
    }  # fmt: skip
    assert phase_line(marks) == ("time: qemu 0.40s, boot 3.00s, setup 0.50s, workload 5.00s, "
                                 "reports 0.10s, shutdown 0.60s, verdict 0.10s")  # fmt: skip
    attached = {**marks, "scheduler_attached": 3.7}  # the attach splits the setup
    assert phase_spent(attached)["attach"] == pytest.approx(0.3)
    assert phase_spent(attached)["setup"] == pytest.approx(0.2)
    total = phase_totals([phase_spent(marks), phase_spent(attached)])
    assert total.startswith("time over 2 runs: workload 10.0s (52%), boot 6.0s (31%)")
