from ktstr.evaluate.topology import topology_mismatches
from ktstr.spec.topology import Topology, format_cpus


def sysfs_view(t: Topology, l3_override=None):
    cpus = {
        str(c): {
            "core_cpus": format_cpus(t.core_cpus(c)),
            "l3_cpus": l3_override or format_cpus(t.llc_cpus(t.llc_of(c))),
            "package": str(t.node_of(c)),
            "die": "0",
        }
        for c in range(t.cpus)
    }
    nodes = {str(n): format_cpus(t.node_cpus(n)) for n in range(t.numa_nodes)}
    return {"online": f"0-{t.cpus - 1}", "cpus": cpus, "nodes": nodes}


def test_exact_match_has_no_mismatch():
    t = Topology.parse("2n4l2c2t")
    assert topology_mismatches(t, sysfs_view(t)) == []


def test_merged_llcs_are_caught():
    t = Topology.parse("1n2l2c1t")
    problems = topology_mismatches(t, sysfs_view(t, l3_override="0-3"))
    assert "LLC domains: want 2, guest has 1" in problems


def test_missing_node_and_cpu_are_caught():
    t = Topology.parse("2n2l2c1t")
    view = sysfs_view(t)
    del view["nodes"]["1"]
    del view["cpus"]["3"]
    view["online"] = "0-2"
    problems = topology_mismatches(t, view)
    assert any(p.startswith("NUMA nodes: want 2") for p in problems)
    assert "cpu3: missing in guest sysfs" in problems
    assert any(p.startswith("online CPUs") for p in problems)
