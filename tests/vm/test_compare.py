"""A/B end to end: ``ktstr run --repeat`` for side A, then ``ktstr compare
--trials`` running both sides interleaved, and a comparison of two results
directories."""

from __future__ import annotations

import json

from tests.vm.test_verdicts import ktstr


def test_repeat_trials_and_compare(kernel, isolated):
    env = {"TMPDIR": str(isolated / "tmp")}
    a = isolated / "a"
    ra = ktstr("run", "steady", "--duration", "1", "--repeat", "2", "--results", str(a), env=env)
    assert ra.returncode == 0, ra.stdout + ra.stderr
    assert "steady [1n2l2c1t, Linux" in ra.stdout and "2/2 passed (100%" in ra.stdout
    t = ktstr("compare", "steady", "--b-scheduler", "scx_simple", "--trials", "2",
              "--duration", "1", "--results", str(isolated / "t"), env=env)  # fmt: skip
    assert t.returncode == 0, t.stdout + t.stderr
    assert "A: EEVDF on Linux" in t.stdout and "B: scx_simple on Linux" in t.stdout
    assert "cg0.work_rate" in t.stdout and "metrics compared" in t.stdout
    assert "trial 2/2 steady B: scx_simple" in t.stderr  # interleaved: A, B, A, B
    (run_dir,) = (isolated / "t").iterdir()
    page = isolated / "cmp.html"
    j = ktstr("compare", str(a), str(run_dir / "b"), "--json", "--html", str(page), env=env)
    assert page.read_text().count("<svg") >= 5
    doc = json.loads(j.stdout)
    assert "cg0.work_rate" in {ch["metric"] for ch in doc["changes"]}
    assert doc["a"].startswith("EEVDF") and doc["failures"] == []
    bad = ktstr("compare", str(a), str(run_dir / "b"), "--fail-on", "nonsense", env=env)
    assert bad.returncode == 2 and "bad --fail-on" in bad.stderr
