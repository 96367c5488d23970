"""The sched_ext selftests' results, judged on the host: a captured 7.3 run
(33 selftests in a 4-vCPU TCG guest), what breaks it, and arbitrary blocks."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ktstr.evaluate.kselftest import counts, judge, parse_block
from ktstr.protocol.messages import TestResult as Result

DATA = Path(__file__).parent.parent / "data"


def captured() -> list[Result]:
    with gzip.open(DATA / "kselftest-7.3.json.gz", "rt") as f:
        return [Result(**d) for d in json.load(f)]


def names(results: list[Result]) -> list[str]:
    return [r.name.removeprefix("selftest:") for r in results if r.name.startswith("selftest:")]


def by_status(out) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {}
    for r in out:
        got.setdefault(r.status, []).append(r.name)
    return got


def test_captured_7_3_run():
    res = captured()
    out = by_status(judge(res, names(res)))
    assert len(out["pass"]) == 32 and out["skip"] == ["nohz_tick"] and "fail" not in out
    skip = next(r for r in judge(res, None) if r.name == "nohz_tick")
    assert "no allowed NOHZ_FULL CPU" in skip.message
    assert counts(res[-1].data["tail"]) == {"PASSED": 32, "SKIPPED": 1, "FAILED": 0}


def test_a_lost_block_fails_the_test_and_the_count():
    res = [r for r in captured() if r.name != "selftest:minimal"]
    out = {r.name: r for r in judge(res, [*names(res), "minimal"])}
    assert out["minimal"].status == "fail" and "never ran it" in out["minimal"].message
    assert out["(runner)"].status == "fail" and "the runner counted" in out["(runner)"].message


def test_a_runner_that_dies_fails_the_test_it_was_in():
    res = captured()[:5]  # four blocks, then the guest died
    res.append(Result(name="selftest-run", passed=False,
                          data={"exit_code": None, "timed_out": False, "unfinished": "dsp_local_on",
                                "tail": "the guest died"}))  # fmt: skip
    out = {r.name: r for r in judge(res, None)}
    assert out["dsp_local_on"].status == "fail" and "died" in out["dsp_local_on"].message
    timed = [*captured()[:3], Result(name="selftest-run", passed=False,
             data={"exit_code": -9, "timed_out": True, "unfinished": "x", "tail": ""})]  # fmt: skip
    assert {r.name: r.message for r in judge(timed, None)}["x"].startswith("the runner timed out")


def test_no_run_summary_and_forged_results():
    res = [r for r in captured() if r.name != "selftest-run"]
    assert any(r.name == "(runner)" and "never reported" in r.message for r in judge(res, None))
    forged = Result(name="selftest:minimal", passed=True, data={"block": "TEST: minimal\n"})
    out = {r.name: r for r in judge([*captured(), forged], None)}
    assert out["minimal"].status == "fail"  # a second, different result for the same test
    assert "no result line" in parse_block("minimal", "TEST: minimal\nok 1 other #").message
    failed = parse_block("t", "OUTPUT:\nERR: t.c:10\nExpected 1 got 0\nnot ok 3 t # ")
    assert failed.status == "fail" and failed.message.startswith("ERR: t.c:10")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.builds(
            Result,
            name=st.one_of(st.sampled_from(["selftest-run", "selftest:minimal", "selftest:a b"]),
                           st.text(max_size=20).map(lambda s: "selftest:" + s)),
            passed=st.booleans(),
            data=st.recursive(
                st.none() | st.integers() | st.floats() | st.text(max_size=40),
                lambda k: st.dictionaries(
                    st.sampled_from(["block", "tail", "unfinished", "timed_out", "exit_code",
                                     "duration_s", "filter"]), k, max_size=6),
                max_leaves=10,
            ),
        ),
        max_size=8,
    ),
    st.one_of(st.none(), st.lists(st.sampled_from(["minimal", "exit"]), max_size=2)),
)  # fmt: skip
def test_arbitrary_guest_results_never_raise_and_never_pass_unseen_tests(results, expected):
    out = judge(results, expected)
    for name in expected or ():
        r = next(x for x in out if x.name == name)
        if not any(x.name == f"selftest:{name}" for x in results):
            assert r.status == "fail"


def test_a_block_name_cannot_leave_its_directory():
    """Names become directories: '..', '.' and '_vm' are the runner's damage."""
    for bad in ("..", ".", "_vm", "a/b"):
        out = judge([Result(name=f"selftest:{bad}", passed=True, data={"block": ""})], None)
        assert all(r.name == "(runner)" for r in out)
        assert any("unnamed test" in r.message for r in out)
