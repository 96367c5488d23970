"""The pytest plugin as a scheduler developer uses it, in real VMs."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import pytest

SAMPLE = """
from ktstr import CgroupDef, Flag, Scheduler, ktstr_test

SIMPLE = Scheduler("scx_simple", flags=[Flag("fifo", args=["-f"])])


@ktstr_test(llcs=1, cores=2, duration=2)
def test_eevdf(ctx):
    ctx.execute_defs([CgroupDef("cg_0", workers=2), CgroupDef("cg_1", workers=2)])


@ktstr_test(scheduler=SIMPLE, llcs=1, cores=2, duration=2)
def test_simple(ctx):
    ctx.execute_defs([CgroupDef("cg_0", workers=2)])
"""


@pytest.fixture(autouse=True)
def _kernel_env(request, monkeypatch):
    """pytester moves HOME (and so the kernel cache): name the kernel."""
    if "kernel" in request.fixturenames:
        monkeypatch.setenv("KTSTR_KERNEL", str(request.getfixturevalue("kernel").directory))


def sidecars(root):
    return [json.loads(p.read_text()) for p in root.glob("*/result.json")]


def test_sample_tests_pass_in_vms(pytester, kernel, isolated):
    pytester.makepyfile(test_sample=SAMPLE)
    res = isolated / "res"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--ktstr-results={res}", "--junitxml=junit.xml", "-v"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_eevdf?1n1l2c1t? PASSED*", "*test_simple?1n1l2c1t? PASSED*"])
    docs = {d["test"]: d for d in sidecars(res)}
    assert docs["test_simple[1n1l2c1t]"]["scheduler"]["name"] == "scx_simple"
    assert docs["test_eevdf[1n1l2c1t]"]["stats"]["workers"] == 4
    suite = ET.parse(pytester.path / "junit.xml").getroot()
    assert len(suite.findall(".//testcase")) == 2
    picked = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-k", "simple", "--collect-only", "-q"
    )
    picked.stdout.fnmatch_lines(["*test_simple*", "1/2 tests collected*"])


def test_failing_test_shows_the_verdict(pytester, kernel, isolated):
    pytester.makepyfile(
        test_bad="""
from ktstr import CgroupDef, ktstr_test

@ktstr_test(duration=2, max_gap_ms=0.01)
def test_impossible_gap(ctx):
    ctx.execute_defs([CgroupDef("cg_0", workers=2)])
"""
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--ktstr-results={isolated / 'res'}"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*FAIL test_impossible_gap?1n1l2c1t?*",
            "*stuck *ms on cpu*",
            "*artifacts: *",
            "*result: *result.json",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_gauntlet_ids_respect_constraints_and_flags(pytester, kernel):
    pytester.makepyfile(
        test_g="""
from ktstr import CgroupDef, Flag, Scheduler, ktstr_test

S = Scheduler("scx_x", flags=[Flag("llc", args=["-l"]), Flag("steal", requires=["llc"]),
                              Flag("kick", excludes=["steal"])])

@ktstr_test(scheduler=S, duration=1, min_llcs=2, max_cpus=8, excluded_flags=["kick"])
def test_x(ctx):
    ctx.execute_defs([CgroupDef("a")])
"""
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--gauntlet", "--collect-only", "-q"
    )
    ids = [ln for ln in result.stdout.lines if "gauntlet/" in ln]
    assert ids and all(f"[gauntlet/test_x/{kernel.version}/" in i for i in ids)
    profiles = {i.rsplit("/", 1)[1].rstrip("]") for i in ids}
    assert profiles == {"base", "llc", "llc+steal"}  # kick excluded, steal needs llc
    presets = {i.split("/")[3] for i in ids}  # gauntlet/<test>/<kernel>/<preset>/<profile>
    assert presets == {
        "tiny-2llc",
        "small-2llc",
        "smt-2llc",
        "small-4llc",
        "numa2-2llc",
        "numa2-4llc",
    }
    plain = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--collect-only", "-q", "-m", "ktstr"
    )
    plain.stdout.fnmatch_lines(["*test_x?1n1l2c1t?*", "1 test collected*"])


def test_kernel_matrix_ids_and_scheduler_kernels(pytester, kernels):
    """--ktstr-kernel twice: every test on both kernels, named by version; a
    scheduler meant for 7.x only is not expanded on 6.12."""
    if len(kernels) < 2:
        pytest.skip("host lacks a second shared kernel for a matrix")
    old, new = kernels["6.12"], kernels["7.3"]
    pytester.makepyfile(
        test_m="""
