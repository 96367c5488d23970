"""Payloads: parsers on captured outputs of the real tools (host and guest),
their error outputs, arbitrary text (Hypothesis), and how a run is judged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ktstr.errors import ConfigError
from ktstr.evaluate import payloads as pl
from ktstr.evaluate.account import Expectation, account
from ktstr.evaluate.verdict import Outcome, RunData, Status, evaluate
from ktstr.protocol.messages import PayloadMetrics
from ktstr.runner import check_payload_tools
from ktstr.spec.checks import DEFAULTS, PayloadGate, Scale, Thresholds, merge, scaled
from ktstr.spec.ledger import ExpectedPayload, cpu_groups, expected_payloads
from ktstr.spec.payload import Payload, PayloadKind, Until
from ktstr.spec.plan import resolve
from ktstr.spec.scenario import CgroupDef, CpusetSpec, HoldSpec, Op, Scenario, Step
from ktstr.spec.topology import Topology

DATA = Path(__file__).parent.parent / "data" / "payloads"
TOPO = Topology.parse("1n2l2c1t")


def text(name: str) -> str:
    return (DATA / name).read_text()


def msg(payload: str = "x", **kw) -> PayloadMetrics:
    base = {"cgroup": "cg", "command": [payload], "exit_code": 0, "ended": "exit"}
    return PayloadMetrics(payload=payload, **{**base, **kw})


def expect(p: Payload, planned: float = 5.0) -> ExpectedPayload:
    return ExpectedPayload("cg", 0, p, planned)


# -- parsers on real output -----------------------------------------------------


def test_stress_ng_yaml_per_stressor():
    m = pl.parse_stress_ng(text("stress-ng.yaml"))
    assert m["cpu.bogo_ops"] == 2138 and m["fork.bogo_ops"] == 2051
    assert m["cpu.bogo_ops_per_s"] == pytest.approx(1068.659603)
    assert m["fork.bogo_ops_per_cpu_s"] == pytest.approx(2116.193575)
    assert m["cpu.wall_s"] == pytest.approx(2.000637)
    stopped = pl.parse_stress_ng(text("stress-ng-sigint.yaml"))  # stopped by SIGINT
    assert stopped["cpu.bogo_ops"] == 2305


def test_stress_ng_failure_in_the_guest_is_a_failed_payload():
    """Captured in a TCG guest: the cpu stressor died of SIGILL, stress-ng exited 2."""
    doc = json.loads(text("guest-stress-ng-sigill.json"))
    r = pl.measure(expect(Payload.stress_ng("--cpu", "0")), PayloadMetrics(**doc))
    assert r.check == "payload_failed" and r.problem == "exited with status 2"
    assert "SIGILL" in r.output_tail or "metrics corrupted" in r.output_tail


@pytest.mark.parametrize("name", ["stress-ng-bad-option.out", "stress-ng-no-yaml.out"])
def test_stress_ng_error_outputs_have_no_metrics(name):
    with pytest.raises(pl.ParseError, match="no 'metrics:' section"):
        pl.parse_stress_ng(text(name))


def test_cyclictest_json_per_thread_and_overall():
    m = pl.parse_cyclictest(text("cyclictest.json"))
    assert (m["t0.min_us"], m["t0.max_us"], m["t1.max_us"]) == (19, 4780, 2420)
    assert m["max_us"] == 4780 and m["min_us"] == 11 and m["cycles"] == 1973 + 1331
    assert m["avg_us"] == pytest.approx((96.96 * 1973 + 75.99 * 1331) / 3304)
    assert pl.parse_cyclictest(text("cyclictest-sigint.json"))["cycles"] == 1497


def test_cyclictest_bad_option_exits_0_but_is_not_a_pass():
    """cyclictest exits 0 on an unknown option: only the missing report tells."""
    out = text("cyclictest-bad-option.out")
    r = pl.measure(expect(Payload.cyclictest()), msg("cyclictest", stdout=out, ended="stopped"))
    assert r.check == "payload_unparsed" and "does not parse" in r.problem
    assert "unrecognized option" in r.output_tail


def test_hackbench_and_perf_bench_summaries():
    assert pl.parse_hackbench(text("hackbench.out")) == {"time_s": 0.099}
    assert pl.parse_hackbench(text("hackbench-threads-pipe.out")) == {"time_s": 0.044}
    assert pl.parse_perf_messaging(text("perf-messaging.out")) == {"time_s": 0.143}
    assert pl.parse_perf_messaging(text("perf-messaging-threads-pipe.out")) == {"time_s": 0.031}
    assert pl.parse_perf_pipe(text("perf-pipe.out")) == {
        "time_s": 0.114,
        "usecs_per_op": 5.7111,
        "ops_per_s": 175097,
    }
    assert pl.parse_perf_pipe(text("perf-pipe-threads.out"))["ops_per_s"] == 173978


@pytest.mark.parametrize(
    ("parser", "name"),
    [
        (pl.parse_hackbench, "hackbench-bad-groups.out"),
        (pl.parse_perf_messaging, "perf-bench-unknown.out"),
        (pl.parse_perf_pipe, "perf-pipe-bad-loops.out"),
    ],
)
def test_error_outputs_raise(parser, name):
    with pytest.raises(pl.ParseError, match="expected one"):
        parser(text(name))


def test_two_summaries_are_not_silently_one():
    with pytest.raises(pl.ParseError, match="found 2"):
        pl.parse_hackbench(text("hackbench.out") * 2)


# -- parsers on arbitrary guest text -----------------------------------------

lines = st.lists(
    st.one_of(
        st.text(max_size=40),
        st.sampled_from(
            ["metrics:", "    - stressor: cpu", "      bogo-ops: 12", "      bogo-ops: nan",
             "      bogo-ops-per-second-real-time: 1e999", "      bogo-ops: abc", "Time: 1.5",
             "Time: inf",
             "     Total time: 0.1 [sec]", "  5.0 usecs/op", "  9 ops/sec", "..."]
        ),
    ),
    max_size=30,
).map("\n".join)  # fmt: skip
json_text = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=20,
).map(lambda v: json.dumps({"thread": v}))


@settings(max_examples=300, deadline=None)
@given(st.one_of(lines, json_text, st.text(max_size=500)))
def test_parsers_return_finite_metrics_or_parse_error(raw):
    for parser in (
        pl.parse_stress_ng,
        pl.parse_cyclictest,
        pl.parse_hackbench,
        pl.parse_perf_messaging,
        pl.parse_perf_pipe,
    ):
        try:
            out = parser(raw)
        except pl.ParseError:
            continue
        assert out and all(isinstance(v, float) and math.isfinite(v) for v in out.values())


# -- custom parsers -------------------------------------------------------------


@pl.payload_parser
def parse_kv(stdout: str, stderr: str) -> dict[str, float]:
    return {k: float(v) for k, v in (ln.split("=") for ln in stdout.split())}


def not_registered(stdout: str, stderr: str) -> dict[str, float]:
    return {"x": 1.0}


def test_custom_parser_must_be_registered_and_sane():
    cmd = Payload.command("sh", "-c", "echo a=1", name="kv", parser=parse_kv)
    assert cmd.parser == f"{Path(__file__).resolve()}:parse_kv"
    by_module = Payload.command("true", name="m", parser=f"{__name__}:parse_kv")
    assert pl.measure(expect(by_module), msg("m", stdout="c=3")).metrics == {"c": 3.0}
    assert pl.measure(expect(cmd), msg("kv", stdout="a=1 b=2.5")).metrics == {"a": 1.0, "b": 2.5}
    r = pl.measure(expect(cmd), msg("kv", stdout="a=nan"))
    assert r.check == "payload_unparsed" and "not a usable number" in r.problem
    r = pl.measure(expect(cmd), msg("kv", stdout="junk"))
    assert r.check == "payload_unparsed" and "raised ValueError" in r.problem
    # A guest-announced plan may name any function: only registered ones run.
    other = Payload.command("true", name="x", parser="os:system")
    assert "not registered" in pl.measure(expect(other), msg("x")).problem
    plain = Payload.command("true", name="y", parser=not_registered)
    assert "not registered" in pl.measure(expect(plain), msg("y")).problem
    with pytest.raises(ConfigError, match="module-level function"):
        Payload.command("true", name="z", parser=lambda o, e: {})


# -- how a run is judged ----------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "kw", "check", "text_"),
    [
        (Payload.hackbench(), {"exit_code": 1}, "payload_failed", "exited with status 1"),
        (Payload.hackbench(), {"ended": "stopped", "exit_code": -9}, "payload_incomplete", "5.0s"),
        (Payload.cyclictest(), {"ended": "stopped", "exit_code": -9}, "payload_failed", "signal 9"),
        (Payload.hackbench(), {"ended": "never", "error": "hackbench: not found"},
         "payload_failed", "not found"),
        (Payload.hackbench(), {"ended": "weird"}, "malformed_frame", "weird"),
        (Payload.hackbench(), {"stdout": ""}, "payload_unparsed", "expected one 'Time:'"),
    ],
)  # fmt: skip
def test_runs_that_went_wrong(payload, kw, check, text_):
    r = pl.measure(expect(payload), msg(payload.name, **kw))
    assert r.check == check and text_ in r.problem and not r.metrics


def test_guest_killed_perf_pipe_is_incomplete():
    doc = json.loads(text("guest-perf-pipe-killed.json"))
    r = pl.measure(expect(Payload.perf_pipe()), PayloadMetrics(**doc))
    assert r.check == "payload_incomplete"


def test_command_without_parser_counts_only_its_exit():
    r = pl.measure(expect(Payload.command("true", name="t")), msg("t"))
    assert not r.problem and r.metrics == {}


def test_gates_merge_scale_and_judge():
    t = Thresholds.parse(["payload.hackbench.time_s<=12", "payload.sng.cpu.bogo_ops_per_s>=100"])
    assert [g.describe() for g in t.payload] == [
        "payload.hackbench.time_s <= 12",
        "payload.sng.cpu.bogo_ops_per_s >= 100",
    ]
    s = scaled(t, Scale(4.0, "TCG x4"))
    assert [g.value for g in s.payload] == [48.0, 25.0]  # times widen, rates narrow
    off = merge(DEFAULTS, t, Thresholds(payload={"hackbench.time_s": "off"}))
    assert off.active()["payload"] == ["payload.sng.cpu.bogo_ops_per_s >= 100"]
    hb = pl.measure(expect(Payload.hackbench()), msg("hackbench", stdout="Time: 50.5"))
    found = pl.payload_findings((hb,), s.payload, "TCG x4")
    assert [(c, m) for c, m, _ in found] == [
        ("payload_gate", "payload hackbench: time_s = 50.5, limit <= 48 (scaled: TCG x4)"),
        ("payload_gate", "gate payload.sng.cpu.bogo_ops_per_s >= 25: no payload 'sng' ran"),
    ]


@pytest.mark.parametrize(
    "bad",
    ["payload.hackbench.time_s=12", "payload.Hack.time_s<=1", "payload.x.y<=nan", "payload.x<=1"],
)
def test_bad_gates_are_config_errors(bad):
    with pytest.raises(ConfigError):
        Thresholds.parse([bad])


def test_spec_validation():
    with pytest.raises(ConfigError, match="sets --yaml"):
        Payload.stress_ng("--cpu", "1", "--yaml", "x")
    with pytest.raises(ConfigError, match="at least one stressor"):
        Payload.stress_ng("--metrics")
    with pytest.raises(ConfigError, match="payload name"):
        Payload.hackbench(name="Bad Name")
    with pytest.raises(ConfigError, match="groups must be"):
        Payload.hackbench(groups=0)
    with pytest.raises(ConfigError, match="priority"):
        Payload.cyclictest(priority=100)
    two = [
        CgroupDef("a", workers=0, payload=Payload.hackbench()),
        CgroupDef("b", workers=0, payload=Payload.hackbench()),
    ]
    with pytest.raises(ConfigError, match="used in cgroups 'a' and 'b'"):
        resolve(Scenario.of_defs("s", two), TOPO)


# -- the plan owes one result per payload run --------------------------------------


def _readd_plan():
    bench = CgroupDef("bench", workers=0, cpuset=CpusetSpec.llc(1), payload=Payload.hackbench())
    return resolve(
        Scenario(
            name="readd",
            description="",
            steps=(
                Step(ops=(Op.add(bench),), hold=HoldSpec.fraction(0.5)),
                Step(ops=(Op.remove("bench"), Op.add(bench)), hold=HoldSpec.fraction(0.5)),
            ),
        ),
        TOPO,
        4.0,
    )


def test_ledger_owes_each_run_of_a_payload():
    plan = _readd_plan()
    owed = expected_payloads(plan, tuple(range(4)))
    assert [(e.cgroup, e.index, e.planned_s) for e in owed] == [
        ("bench", 0, 2.0),
        ("bench", 1, 2.0),
    ]
    assert cpu_groups(plan, tuple(range(4))) == ((2, 3),)  # the payload's cpuset is balanced


def test_account_lost_duplicate_and_unexpected_payloads():
    from ktstr.protocol.evidence import Evidence, ScenarioRecord
    from ktstr.protocol.messages import Exit, RunSummary, ScenarioStart, TestResult
    from ktstr.spec.serde import to_data

    plan = _readd_plan()
    rec = ScenarioRecord(start=ScenarioStart(name="readd", plan=to_data(plan)), started_at=0)
    rec.ended_at = 4.0
    ok = msg("hackbench", cgroup="bench", stdout="Time: 1.0")
    rec.payloads = [ok, ok, msg("stranger", cgroup="bench")]
    ev = Evidence(scenarios=[rec], exit=Exit(code=0))
    ev.results.append(TestResult(name="readd", passed=True, data=to_data(RunSummary())))
    _, problems, results = account(ev, Expectation(name="readd", topology=TOPO, plans=(plan,)))
    assert {p.check for p in problems} == {
        "lost_payload",
        "duplicate_payload",
        "unexpected_payload",
    }
    assert results == []  # the duplicated run is not measured; the lost one cannot be
    verdict = evaluate(RunData(payloads=tuple(results), completeness=tuple(problems),
                               outcome=Outcome()), DEFAULTS)  # fmt: skip
    assert verdict.status is Status.FAIL


def test_missing_tool_is_one_line_before_boot(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    plan = resolve(Scenario.of_defs("s", [CgroupDef("a", payload=Payload.cyclictest())]), TOPO)
    with pytest.raises(ConfigError, match="needs 'cyclictest'") as exc:
        check_payload_tools(plan)
    assert "apt-get install rt-tests" in str(exc.value.hint)


def test_until_defaults():
    assert Payload.hackbench().until is Until.EXIT
    assert Payload.stress_ng("--cpu", "1").until is Until.STOPPED
    assert Payload.cyclictest().kind is PayloadKind.CYCLICTEST
    assert PayloadGate.parse("payload.x.y>=2").op == ">="


def test_a_kernel_without_high_res_timers_skips_cyclictest(tmp_path):
    """Without HIGH_RES_TIMERS cyclictest would measure the tick: a SKIP that
    says so, not a PASS over the wrong quantity (and no VM is started)."""
    from ktstr.host.kernel import Kernel
    from ktstr.runner import BootRequest, execute

    config = "CONFIG_SCHED_CLASS_EXT=y\n# CONFIG_HIGH_RES_TIMERS is not set\n"
    k = Kernel(directory=tmp_path, image=tmp_path / "vmlinux", version="6.12.0", config_text=config)
    sc = Scenario.of_defs("lat", [CgroupDef("a", workers=0, payload=Payload.cyclictest())])
    need_tools(sc)
    rec = execute(BootRequest(kernel=k, topology=TOPO, job={}), resolve(sc, TOPO), None,
                  DEFAULTS, tmp_path / "r")  # fmt: skip
    assert rec.status is Status.SKIP
    assert "lacks CONFIG_HIGH_RES_TIMERS (without it cyclictest measures the 1 ms tick)" in (
        rec.verdict.findings[0].message
    )
    assert json.loads((tmp_path / "r" / "result.json").read_text())["status"] == "skip"


def need_tools(sc: Scenario) -> None:
    try:
        check_payload_tools(resolve(sc, TOPO))
    except ConfigError as exc:
        pytest.skip(f"host lacks a payload tool: {exc}")


def test_a_non_number_in_the_yaml_is_a_parse_error_not_a_crash():
    yaml = "metrics:\n    - stressor: cpu\n      bogo-ops: abc\n"
    with pytest.raises(pl.ParseError, match="'abc' is not a number"):
        pl.parse_stress_ng(yaml)


@pl.payload_parser
def parse_huge(stdout: str, stderr: str) -> dict[str, float]:
    return {"x": 10**400}


def test_a_parser_returning_a_huge_int_is_a_finding():
    cmd = Payload.command("true", name="h", parser=parse_huge)
    r = pl.measure(expect(cmd), msg("h"))
    assert r.check == "payload_unparsed" and "out of range" in r.problem
