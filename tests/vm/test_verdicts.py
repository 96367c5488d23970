"""`ktstr run` end to end: verdict, exit code, sidecar, kept evidence, JUnit, KTAP."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import xmlschema

from tests.unit.test_report import DATA, assert_valid_ktap


def ktstr(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ktstr", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_failing_verdict_keeps_evidence_and_exits_1(kernel, isolated):
    res, junit = isolated / "res", isolated / "junit.xml"
    p = ktstr(
        "run",
        "steady",
        "--duration",
        "2",
        "--threshold",
        "max_gap_ms=0.01",
        "--results",
        str(res),
        "--junit",
        str(junit),
        env={"TMPDIR": str(isolated / "tmp")},
    )
    assert p.returncode == 1, p.stderr
    assert "FAIL steady" in p.stdout and "stuck " in p.stdout
    assert "re-run one with: ktstr run steady --topology 1n2l2c1t --duration 2" in p.stdout
    (run_dir,) = res.iterdir()
    doc = json.loads((run_dir / "result.json").read_text())
    assert doc["status"] == "fail" and {f["check"] for f in doc["findings"]} == {"gap"}
    assert doc["artifacts"] == str(run_dir)
    for name in ("console.log", "qemu.argv", "frames.bin", "job.json"):
        assert (run_dir / name).is_file(), name
    xmlschema.XMLSchema(str(DATA / "junit.xsd")).validate(junit.read_text())


def test_passing_run_in_ktap_exits_0_and_keeps_only_the_sidecar(kernel, isolated):
    res = isolated / "res"
    p = ktstr(
        "run",
        "steady",
        "steady",
        "cpuset_disjoint",
        "--duration",
        "2",
        "--ktap",
        "--results",
        str(res),
        env={"TMPDIR": str(isolated / "tmp")},
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert assert_valid_ktap(p.stdout) == ["ok 1 steady", "ok 2 steady", "ok 3 cpuset_disjoint"]
    assert len(list(res.iterdir())) == 3  # one directory per scenario run, never shared
    for run_dir in res.iterdir():  # no evidence kept, the monitor's samples are
        assert sorted(x.name for x in run_dir.iterdir()) == ["monitor.json.gz", "result.json"]


def test_scheduler_death_keeps_its_log_dump_and_reason(kernel, isolated):
    res = isolated / "res"
    p = ktstr(
        "run",
        "steady",
        "--duration",
        "6",
        "--results",
        str(res),
        "--scheduler",
        "scx_qmap",
        "--",
        "-e",
        "200",
        env={"TMPDIR": str(isolated / "tmp")},
    )
    assert p.returncode == 1, p.stdout + p.stderr
    # 6.12: "scx_bpf_error: test triggering error"; 7.x prefixes the source
    # location: "scx_bpf_error: scx_qmap.bpf.c:434: test triggering error".
    assert re.search(
        r"scheduler died: error_bpf: scx_bpf_error: (\S+:\d+: )?test triggering error", p.stdout
    ), p.stdout
    assert "scheduler dump (tail):" in p.stdout
    (run_dir,) = res.iterdir()
    assert (run_dir / "sched.log").read_text().strip()
    doc = json.loads((run_dir / "result.json").read_text())
    (finding,) = doc["findings"]
    assert finding["check"] == "scheduler_died" and finding["evidence"]["dump"].strip()


def test_a_two_kernel_run_names_each_kernel(kernels, isolated):
    """``--kernel`` twice: every scenario on both kernels, each record, sidecar,
    JUnit case and report header naming its kernel."""
    if len(kernels) < 2:
        import pytest

        pytest.skip("host lacks a second shared kernel for a matrix")
    res, junit = isolated / "res", isolated / "junit.xml"
    old, new = kernels["6.12"], kernels["7.3"]
    p = ktstr(
        "run", "steady", "--duration", "2", "--results", str(res), "--junit", str(junit),
        "--kernel", str(old.directory), "--kernel", str(new.directory),
        env={"TMPDIR": str(isolated / "tmp")},
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"PASS steady [1n2l2c1t, EEVDF, Linux {old.version}," in p.stdout
    assert f"PASS steady [1n2l2c1t, EEVDF, Linux {new.version}," in p.stdout
    docs = [json.loads(d.read_text()) for d in res.glob("*/result.json")]
    assert sorted(d["kernel"]["version"] for d in docs) == sorted([old.version, new.version])
    assert all(d["kernel"]["dir"] for d in docs)
    classes = re.findall(r'classname="([^"]+)"', junit.read_text())
    assert sorted(classes) == sorted(f"ktstr.{v}.1n2l2c1t" for v in (old.version, new.version))