from ktstr import CgroupDef, Scheduler, ktstr_test

NEW = Scheduler("scx_simple", kernels=["7."])

@ktstr_test(duration=1)
def test_any(ctx):
    ctx.execute_defs([CgroupDef("a")])

@ktstr_test(scheduler=NEW, duration=1)
def test_new(ctx):
    ctx.execute_defs([CgroupDef("a")])
"""
    )
    args = ["--ktstr-kernel", str(old.directory), "--ktstr-kernel", str(new.directory)]
    got = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--collect-only", "-q", *args)
    got.stdout.fnmatch_lines(
        [
            f"*test_any?1n1l2c1t-{old.version}?*",
            f"*test_any?1n1l2c1t-{new.version}?*",
            f"*test_new?1n1l2c1t-{new.version}?*",
            "3 tests collected*",
        ]
    )
    g = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--collect-only", "-q", "--gauntlet", "-k", "test_new", *args
    )
    ids = [ln for ln in g.stdout.lines if "gauntlet/" in ln]
    assert ids and all(f"gauntlet/test_new/{new.version}/" in i for i in ids)


TWO_VMS = """
from ktstr import CgroupDef, ktstr_test

@ktstr_test(cores=2, duration={duration})
def test_a(ctx):
    ctx.execute_defs([CgroupDef("a", workers=2)])

@ktstr_test(cores=2, duration={duration})
def test_b(ctx):
    ctx.execute_defs([CgroupDef("b", workers=2)])
"""


def two_vms_under_xdist(pytester, res, budget: int, duration: int) -> tuple[float, float, float]:
    """Run two 2-vCPU tests with -n 2; (a start, a end, b start), a first."""
    pytester.makepyfile(test_two=TWO_VMS.format(duration=duration))
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-n",
        "2",
        f"--ktstr-results={res}",
        f"--ktstr-vcpu-budget={budget}",
    )
    result.assert_outcomes(passed=2)
    a, b = sorted((d["durations"] for d in sidecars(res)), key=lambda d: d["started_at"])
    return a["started_at"], a["started_at"] + a["total_s"], b["started_at"]


def test_xdist_runs_two_vms_at_once(pytester, kernel, isolated):
    _, a_end, b_start = two_vms_under_xdist(pytester, isolated / "res", budget=4, duration=4)
    assert b_start < a_end, "the two VMs did not overlap"


def test_vcpu_budget_serializes_wide_vms(pytester, kernel, isolated):
    """With a budget of 2 vCPUs, two 2-vCPU VMs must not overlap."""
    _, a_end, b_start = two_vms_under_xdist(pytester, isolated / "res", budget=2, duration=2)
    assert b_start >= a_end - 0.5


def test_a_body_with_two_long_scenarios_passes(pytester, kernel, isolated):
    """Each ScenarioStart arms the host's duration again: the second of two
    35 s scenarios is not killed as a hang (it was, when only the first
    start armed the deadline and ScenarioEnd left 30 s)."""
    pytester.makepyfile(
        test_two="""
from ktstr import CgroupDef, ktstr_test

@ktstr_test(cores=2, duration=35)
def test_twice(ctx):
    ctx.execute_defs([CgroupDef("a", workers=2)])
    ctx.execute_defs([CgroupDef("b", workers=2)])
