"""The catalog check verdict changes are held to: every canned scenario
passes under EEVDF and under scx_simple. The whole sweep (about 15 minutes
here with -n 2) is opt-in, ``KTSTR_CATALOG=1 pytest -n 2
tests/vm/test_catalog.py``; ``KTSTR_CATALOG_TOPOLOGY`` picks other
topologies (comma-separated), ``KTSTR_CATALOG_SCHEDULERS`` the schedulers
and ``KTSTR_CATALOG_REPEAT`` how many times each case runs (the bar is no
false alarm in 5). The default run keeps a sample: the scenario that once failed
under EEVDF itself (pinned_llc, a spread check comparing workers on unequal
terms), the payload smoke load under a sched_ext scheduler, and a few of the
newer work kinds and the share oracle."""

from __future__ import annotations

import itertools
import os
import shutil

import pytest

from ktstr.evaluate.verdict import Status
from ktstr.runner import BootRequest, execute
from ktstr.spec.catalog import SCENARIOS
from ktstr.spec.checks import defaults_for, merge
from ktstr.spec.plan import resolve
from ktstr.spec.topology import Topology
from tests.vm.test_monitor import sched

TOPOLOGIES = os.environ.get("KTSTR_CATALOG_TOPOLOGY", "1n2l2c1t").split(",")
SCHEDULERS = os.environ.get("KTSTR_CATALOG_SCHEDULERS", "eevdf,scx_simple").split(",")
REPEAT = int(os.environ.get("KTSTR_CATALOG_REPEAT", "1"))
#: The default run's sample: (scenario, scheduler) -> the topology it runs at.
#: pairs_together runs at 2 nodes of one 2-CPU LLC each, where a pair has
#: no room to spare: EEVDF keeps it on one LLC in 98-100 % of its wake-ups.
SAMPLE = {
    ("pinned_llc", "eevdf"): "1n2l2c1t", ("scx_smoke", "scx_simple"): "1n2l2c1t",
    ("request_response", "eevdf"): "1n2l2c1t", ("weighted_cgroups", "scx_simple"): "1n2l2c1t",
    ("pi_convoy", "eevdf"): "1n2l2c1t", ("bandwidth_cap", "eevdf"): "1n2l2c1t",
    ("pairs_together", "eevdf"): "2n2l2c1t",
}  # fmt: skip
#: What the sweeps found about a shared example scheduler: findings to report
#: to its authors, not thresholds to loosen. Expected to fail where the
#: topology has what they need (several LLCs or nodes), not
#: strictly: some are near their bar.
FINDINGS = {
    ("pairs_together", "scx_simple"): ("scx_simple starves per-CPU kworkers behind the pairs' "
        "directly dispatched wake-ups: 2.9 s waits at 1n2l2c2t; at 1n2l2c1t the sched_ext "
        "watchdog's own check-in missed 5 s and killed it in 3 of 4 runs of 15 s", "llcs"),
    ("numa_local", "scx_simple"): ("scx_simple moves memory-bound workers off their memory's "
        "node (52 % local at 2n2l2c1t; EEVDF 100 %)", "nodes"),
    ("wake_latency", "scx_simple"): ("scx_simple starves a per-CPU kworker behind a ping-pong "
        "pair's directly dispatched wake-ups: 2.9 s in the shared DSQ at 1n2l2c2t", "llcs"),
}  # fmt: skip


def _applies(needs: str, topology: str) -> bool:
    """A finding shows where the topology has several ``llcs`` or ``nodes``."""
    t = Topology.parse(topology)
    return (t.llcs if needs == "llcs" else t.numa_nodes) >= 2


def cases():
    topologies = TOPOLOGIES + sorted(set(SAMPLE.values()) - set(TOPOLOGIES))
    for topo, name, s, k in itertools.product(topologies, SCENARIOS, SCHEDULERS, range(REPEAT)):
        sampled = SAMPLE.get((name, s)) == topo and k == 0
        if topo not in TOPOLOGIES and not sampled:
            continue
        marks = [] if sampled else [pytest.mark.catalog]
        if (name, s) in FINDINGS and _applies(FINDINGS[name, s][1], topo):
            marks.append(pytest.mark.xfail(reason=FINDINGS[name, s][0], strict=False))
        suffix = f"-r{k + 1}" if REPEAT > 1 else ""
        yield pytest.param(name, s, topo, marks=marks, id=f"{name}-{s}-{topo}{suffix}")


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
    chain = merge(defaults_for(s is not None), sc.thresholds)
    rec = execute(req, resolve(sc, topo), s, chain, isolated / "r")
    if rec.status is Status.SKIP:  # the kernel lacks what the scenario needs (cpu.max on 6.12)
        pytest.skip(rec.verdict.findings[0].message)
    assert rec.status is Status.PASS, [f.message for f in rec.verdict.failures]
