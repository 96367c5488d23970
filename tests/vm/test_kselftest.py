"""``ktstr kselftest`` on both shared kernels: a sample of selftests in the
default run (every selftest behind KTSTR_CATALOG=1), each its own result in
the terminal, JUnit, KTAP and result.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import xmlschema

from ktstr.evaluate.verdict import Status
from ktstr.runner import BootRequest
from ktstr.runner.kselftest import run_kselftest
from ktstr.spec.topology import Topology
from tests.unit.test_report import DATA, assert_valid_ktap
from tests.vm.conftest import kernel_for

TOPO = Topology.parse("1n1l4c1t")
SAMPLE = ["minimal", "exit", "maximal"]


def selftests(kernel, tmp, filters):
    if not (kernel.directory / "selftests" / "sched_ext" / "runner").is_file():
        pytest.skip(f"host lacks the selftests runner for {kernel.version}")
    return run_kselftest(BootRequest(kernel=kernel, topology=TOPO, job={}), tmp, filters)


@pytest.mark.parametrize("series", ["6.12", "7.3"])
def test_sample_of_selftests_passes(kernels, isolated, series):
    records, out = selftests(kernel_for(kernels, series), isolated / "res", SAMPLE)
    assert {r.test: r.status for r in records} == dict.fromkeys(SAMPLE, Status.PASS)
    doc = json.loads((out / "maximal" / "result.json").read_text())
    assert doc["status"] == "pass" and doc["scenario"] == "kselftest"
    assert doc["kernel"]["version"].startswith(series)


@pytest.mark.catalog
@pytest.mark.parametrize("series", ["6.12", "7.3"])
def test_every_selftest(kernels, isolated, series):
    records, _ = selftests(kernel_for(kernels, series), isolated / "res", [])
    failed = {r.test: r.verdict.findings[0].message for r in records if r.status is Status.FAIL}
    assert failed == {}
    assert len(records) >= 21


def test_cli_junit_ktap_and_exit_code(kernel, isolated):
    if not (kernel.directory / "selftests" / "sched_ext" / "runner").is_file():
        pytest.skip(f"host lacks the selftests runner for {kernel.version}")
    junit = isolated / "junit.xml"
    p = subprocess.run(
        [sys.executable, "-m", "ktstr", "kselftest", "-t", "minimal", "--ktap",
         "--junit", str(junit), "--results", str(isolated / "res")],
        env={**os.environ, "TMPDIR": str(isolated / "tmp")},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert_valid_ktap(p.stdout)
    assert "ok 1 minimal" in p.stdout
    xmlschema.XMLSchema(str(DATA / "junit.xsd")).validate(junit.read_text())
    bad = subprocess.run(
        [sys.executable, "-m", "ktstr", "kselftest", "-t", "no_such_selftest"],
        env={**os.environ, "TMPDIR": str(isolated / "tmp")},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "no selftest matches no_such_selftest" in bad.stderr