"""
    )
    res = isolated / "res"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--ktstr-results={res}")
    result.assert_outcomes(passed=1)
    (doc,) = sidecars(res)
    assert [c["name"] for c in doc["stats"]["cgroups"]] == ["s1:a", "s2:b"]
    assert doc["stats"]["workers"] == 4


def test_bodies_see_the_hosts_environment_and_import_errors_name_the_line(
    pytester, kernel, isolated, monkeypatch
):
    monkeypatch.setenv("KTSTR_DEMO_DIR", "/from/the/host")
    pytester.makepyfile(
        test_env="""
import os
from ktstr import CgroupDef, ktstr_test

DIR = os.environ["KTSTR_DEMO_DIR"]

@ktstr_test(cores=2, duration=1)
def test_env(ctx):
    assert DIR == "/from/the/host"
    ctx.execute_defs([CgroupDef("a")])
""",
        test_hidden="""
import os
from ktstr import CgroupDef, ktstr_test

if os.path.exists("/run/ktstr/job.json"):  # only true in the guest
    SECRET = os.environ["KTSTR_DEMO_SECRET"]

@ktstr_test(cores=2, duration=1, env_exclude=["KTSTR_DEMO_SECRET"])
def test_hidden(ctx):
    ctx.execute_defs([CgroupDef("a")])
""",
    )
    monkeypatch.setenv("KTSTR_DEMO_SECRET", "not for the guest")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--ktstr-results={isolated / 'res'}"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*guest agent crashed: TestBodyError: importing *test_hidden.py:5 in the guest*KeyError*"]
    )


SNAPSHOTS = """
from ktstr import CgroupDef, HostRefused, Scheduler, ktstr_test

QMAP = Scheduler("scx_qmap")


def enqueued(snap):
    try:
        return snap.var("nr_enqueued")  # 6.12: a .bss global
    except LookupError:
        return snap.var("qa.nr_enqueued")  # 7.x: in its arena


def check(result):
    before, after = result.snapshots["before"], result.snapshots["after"]
    assert 0 < enqueued(before) < enqueued(after)
    assert after.scx["ops"] == "qmap" and len(after.cpus) == 4
    assert result.record.bpf_writes[0]["status"] == 1  # EPERM: .rodata


@ktstr_test(scheduler=QMAP, llcs=2, cores=2, duration=2, after=check)
def test_qmap_state(ctx):
    ctx.execute_defs([CgroupDef("cg", workers=4)], duration=1)
    assert ctx.snapshot("before")
    ctx.execute_defs([CgroupDef("cg", workers=4)], duration=1)
    assert ctx.snapshot("after")
    try:
        ctx.bpf_write("slice_ns", 1)
    except HostRefused as exc:
        assert ".rodata" in str(exc), exc
    else:
        raise AssertionError("a .rodata write went through")


def fails(result):
    assert result.snapshots["only"].var("no_such_global") == 1


@ktstr_test(scheduler=QMAP, duration=1, after=fails)
def test_after_can_fail(ctx):
    ctx.execute_defs([CgroupDef("cg", workers=2)])
    ctx.snapshot("only")
"""


def test_tests_snapshot_and_assert_on_scheduler_state(pytester, kernel, isolated):
    """ctx.snapshot() in the guest, assertions on the host after the run
    (``after=``); a .rodata write refused in the guest's own words."""
    pytester.makepyfile(test_snaps=SNAPSHOTS)
    res = isolated / "res"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--ktstr-results={res}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*no global 'no_such_global'*"])
    docs = {d["test"]: d for d in sidecars(res)}
    snaps = docs["test_qmap_state[1n2l2c1t]"]["snapshots"]
    assert [s["name"] for s in snaps] == ["before", "after"]
    assert all((res / "test_qmap_state[1n2l2c1t]").glob("snapshot-*.json"))


