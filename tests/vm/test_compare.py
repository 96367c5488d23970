"""A/B end to end: ``ktstr run --repeat`` for side A, then ``ktstr compare
--trials`` running both sides interleaved, and a comparison of two results
directories."""

from __future__ import annotations

import json
import re

import pytest

from tests.vm.test_verdicts import ktstr


def test_repeat_trials_and_compare(kernel, isolated):
    env = {"TMPDIR": str(isolated / "tmp")}
    a = isolated / "a"
    ra = ktstr("run", "steady", "--duration", "1", "--repeat", "2", "--results", str(a), env=env)
    assert ra.returncode == 0, ra.stdout + ra.stderr
    assert "steady [1n2l2c1t, Linux" in ra.stdout and "2/2 passed (100%" in ra.stdout
    t = ktstr("compare", "steady", "--b-scheduler", "scx_simple", "--trials", "2", "--duration",
              "1", "--results", str(isolated / "t"), "--no-calibrate", "-j", "2",
              env=env)  # fmt: skip
    assert t.returncode == 0, t.stdout + t.stderr
    assert "A: EEVDF on Linux" in t.stdout and "B: scx_simple on Linux" in t.stdout
    assert "cg0.work_rate" in t.stdout and "metrics compared" in t.stdout
    assert "trial 2/2 steady B: scx_simple" in t.stderr  # interleaved: A, B, A, B
    assert "(2 running)" in t.stderr  # -j 2: two VMs at once
    assert "calibrating" not in t.stderr and "uncalibrated (p-values alone" in t.stdout
    (run_dir,) = (isolated / "t").iterdir()
    page = isolated / "cmp.html"
    j = ktstr("compare", str(a), str(run_dir / "b"), "--json", "--html", str(page), env=env)
    assert page.read_text().count("<svg") >= 5
    doc = json.loads(j.stdout)
    assert "cg0.work_rate" in {ch["metric"] for ch in doc["changes"]}
    assert doc["a"].startswith("EEVDF") and doc["failures"] == []
    bad = ktstr("compare", str(a), str(run_dir / "b"), "--fail-on", "nonsense", env=env)
    assert bad.returncode == 2 and "bad --fail-on" in bad.stderr


def test_first_use_calibrates_then_a_against_a_is_quiet(kernel, isolated):
    """No noise stored for the scenario on this machine: compare measures A
    against A first, stores it, and scx_simple against itself then shows
    nothing significant (8 VMs)."""
    env = {"TMPDIR": str(isolated / "tmp")}
    cal = isolated / "cal.json"
    aa = ktstr("compare", "steady", "--a-scheduler", "scx_simple", "--b-scheduler", "scx_simple",
               "--trials", "2", "--duration", "1", "--calibration", str(cal),
               "--results", str(isolated / "r"), env=env)  # fmt: skip
    assert aa.returncode == 0, aa.stdout + aa.stderr
    assert "no A/A noise stored for steady on this machine: calibrating first" in aa.stderr
    assert "A/A noise (run-to-run CV)" in aa.stdout and "uncalibrated" not in aa.stdout
    assert "steady [1n2l2c1t]" in json.loads(cal.read_text())
    assert re.search(r"\d+ metrics compared, 0 significant", aa.stdout), aa.stdout


@pytest.mark.catalog
def test_a_against_a_is_never_significant(kernel, isolated):
    """scx_simple against itself, three times after a first-use calibration
    (24 VMs; opt-in with KTSTR_CATALOG=1): nothing significant."""
    env = {"TMPDIR": str(isolated / "tmp")}
    common = ["steady", "--a-scheduler", "scx_simple", "--b-scheduler", "scx_simple",
              "--trials", "3", "--duration", "2", "--calibration", str(isolated / "cal.json"),
              "--results", str(isolated / "r")]  # fmt: skip
    for _ in range(3):
        aa = ktstr("compare", *common, env=env)
        assert aa.returncode == 0, aa.stdout + aa.stderr
        assert re.search(r"\d+ metrics compared, 0 significant", aa.stdout), aa.stdout
