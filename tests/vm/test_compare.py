"""A/B end to end: ``ktstr run --repeat`` on both sides (EEVDF, scx_simple),
then ``ktstr compare`` on the two results directories."""

from __future__ import annotations

import json

from tests.vm.test_verdicts import ktstr


def test_repeat_then_compare(kernel, isolated):
    env = {"TMPDIR": str(isolated / "tmp")}
    a, b = isolated / "a", isolated / "b"
    ra = ktstr("run", "steady", "--duration", "1", "--repeat", "2", "--results", str(a), env=env)
    assert ra.returncode == 0, ra.stdout + ra.stderr
    assert "steady [1n2l2c1t, Linux" in ra.stdout and "2/2 passed (100%" in ra.stdout
    rb = ktstr("run", "steady", "--duration", "1", "--repeat", "2", "--scheduler", "scx_simple",
               "--results", str(b), env=env)  # fmt: skip
    assert rb.returncode == 0, rb.stdout + rb.stderr
    c = ktstr("compare", str(a), str(b), env=env)
    assert c.returncode == 0, c.stderr
    assert "A: EEVDF on Linux" in c.stdout and "B: scx_simple on Linux" in c.stdout
    assert "cg0.work_rate" in c.stdout and "metrics compared" in c.stdout
    j = ktstr("compare", str(a), str(b), "--json", env=env)
    doc = json.loads(j.stdout)
    assert "cg0.work_rate" in {ch["metric"] for ch in doc["changes"]}
    assert doc["a"].startswith("EEVDF") and doc["failures"] == []
    bad = ktstr("compare", str(a), str(b), "--fail-on", "nonsense", env=env)
    assert bad.returncode == 2 and "bad --fail-on" in bad.stderr
