"""The catalog check verdict changes are held to: every canned scenario
passes under EEVDF and under scx_simple. The whole sweep (about 15 minutes
here with -n 2) is opt-in, ``KTSTR_CATALOG=1 pytest -n 2
tests/vm/test_catalog.py``; ``KTSTR_CATALOG_TOPOLOGY`` picks other
topologies (comma-separated) and ``KTSTR_CATALOG_SCHEDULERS`` the
schedulers. The default run keeps a sample: the scenario that once failed
under EEVDF itself (pinned_llc, a spread check comparing workers on unequal
terms), the payload smoke load under a sched_ext scheduler, and a few of the
newer work kinds and the share oracle."""

from __future__ import annotations

import os
import shutil

import pytest

from ktstr.evaluate.verdict import Status
from ktstr.runner import BootRequest, execute
from ktstr.spec.catalog import SCENARIOS
from ktstr.spec.checks import DEFAULTS, merge
from ktstr.spec.plan import resolve
from ktstr.spec.topology import Topology
from tests.vm.test_monitor import sched

TOPOLOGIES = os.environ.get("KTSTR_CATALOG_TOPOLOGY", "1n2l2c1t").split(",")
SCHEDULERS = os.environ.get("KTSTR_CATALOG_SCHEDULERS", "eevdf,scx_simple").split(",")
SAMPLE = {
    ("pinned_llc", "eevdf"), ("scx_smoke", "scx_simple"), ("request_response", "eevdf"),
    ("weighted_cgroups", "scx_simple"), ("pi_convoy", "eevdf"),
}  # fmt: skip


def cases():
    for topo in TOPOLOGIES:
        for name in SCENARIOS:
            for s in SCHEDULERS:
                sampled = (name, s) in SAMPLE and topo == TOPOLOGIES[0]
                marks = () if sampled else (pytest.mark.catalog,)
                yield pytest.param(name, s, topo, marks=marks, id=f"{name}-{s}-{topo}")


@pytest.mark.parametrize(("name", "scheduler", "topology"), list(cases()))
def test_canned_scenario_passes(kernel, isolated, name, scheduler, topology):
    sc = SCENARIOS[name]
    for step in sc.steps:
        for op in step.ops:
            p = op.cgroup.payload if op.cgroup else None
            if p is not None and shutil.which(p.program) is None:
                pytest.skip(f"host lacks {p.program} (./scripts/setup installs it)")
    s = sched(kernel, scheduler) if scheduler != "eevdf" else None
    topo = Topology.parse(topology)
    if kernel.nr_cpus is not None and topo.cpus > kernel.nr_cpus:
        pytest.skip(f"{topo} needs {topo.cpus} CPUs; kernel has NR_CPUS={kernel.nr_cpus}")
    req = BootRequest(kernel=kernel, topology=topo, job={})
    rec = execute(req, resolve(sc, topo), s, merge(DEFAULTS, sc.thresholds), isolated / "r")
    assert rec.status is Status.PASS, [f.message for f in rec.verdict.failures]
