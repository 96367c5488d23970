"""The whole host path against a broken or hostile guest, without a VM.

Bytes -> decoder -> evidence collector -> coordinator -> accounting ->
verdict, exactly as the runner wires them. Streams are CRC-valid frames with
arbitrary payloads, orders and repeats of every kind. Asserted: nothing
escapes as an exception, memory stays bounded, and PASS comes only with a
complete honest stream (docs/results.md, "Fail closed").
"""

from __future__ import annotations

import dataclasses
import json
import random
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ktstr.evaluate.account import Expectation, run_data
from ktstr.evaluate.verdict import Outcome, Status, Verdict, evaluate
from ktstr.host.coordinator import Coordinator, Exited, Kill, Watch
from ktstr.protocol.evidence import Budget, Collector
from ktstr.protocol.frames import FrameDecoder, encode_frame
from ktstr.protocol.messages import (
    TEXT_KINDS,
    Exit,
    Lifecycle,
    MessageKind,
    PayloadError,
    RunSummary,
    ScenarioEnd,
    ScenarioStart,
    Stimulus,
    WorkerReport,
    WorkerReports,
)
from ktstr.protocol.messages import TestResult as Result
from ktstr.protocol.validate import decode_payload
from ktstr.spec.checks import DEFAULTS
from ktstr.spec.ledger import expected_workers
from ktstr.spec.plan import resolve
from ktstr.spec.scenario import CgroupDef, CpusetSpec, Scenario
from ktstr.spec.serde import to_data
from ktstr.spec.topology import Topology

TOPO = Topology.parse("1n2l2c1t")
PLAN = resolve(
    Scenario.of_defs(
        "steady",
        [CgroupDef("cg0", workers=2, cpuset=CpusetSpec.llc(0)), CgroupDef("cg1", workers=2)],
    ),
    TOPO,
    2.0,
)
EXPECT = Expectation(name="steady", topology=TOPO, plans=(PLAN,), scheduler=True)
Msg = tuple[int, bytes]  # (kind, payload) of one frame


def _report(w) -> WorkerReport:
    cpu = w.allowed[w.index % len(w.allowed)]
    return WorkerReport(
        cgroup=w.cgroup, index=w.index, pid=100 + w.index, iterations=500, work_units=500,
        wall_s=w.planned_s, cpu_s=1.9, max_gap_ms=20.0, max_gap_cpu=cpu, cpus=[cpu],
        on_cpu_ms=1900.0,
    )  # fmt: skip


def honest() -> list[Msg]:
    """What a healthy agent sends for PLAN under a scheduler."""
    msgs: list = [
        (MessageKind.SYS_READY, b""),
        Lifecycle(phase="ready", detail={"uptime_s": 1.5}),
        Lifecycle(phase="scheduler_attached", detail={"ops": "simple"}),
        ScenarioStart(name="steady", plan=to_data(PLAN)),
        Stimulus(t_ms=1.0, op="add_cgroup", detail={"cgroups": ["cg0"]}),
        (MessageKind.SCHED_LOG, b"simple: running\n"),
        ScenarioEnd(name="steady"),
    ]
    by_cg: dict[str, list[WorkerReport]] = {}
    for w in expected_workers(PLAN, tuple(range(TOPO.cpus))):
        by_cg.setdefault(w.cgroup, []).append(_report(w))
    msgs += [WorkerReports(cgroup=cg, reports=rs) for cg, rs in sorted(by_cg.items())]
    msgs += [
        Lifecycle(phase="scheduler_stopped"),
        Result(name="steady", passed=True, data=dataclasses.asdict(RunSummary(runs=1))),
        Exit(code=0),
    ]
    return [m if isinstance(m, tuple) else (int(m.KIND), m.to_bytes()) for m in msgs]


HONEST = honest()
#: Frames a PASS may not do without.
REQUIRED = [
    i
    for i, (k, p) in enumerate(HONEST)
    if k
    in (
        MessageKind.SCENARIO_START,
        MessageKind.SCENARIO_END,
        MessageKind.WORKER_REPORTS,
        MessageKind.TEST_RESULT,
        MessageKind.EXIT,
    )
    or (k == MessageKind.LIFECYCLE and b"scheduler_attached" in p)
]


def host_path(
    stream: bytes, chunk: int = 4096, budget: Budget | None = None
) -> tuple[Verdict, Collector]:
    """The runner's pure path over one captured stream."""
    dec = FrameDecoder()
    col = Collector(budget=budget or Budget())
    coord = Coordinator(started=0.0, watch=Watch(scenario_s=2.0))
    now = 0.0
    done = False
    for i in range(0, len(stream), chunk):
        for frame in dec.feed(stream[i : i + chunk]):
            now += 0.01
            actions = coord.handle(col.add(frame, now), now)
            if any(isinstance(a, Kill | Exited) for a in actions):
                done = True  # the runner stops reading here
                break
        if done:
            break
    if not done:
        for frame in dec.finish():
            coord.handle(col.add(frame, now), now)
    verdict = evaluate(run_data(col.evidence, EXPECT, Outcome()), DEFAULTS)
    return verdict, col


