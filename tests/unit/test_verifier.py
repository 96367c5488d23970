"""The verifier's cost per program: taken from the agent's attach report
(untrusted, so checked entry by entry), summarized and tabulated."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ktstr.evaluate.verifier import Program, programs, summary, table
from ktstr.protocol.evidence import Evidence
from ktstr.protocol.messages import Lifecycle

GOOD = {"name": "simple_enqueue", "type": "struct_ops", "verified_insns": 42,
        "xlated_bytes": 336, "jited_bytes": 200, "loaded_at_ms": 12.5, "load_ms": 3.0}  # fmt: skip


def evidence(progs) -> Evidence:
    ev = Evidence()
    ev.lifecycle.append((1.0, Lifecycle(phase="scheduler_attached", detail={"programs": progs})))
    return ev


def test_well_formed_programs_are_kept_and_malformed_dropped():
    bad = [{**GOOD, "verified_insns": -1}, {**GOOD, "load_ms": float("nan")}, "x",
           {**GOOD, "name": 7}, {**GOOD, "verified_insns": True}]  # fmt: skip
    got = programs(evidence([GOOD, *bad, {**GOOD, "name": "simple_exit", "load_ms": None}]))
    assert [p.name for p in got] == ["simple_enqueue", "simple_exit"]
    assert got[1].load_ms is None
    assert summary(got) == (
        "verifier: 2 programs, 84 insns verified (most: simple_enqueue 42, 0.0% of the limit); "
        "loading took 3ms"
    )


def test_table_lines_up_kernels_and_repeated_names():
    a = Program("cpuctl_set", "struct_ops", 9569, 0, 0, 1.0, 281.0)
    b = Program("cpuctl_set", "struct_ops", 8, 0, 0, 2.0, None)
    lines = table({"6.12.117": (a,), "7.3.4": (a, b)})
    assert lines[0].split() == ["program", "6.12.117", "7.3.4"]
    assert lines[2].split() == ["cpuctl_set", "9569", "insns,", "281ms", "9569", "insns,", "281ms"]
    assert lines[3].split() == ["cpuctl_set#2", "-", "8", "insns,", "?"]
    assert lines[-1].split() == ["total", "9569", "insns", "9577", "insns"]


@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(list(GOOD)),
            st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40)),
        ),
        max_size=6,
    )
)
def test_arbitrary_reports_never_raise(entries):  # fmt: skip
    for p in programs(evidence(entries)):
        assert p.verified_insns >= 0 and p.loaded_at_ms >= 0
