"""Real payloads in real VMs: every kind under EEVDF and scx_simple with
non-zero metrics, runs that fail (bad exit, killed unfinished, a gate), and
a missing tool refused before boot."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ktstr
from ktstr.evaluate.verdict import Status
from ktstr.runner import BootRequest, execute
from ktstr.spec.checks import DEFAULTS, Thresholds, merge
from ktstr.spec.payload import Payload
from ktstr.spec.plan import resolve
from ktstr.spec.scenario import CgroupDef, HoldSpec, Op, Scenario, Step
from ktstr.spec.topology import Topology
from tests.vm.test_monitor import sched

TOPO = Topology.parse("1n2l2c1t")
TOOLS = ("stress-ng", "hackbench", "cyclictest", "perf")


@ktstr.payload_parser
def parse_loadavg(stdout: str, stderr: str) -> dict[str, float]:
    """``/proc/loadavg``: the 1-minute load and the count of tasks."""
    fields = stdout.split()
    return {"load1": float(fields[0]), "tasks": float(fields[3].split("/")[1])}


def cg(name: str, payload: Payload, workers: int = 0) -> CgroupDef:
    return CgroupDef(name, workers=workers, payload=payload)


TOUR = Scenario(
    name="payload_tour",
    description="every payload kind, a few at a time",
    duration_s=14.0,
    # hackbench and perf messaging are task storms: wake-affine stacking
    # holds run queues at [7, 9, 1, 3] for half a second under EEVDF on 6.12,
    # which the monitor's imbalance check calls a finding (see the note).
    thresholds=Thresholds(max_imbalance=False),
    steps=(
        Step(
            ops=(
                Op.add(cg("sng", Payload.stress_ng("--cpu", "2", "--fork", "1"))),
                Op.add(cg("lat", Payload.cyclictest(threads=2))),
            ),
            hold=HoldSpec.fixed(3.0),
        ),
        Step(
            ops=(
                Op.remove("sng"),
                Op.remove("lat"),
                Op.add(cg("hb", Payload.hackbench(groups=2, loops=20, fds=5), workers=1)),
            ),
            hold=HoldSpec.fixed(4.0),
        ),
        Step(
            ops=(Op.add(cg("pm", Payload.perf_messaging(groups=1, loops=20))),),
            hold=HoldSpec.fixed(3.5),
        ),
        Step(
            ops=(
                Op.add(cg("pp", Payload.perf_pipe(loops=1000))),
                Op.add(
                    cg("cmd", Payload.command("cat", "/proc/loadavg", name="load",
                                              parser=parse_loadavg))
                ),
            ),
            hold=HoldSpec.fixed(3.5),
        ),
    ),
)  # fmt: skip


@pytest.fixture(autouse=True)
def _tools():
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"host lacks {', '.join(missing)} (./scripts/setup installs them)")


def run(kernel, out: Path, scenario: Scenario, scheduler=None, thresholds=DEFAULTS):
    req = BootRequest(kernel=kernel, topology=TOPO, job={})
    return execute(req, resolve(scenario, TOPO), scheduler, thresholds, out)


@pytest.mark.parametrize("scheduler", [None, "scx_simple"])
def test_every_payload_has_metrics(kernel, isolated, scheduler):
    s = sched(kernel, scheduler) if scheduler else None
    rec = run(kernel, isolated / "res", TOUR, s, merge(DEFAULTS, TOUR.thresholds))
    assert rec.status is Status.PASS, [f.message for f in rec.verdict.failures]
    got = {p.name: p for p in rec.verdict.payloads}
    assert set(got) == {"stress-ng", "cyclictest", "hackbench", "perf-messaging", "perf-pipe",
                        "load"}  # fmt: skip
    m = {name: p.metrics for name, p in got.items()}
    assert m["stress-ng"]["cpu.bogo_ops"] > 0 and m["stress-ng"]["fork.bogo_ops_per_s"] > 0
    assert m["cyclictest"]["cycles"] > 100 and m["cyclictest"]["max_us"] > 0
    assert m["cyclictest"]["t1.cycles"] > 0  # both threads measured
    assert m["hackbench"]["time_s"] > 0 and m["perf-messaging"]["time_s"] > 0
    assert m["perf-pipe"]["ops_per_s"] > 0 and m["perf-pipe"]["usecs_per_op"] > 0
    assert m["load"]["tasks"] > 10
    assert got["stress-ng"].ended == got["cyclictest"].ended == "stopped"
    assert got["hackbench"].ended == "exit" and got["hackbench"].exit_code == 0
    doc = json.loads((isolated / "res" / "result.json").read_text())
    if scheduler:  # what the verifier spent on its programs comes with every run
        assert {p["name"] for p in doc["verifier"]} >= {"simple_enqueue", "simple_dispatch"}
    hb = next(p for p in doc["payloads"] if p["name"] == "hackbench")
    assert hb["command"][:3] == ["hackbench", "-g", "2"] and hb["cgroup"] == "hb"


def test_failing_payloads_are_findings_with_their_output(kernel, isolated):
    sc = Scenario.of_defs(
        "payload_faults",
        [
            cg("bad", Payload.command("hackbench", "-g", "-3", name="bad")),
            cg("slow", Payload.command("sleep", "100", name="slow")),
            cg("hb", Payload.hackbench(groups=1, loops=10, fds=2)),
            cg("nop", Payload.command("true", name="nop", parser="os:system")),
        ],
        duration_s=3.0,
    )
    gate = Thresholds.parse(["payload.hackbench.time_s<=0.0000001"])
    rec = run(kernel, isolated / "res", sc, thresholds=merge(DEFAULTS, gate))
    assert rec.status is Status.FAIL
    by = {f.check: f.message for f in rec.verdict.failures}
    assert set(by) == {"payload_failed", "payload_incomplete", "payload_gate",
                       "payload_unparsed"}, by  # fmt: skip
    assert "bad in bad exited with status 1" in by["payload_failed"]
    assert "Cannot allocate memory" in by["payload_failed"]  # its own words
    assert "slow in slow did not finish within its cgroup's 3.0s" in by["payload_incomplete"]
    assert "time_s =" in by["payload_gate"] and "scaled" in by["payload_gate"]
    assert "not registered" in by["payload_unparsed"]  # a named function is not a parser
    assert (isolated / "res" / "frames.bin").is_file()  # evidence kept


def test_missing_tool_is_refused_before_boot(kernel, isolated, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "qemu-system-x86_64").symlink_to(shutil.which("qemu-system-x86_64") or "/bin/false")
    p = subprocess.run(
        [sys.executable, "-m", "ktstr", "run", "cyclictest_noisy"],
        env={"PATH": str(bin_dir), "HOME": str(Path.home()), "TMPDIR": str(isolated / "tmp")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 2, p.stderr
    assert "payload cyclictest needs 'cyclictest'" in p.stderr
    assert "apt-get install rt-tests" in p.stderr and "Traceback" not in p.stderr
