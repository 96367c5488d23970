import pytest

from ktstr.errors import TopologyError
from ktstr.spec.topology import MAX_CPUS, PRESET_LIST, PRESETS, Topology, format_cpus, parse_cpus


def test_name_roundtrip():
    t = Topology.parse("2n4l3c2t")
    assert (t.numa_nodes, t.llcs, t.cores_per_llc, t.threads_per_core) == (2, 4, 3, 2)
    assert t.name == "2n4l3c2t"
    assert t.cpus == 24 and t.cores == 12 and t.llcs_per_node == 2 and t.cpus_per_node == 12


def test_cpu_maps_are_contiguous_per_llc_and_node():
    t = Topology.parse("2n4l2c2t")
    assert t.llc_cpus(0) == (0, 1, 2, 3)
    assert t.llc_cpus(3) == (12, 13, 14, 15)
    assert t.node_cpus(1) == tuple(range(8, 16))
    assert t.core_cpus(5) == (4, 5)
    assert t.llc_of(9) == 2 and t.node_of(9) == 1
    with pytest.raises(IndexError):
        t.llc_cpus(4)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("2n3l2c1t", "multiple of numa_nodes"),
        ("1n0l2c1t", "llcs must be a positive integer"),
        ("1n1l0c1t", "cores_per_llc must be a positive integer"),
        ("0n1l1c1t", "numa_nodes must be a positive integer"),
        ("1n2l100c2t", f"at most {MAX_CPUS}"),
        ("1n1l1c16t", "SMT width"),
        ("4cores", "expected NUMA/LLC/core/thread counts"),
    ],
)
def test_invalid_shapes_give_one_line_errors(text, fragment):
    with pytest.raises(TopologyError) as exc:
        Topology.parse(text)
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)


def test_presets_cover_the_required_range():
    assert len(PRESET_LIST) >= 24
    cpus = [p.topology.cpus for p in PRESET_LIST]
    llcs = [p.topology.llcs for p in PRESET_LIST]
    nodes = {p.topology.numa_nodes for p in PRESET_LIST}
    assert min(cpus) == 4 and max(cpus) == 252
    assert min(llcs) == 1 and max(llcs) == 15
    assert nodes == {1, 2, 3, 4}
    assert any(p.topology.smt for p in PRESET_LIST)
    assert any(not p.topology.smt for p in PRESET_LIST)
    assert len(PRESETS) == len(PRESET_LIST)  # names unique
    assert Topology.parse("numa2-4llc") == PRESETS["numa2-4llc"].topology


@pytest.mark.parametrize(
    ("cpus", "text"), [((0, 1, 2, 3), "0-3"), ((0, 2, 3, 7), "0,2-3,7"), ((5,), "5"), ((), "")]
)
def test_cpulist_roundtrip(cpus, text):
    assert format_cpus(list(cpus)) == text
    assert parse_cpus(text) == cpus