def encode(msgs: list[Msg]) -> bytes:
    return b"".join(encode_frame(k, p, i + 1) for i, (k, p) in enumerate(msgs))


def test_an_honest_stream_passes():
    verdict, col = host_path(encode(HONEST))
    assert verdict.status is Status.PASS, verdict.findings
    assert col.evidence.malformed_count == 0 and verdict.stats.workers == 4


@settings(max_examples=60, deadline=None)
@given(drop=st.sampled_from(REQUIRED), chunk=st.integers(1, 5000))
def test_losing_any_required_frame_fails(drop, chunk):
    msgs = [m for i, m in enumerate(HONEST) if i != drop]
    verdict, _ = host_path(encode(msgs), chunk)
    assert verdict.status is Status.FAIL


@settings(max_examples=60, deadline=None)
@given(tear=st.sampled_from(REQUIRED), bit=st.integers(0, 7))
def test_tearing_any_required_frame_fails(tear, bit):
    frames = [encode_frame(k, p, i + 1) for i, (k, p) in enumerate(HONEST)]
    raw = bytearray(frames[tear])
    raw[-1] ^= 1 << bit  # payload CRC no longer matches
    frames[tear] = bytes(raw)
    verdict, _ = host_path(b"".join(frames))
    assert verdict.status is Status.FAIL


@settings(max_examples=60, deadline=None)
@given(
    dup=st.sampled_from(
        [i for i in REQUIRED if HONEST[i][0] not in (MessageKind.LIFECYCLE, MessageKind.EXIT)] + [0]
    ),
    where=st.integers(0, len(HONEST) - 1),
)
def test_repeating_a_verdict_frame_fails(dup, where):
    """A second ready, scenario start or end, report set or result (before
    the Exit: the host reads nothing after it)."""
    msgs = list(HONEST)
    msgs.insert(min(max(where, dup + 1), len(HONEST) - 1), HONEST[dup])
    verdict, _ = host_path(encode(msgs))
    assert verdict.status is Status.FAIL


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
kinds = st.sampled_from([int(k) for k in MessageKind] + [0, 77, 0xFFFF])


@st.composite
def bad_payloads(draw) -> bytes:
    """A payload that cannot be its kind's: wrong types, NaN, unknown or
    missing fields, deep nesting, not JSON at all."""
    how = draw(st.sampled_from(["junk", "nan", "deep", "extra", "array", "types"]))
    if how == "junk":
        return b"\xff" + draw(st.binary(max_size=50))
    if how == "nan":
        return b'{"code": NaN, "name": Infinity}'
    if how == "deep":
        depth = draw(st.integers(20, 5000))
        return b"[" * depth + b"]" * depth
    if how == "extra":
        return json.dumps({"x_unknown": draw(json_values)}).encode()
    if how == "array":
        return json.dumps([draw(json_values)]).encode()
    return json.dumps(
        {"name": draw(st.integers()), "code": "0", "reports": {}, "cgroup": [], "phase": 1}
    ).encode()


json_kinds = st.sampled_from(
    [int(k) for k in MessageKind if k not in TEXT_KINDS and k != MessageKind.SYS_READY]
)


@settings(max_examples=150, deadline=None)
@given(kind=json_kinds, payload=bad_payloads(), where=st.integers(0, len(HONEST) - 1))
def test_a_malformed_frame_anywhere_fails_and_is_named(kind, payload, where):
    msgs = list(HONEST)
    msgs.insert(where, (kind, payload))
    verdict, col = host_path(encode(msgs))
    assert verdict.status is Status.FAIL
    assert col.evidence.malformed_count >= 1
    (finding,) = [f for f in verdict.findings if f.check == "malformed_frame"]
    assert MessageKind(kind).name in finding.message


def _decodes(kind: int, payload: bytes) -> bool:
    try:
        decode_payload(kind, payload)
    except PayloadError:
        return False
    return True


