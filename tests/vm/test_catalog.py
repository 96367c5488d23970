"""The catalog check verdict changes are held to: every canned scenario
passes under EEVDF and under scx_simple. The whole sweep (about 8 minutes
here) is opt-in, ``KTSTR_CATALOG=1 pytest tests/vm/test_catalog.py``; the
default run keeps a sample: the scenario that once failed under EEVDF itself
(pinned_llc, a spread check comparing workers on unequal terms) and the
payload smoke load under a sched_ext scheduler."""

from __future__ import annotations

import shutil

import pytest

from ktstr.evaluate.verdict import Status
from ktstr.runner import BootRequest, execute
from ktstr.spec.catalog import SCENARIOS
from ktstr.spec.checks import DEFAULTS, merge
from ktstr.spec.scenario import resolve
from ktstr.spec.topology import Topology
from tests.vm.test_monitor import sched

TOPO = Topology.parse("1n2l2c1t")
SAMPLE = {("pinned_llc", "eevdf"), ("scx_smoke", "scx_simple")}


def cases():
    for name in SCENARIOS:
        for s in ("eevdf", "scx_simple"):
            marks = () if (name, s) in SAMPLE else (pytest.mark.catalog,)
            yield pytest.param(name, s, marks=marks, id=f"{name}-{s}")


@pytest.mark.parametrize(("name", "scheduler"), list(cases()))
def test_canned_scenario_passes(kernel, isolated, name, scheduler):
    sc = SCENARIOS[name]
    for step in sc.steps:
        for op in step.ops:
            p = op.cgroup.payload if op.cgroup else None
            if p is not None and shutil.which(p.program) is None:
                pytest.skip(f"host lacks {p.program} (./scripts/setup installs it)")
    s = sched(kernel, scheduler) if scheduler != "eevdf" else None
    req = BootRequest(kernel=kernel, topology=TOPO, job={})
    rec = execute(req, resolve(sc, TOPO), s, merge(DEFAULTS, sc.thresholds), isolated / "r")
    assert rec.status is Status.PASS, [f.message for f in rec.verdict.failures]
