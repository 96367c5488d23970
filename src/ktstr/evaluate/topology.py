"""Pure: does the guest's sysfs view match the declared Topology?"""

from __future__ import annotations

from typing import Any

from ktstr.spec.topology import Topology, format_cpus, parse_cpus


def topology_mismatches(topo: Topology, seen: dict[str, Any]) -> list[str]:
    """Compare the agent's sysfs report (``guest.agent.guest_topology``) with
    ``topo``; return one line per difference (empty = exact match)."""
    problems: list[str] = []
    want_online = format_cpus(list(range(topo.cpus)))
    if seen.get("online") != want_online:
        problems.append(f"online CPUs: want {want_online}, guest has {seen.get('online')!r}")
    cpus: dict[str, dict[str, str]] = seen.get("cpus", {})
    for cpu in range(topo.cpus):
        info = cpus.get(str(cpu))
        if info is None:
            problems.append(f"cpu{cpu}: missing in guest sysfs")
            continue
        want_smt = format_cpus(topo.core_cpus(cpu))
        if info.get("core_cpus") != want_smt:
            problems.append(f"cpu{cpu}: SMT siblings want {want_smt}, have {info.get('core_cpus')}")
        want_l3 = format_cpus(topo.llc_cpus(topo.llc_of(cpu)))
        if info.get("l3_cpus") != want_l3:
            problems.append(f"cpu{cpu}: L3 shared with want {want_l3}, have {info.get('l3_cpus')}")
    nodes: dict[str, str] = seen.get("nodes", {})
    if len(nodes) != topo.numa_nodes:
        problems.append(f"NUMA nodes: want {topo.numa_nodes}, guest has {len(nodes)}")
    for node in range(topo.numa_nodes):
        want = topo.node_cpus(node)
        have = nodes.get(str(node))
        if have is None or parse_cpus(have) != want:
            problems.append(f"node{node}: want cpus {format_cpus(want)}, have {have}")
    llcs = {info.get("l3_cpus") for info in cpus.values()}
    if len(llcs) != topo.llcs:
        problems.append(f"LLC domains: want {topo.llcs}, guest has {len(llcs)}")
    return problems