def _complete(stream_msgs: list[Msg]) -> bool:
    """Every required honest frame delivered intact, before any Exit."""
    seen = []
    for k, p in stream_msgs:
        seen.append((k, p))
        if k == MessageKind.EXIT:
            break
    return all(HONEST[i] in seen for i in REQUIRED)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.booleans(),
    inserts=st.lists(
        st.tuples(
            st.integers(0, 40),
            kinds,
            st.one_of(
                st.binary(max_size=200),
                bad_payloads(),
                json_values.map(lambda v: json.dumps(v).encode()),
            ),
        ),
        max_size=8,
    ),
    drops=st.lists(st.integers(0, 40), max_size=3),
    seed=st.integers(0, 2**32),
    chunk=st.integers(1, 3000),
)
def test_arbitrary_streams_never_raise_and_pass_only_when_complete(
    base, inserts, drops, seed, chunk
):
    msgs = list(HONEST) if base else []
    for d in drops:
        if msgs:
            del msgs[d % len(msgs)]
    for where, kind, payload in inserts:
        msgs.insert(where % (len(msgs) + 1), (kind, payload))
    random.Random(seed).shuffle(msgs) if seed % 7 == 0 else None
    tracemalloc.start()
    try:
        verdict, col = host_path(encode(msgs), chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20
    if verdict.status is Status.PASS:
        assert _complete(msgs)
        assert all(_decodes(k, p) for k, p in msgs[: msgs.index(HONEST[-1]) + 1])
        assert col.evidence.malformed_count == 0 and col.evidence.sched_exit is None


def test_flooding_the_host_keeps_memory_bounded():
    """Tens of thousands of valid frames: what is kept stops at the budget,
    and going over it fails the run."""
    budget = Budget(payload_bytes=1 << 20, reports=64, items=200)
    big = WorkerReport(cgroup="cg0", index=0, pid=1, wake_lat_us=[1.5] * 20000)
    flood: list[Msg] = list(HONEST[:4])
    flood += [(int(MessageKind.STIMULUS), Stimulus(t_ms=1.0, op="x").to_bytes())] * 20000
    flood += [
        (int(MessageKind.WORKER_REPORTS), WorkerReports(cgroup="cg0", reports=[big]).to_bytes())
    ] * 300
    flood += [(int(MessageKind.STDOUT), b"x" * 60000)] * 300
    flood += HONEST[4:]
    stream = encode(flood)
    tracemalloc.start()
    try:
        verdict, col = host_path(stream, 1 << 18, budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert col.evidence.kept_bytes <= budget.payload_bytes
    assert verdict.status is Status.FAIL
    assert {f.check for f in verdict.failures} >= {"evidence_overflow"}
    assert peak < 48 << 20, peak  # the stream itself is ~100 MiB


@pytest.mark.parametrize(
    ("msg", "check"),
    [
        (Exit(code=3), "agent_exit"),
        (Result(name="steady", passed=False, data={"leftover_cgroups": ["x"]}), "no_result"),
    ],
)
def test_a_failing_exit_or_result_fails(msg, check):
    msgs = [m for m in HONEST if m[0] != msg.KIND] + []
    at = next(i for i, m in enumerate(HONEST) if m[0] == msg.KIND)
    msgs.insert(at, (int(msg.KIND), msg.to_bytes()))
    verdict, _ = host_path(encode(msgs))
    assert verdict.status is Status.FAIL


def test_reports_cannot_switch_isolation_off_or_claim_other_cpus():
    """The host's plan decides where a worker may run: a report that ran
    outside its cpuset fails isolation, whatever else it says."""
    msgs = []
    for k, p in HONEST:
        out = p
        if k == MessageKind.WORKER_REPORTS and b'"cg0"' in p:
            doc = json.loads(p)
            doc["reports"][0]["cpus"] = [0, 3]
            out = json.dumps(doc).encode()
        msgs.append((k, out))
    verdict, _ = host_path(encode(msgs))
    assert [f.check for f in verdict.failures] == ["isolation"]


@pytest.mark.parametrize(
    ("bad", "why"),
    [("1.5", "expected a number"), (True, "expected a number"), (-1.0, "outside"),
     (1e300, "outside"), (None, "expected a number")],
)  # fmt: skip
def test_one_bad_latency_among_thousands_is_named(bad, why):
    """Long number lists are checked in bulk; one bad item still fails the
    report and is named by its index."""
    lat: list[object] = [12.5] * 5000
    report = {"cgroup": "cg0", "index": 0, "pid": 1, "wake_lat_us": lat}
    kind = int(MessageKind.WORKER_REPORTS)
    good = decode_payload(kind, json.dumps({"cgroup": "cg0", "reports": [report]}).encode())
    assert isinstance(good, WorkerReports) and good.reports[0].wake_lat_us == lat
    lat[4321] = bad
    with pytest.raises(PayloadError, match=rf"wake_lat_us\[4321\]: .*{why}"):
        decode_payload(kind, json.dumps({"cgroup": "cg0", "reports": [report]}).encode())


@pytest.mark.parametrize(
    ("place", "why"),
    [({"waker_cpu": 9000, "cpu": 0, "count": 1}, r"\[1\]\.waker_cpu: 9000 outside"),
     ({"waker_cpu": 0, "cpu": 1, "count": 0}, r"\[1\]\.count: 0 outside"),
     ({"waker_cpu": 0, "cpu": 1}, r"\[1\]\.count: missing"),
     ({"waker_cpu": 0, "cpu": 1, "count": 1, "llc": 0}, r"\[1\]: unknown field 'llc'")],
)  # fmt: skip
def test_a_bad_wake_place_is_named(place, why):
    """Wake-ups by where both partners ran feed the ``together`` check: a
    place naming an impossible CPU or count fails the report."""
    ok = {"waker_cpu": 0, "cpu": 1, "count": 5}
    report = {"cgroup": "cg0", "index": 0, "pid": 1, "wake_places": [ok, place]}
    kind = int(MessageKind.WORKER_REPORTS)
    with pytest.raises(PayloadError, match=rf"wake_places{why}"):
        decode_payload(kind, json.dumps({"cgroup": "cg0", "reports": [report]}).encode())
    report["wake_places"] = [ok] * 1025
    with pytest.raises(PayloadError, match="1025 items, at most 1024"):
        decode_payload(kind, json.dumps({"cgroup": "cg0", "reports": [report]}).encode())