PAYLOADS = """
from ktstr import CgroupDef, Payload, ktstr_test, payload_parser


@payload_parser
def words(stdout, stderr):
    return {"words": len(stdout.split())}


def check(result):
    assert result.payloads["hackbench"]["time_s"] > 0
    assert result.payloads["echo"] == {"words": 3.0}


@ktstr_test(llcs=1, cores=2, duration=3, after=check, payload={"hackbench.time_s": "<=600"})
def test_payloads(ctx):
    ctx.execute_defs(
        [
            CgroupDef("bench", workers=1, payload=Payload.hackbench(groups=1, loops=10, fds=4)),
            CgroupDef("say", workers=0,
                      payload=Payload.command("echo", "one", "two", "three", name="echo",
                                              parser=words)),
        ]
    )
"""


def test_payloads_in_test_bodies_with_a_registered_parser(pytester, kernel, isolated):
    """The guest announces the plan, the host parses with the parser the test
    module registered, gates from the decorator apply, ``after=`` sees them."""
    if shutil.which("hackbench") is None:
        pytest.skip("host lacks hackbench (./scripts/setup installs rt-tests)")
    pytester.makepyfile(test_pl=PAYLOADS)
    res = isolated / "res"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--ktstr-results={res}")
    result.assert_outcomes(passed=1)
    (doc,) = sidecars(res)
    assert {p["name"] for p in doc["payloads"]} == {"hackbench", "echo"}
    limit = 600 * doc["scale"]["factor"]  # as applied: a time widens under emulation
    assert doc["thresholds"]["payload"] == [f"payload.hackbench.time_s <= {limit:g}"]


def test_repeat_reports_pass_rates(pytester, kernel, isolated):
    """--ktstr-repeat 2: two VMs per case, and each case's pass rate at the end."""
    pytester.makepyfile(
        test_r="""
from ktstr import CgroupDef, ktstr_test

@ktstr_test(cores=2, duration=1)
def test_r(ctx):
    ctx.execute_defs([CgroupDef("a", workers=2)])
"""
    )
    res = isolated / "res"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--ktstr-results={res}", "--ktstr-repeat", "2", "-v"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["*test_r?1n1l2c1t#1? PASSED*", "*test_r?1n1l2c1t#2? PASSED*",
         "*ktstr pass rates*", "test_r?1n1l2c1t?: 2/2 passed (*"]
    )  # fmt: skip
    listed = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--gauntlet", "--ktstr-repeat", "2", "--collect-only", "-q"
    )
    ids = [ln for ln in listed.stdout.lines if "gauntlet/" in ln]
    assert ids and all(i.rstrip("]").endswith(("#1", "#2")) for i in ids)


def test_accepted_flake_rate_decides_the_exit_code(pytester, kernel, isolated):
    """Failures of repeated cases within --ktstr-accept-flake-rate pass the
    session; above it they fail it. Under xdist, too: the controller sees
    every worker's trials."""
    pytester.makepyfile(
        test_f="""
from ktstr import CgroupDef, ktstr_test

@ktstr_test(cores=2, duration=1, max_gap_ms=0.01)
def test_f(ctx):
    ctx.execute_defs([CgroupDef("a", workers=2)])
"""
    )
    common = ["-p", "no:cacheprovider", f"--ktstr-results={isolated / 'res'}",
              "--ktstr-repeat", "2"]  # fmt: skip
    over = pytester.runpytest_subprocess(*common, "--ktstr-accept-flake-rate", "0.5")
    over.assert_outcomes(failed=2)
    assert over.ret == 1
    over.stdout.fnmatch_lines(
        ["test_f?1n1l2c1t?: 0/2 FAILED (*; failing checks: gap x2",
         "over the accepted flake rate 50%: test_f?1n1l2c1t?: 2/2 failed"]
    )  # fmt: skip
    within = pytester.runpytest_subprocess(*common, "-n", "2", "--ktstr-accept-flake-rate", "1")
    within.assert_outcomes(failed=2)
    assert within.ret == 0, within.stdout.str()
    within.stdout.fnmatch_lines(["*every failure is within the accepted flake rate 100%*"])
    bad = pytester.runpytest_subprocess(*common, "--ktstr-accept-flake-rate", "2")
    assert bad.ret != 0 and "must be a rate in 0..1" in bad.stderr.str()
