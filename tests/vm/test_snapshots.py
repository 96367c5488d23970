"""Snapshots and host writes on both shared kernels: scx_qmap's maps by name
and its counters growing, scx_simple's queues holding an oversubscribed
workload, the automatic exit snapshot of a scheduler error, a host write
that makes scx_qmap fail on purpose, and the BTF captures the unit tier
replays."""

from __future__ import annotations

import base64
import gzip
import json
import os
from pathlib import Path

import pytest

from ktstr.cli import main as ktstr_main
from ktstr.evaluate.snapshots import Snapshot, snapshots_of
from ktstr.runner import BootRequest, execute
from ktstr.spec.checks import DEFAULTS
from ktstr.spec.plan import resolve
from ktstr.spec.scenario import CgroupDef, HoldSpec, Op, Scenario, Step
from ktstr.spec.topology import Topology
from tests.vm.conftest import capture_live, kernel_for
from tests.vm.test_monitor import SERIES, sched

TOPO = Topology.parse("1n2l2c1t")
DATA = Path(__file__).parents[1] / "data"


def steps(*parts: tuple[tuple[Op, ...], float]) -> tuple[Step, ...]:
    return tuple(Step(ops=ops, hold=HoldSpec.fraction(f)) for ops, f in parts)


def run(kernel, out: Path, scheduler, parts, duration: float = 6.0):
    sc = Scenario(name="snap", description="", duration_s=duration, steps=steps(*parts))
    req = BootRequest(kernel=kernel, topology=TOPO, job={})
    return execute(req, resolve(sc, TOPO, duration), scheduler, DEFAULTS, out)


def counter(s: Snapshot, name: str):
    """A qmap counter: a .bss global on 6.12, in the arena struct ``qa`` on 7.x."""
    try:
        return s.var(name)
    except LookupError:
        return s.var(f"qa.{name}")


@pytest.mark.parametrize("series", SERIES)
def test_qmap_snapshots_show_its_maps_and_counters(kernels, isolated, series, capsys):
    kernel = kernel_for(kernels, series)
    out = isolated / "res"
    rec = run(kernel, out, sched(kernel, "scx_qmap"), [
        ((Op.add(CgroupDef("cg", workers=6)),), 0.4),
        ((Op.snapshot("first"),), 0.3),
        ((Op.snapshot("second"),), 0.3),
    ])  # fmt: skip
    assert rec.status.value == "pass", [f.message for f in rec.verdict.findings]
    snaps = snapshots_of(out)
    first, second = snaps["first"], snaps["second"]
    assert first.scx["ops"] == "qmap" and first.scx["enable_state"].endswith("ENABLED")
    assert 0 < counter(first, "nr_enqueued") < counter(second, "nr_enqueued")
    assert counter(second, "nr_dispatched") > counter(first, "nr_dispatched")
    names = {m.name for m in second.maps}
    assert {"task_ctx_stor", "scx_qmap.rodata", "scx_qmap.bss"} <= names, names
    assert second.var("slice_ns") == 20_000_000  # .rodata, by name
    if series == "6.12":  # its five FIFOs are inner maps; per-CPU context a per-CPU array
        queues = second.map("queue_arr").entries
        assert [e["map"]["type"] for e in queues] == ["QUEUE"] * 5
        ctx = second.map("cpu_ctx_stor")
        assert [sorted(ctx.cpu(c)) for c in range(4)] == [sorted(ctx.cpu(0))] * 4
        assert "dsp_cnt" in ctx.cpu(2)
    else:  # 7.x keeps queues and per-CPU context in its arena
        assert len(second.var("qa.cpu_ctxs")) >= 4 and "dsp_cnt" in second.var("qa.cpu_ctxs[2]")
    workers = {e["key"]["pid"] for e in second.map("task_ctx_stor").entries if e["key"].get("pid")}
    assert len(workers) >= 6
    assert all(len(s.cpus) == 4 and s.doc["frozen_s"] < 2.0 for s in (first, second))
    assert ktstr_main(["snapshot", "show", str(second.path), "--map", "task_ctx_stor"]) == 0
    assert "task_ctx_stor" in capsys.readouterr().out


def test_simple_queues_hold_every_runnable_worker(kernel, isolated):
    """12 spinners on 4 CPUs under scx_simple: each frozen moment has every
    worker either running on a CPU or queued in a DSQ (a local one, or the
    shared one scx_simple dispatches from)."""
    out = isolated / "res"
    rec = run(kernel, out, sched(kernel, "scx_simple"), [
        ((Op.add(CgroupDef("cg", workers=12)),), 0.4),
        ((Op.snapshot("a"),), 0.2),
        ((Op.snapshot("b"),), 0.2),
        ((Op.snapshot("c"),), 0.2),
    ])  # fmt: skip
    assert rec.status.value == "pass", [f.message for f in rec.verdict.findings]
    pids = {
        pid for e in rec.timeline if e["kind"] == "stimulus" and "pids=" in e["what"]
        for pid in json.loads(e["what"].split("pids=", 1)[1].replace("'", '"')).values()
    }  # fmt: skip
    assert len(pids) == 12
    for s in snapshots_of(out).values():
        running = {c["curr"]["pid"] for c in s.cpus}
        local = {p for cpu in range(4) for p in s.dsq(local=cpu).pids()}
        shared = {p for d in s.doc["dsqs"] for p in s.dsq(int(d["id"], 16)).pids()}
        # A CPU frozen inside the kernel may hold one worker in transit (taken
        # off the shared DSQ, not yet on its local one): seen once, cpu3 at
        # CPL 0 while the other three ran workers in user space.
        regs = s.doc.get("registers") or ""
        in_kernel = sum("CPL=0" in ln and "HLT=0" in ln for ln in regs.splitlines())
        missing = pids - running - local - shared
        assert len(missing) <= in_kernel, (s.name, missing, in_kernel)
        assert len(pids & (local | shared)) >= 8 - len(missing)  # 12 runnable, at most 4 running
        assert all(len(s.dsq(local=c).tasks) == s.dsq(local=c).nr for c in range(4))


def expect_exit_snapshot(rec, out: Path, msg: str) -> Snapshot:
    died = next(f for f in rec.verdict.failures if f.check == "scheduler_died")
    assert msg in died.message
    doc = json.loads((out / "result.json").read_text())
    exits = [m for m in doc["snapshots"] if m["trigger"] == "scheduler_exit"]
    assert len(exits) == 1 and not exits[0].get("late"), exits
    assert doc["explained_by"] == exits[0]["file"]
    snap = Snapshot.load(out / exits[0]["file"])
    assert snap.scx["exit_kind"] == "SCX_EXIT_ERROR_BPF" and msg in snap.scx["exit_msg"]
    assert snap.scx["exit_msg"] in died.message  # the report's reason is the snapshot's
    return snap


@pytest.mark.parametrize("series", SERIES)
def test_scheduler_error_leaves_an_exit_snapshot(kernels, isolated, series, capsys):
    """scx_qmap -e: scx_bpf_error() after 100 enqueues. The guest stops on
    sched_ext's disable path, before the kernel tears the scheduler down:
    the snapshot still shows it enabled, with its maps."""
    kernel = kernel_for(kernels, series)
    out = isolated / "res"
    rec = run(kernel, out, sched(kernel, "scx_qmap", "-e", "100"), [
        ((Op.add(CgroupDef("cg", workers=4)),), 1.0),
    ])  # fmt: skip
    snap = expect_exit_snapshot(rec, out, "test triggering error")
    assert snap.scx["enable_state"].endswith("ENABLED") and len(snap.maps) >= 5
    assert ktstr_main(["snapshot", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "exit: SCX_EXIT_ERROR_BPF" in shown and "test triggering error" in shown


@pytest.mark.parametrize("series", SERIES)
def test_a_host_write_makes_qmap_fail_at_that_moment(kernels, isolated, series):
    """Writing scx_qmap's error countdown (a .bss global on 6.12, ``qa.`` in
    its arena on 7.x) to 1 mid-run: the next enqueue raises its error. The
    timeline shows the write, then the exit."""
    kernel = kernel_for(kernels, series)
    var = "test_error_cnt" if series == "6.12" else "qa.test_error_cnt"
    out = isolated / "res"
    rec = run(kernel, out, sched(kernel, "scx_qmap"), [
        ((Op.add(CgroupDef("cg", workers=4)),), 0.5),
        ((Op.bpf_write(var, 1),), 0.5),
    ])  # fmt: skip
    expect_exit_snapshot(rec, out, "test triggering error")
    (write,) = rec.bpf_writes
    assert write["status"] == 0 and write["old"] == 0 and write["type"] == "u32"
    kinds = [e["kind"] for e in rec.timeline if e["kind"] in ("bpf_write", "sched_exit")]
    assert kinds[0] == "bpf_write" and "sched_exit" in kinds[1:], rec.timeline
    wrote = next(e["at_s"] for e in rec.timeline if e["kind"] == "bpf_write")
    exited = next(e["at_s"] for e in rec.timeline if e["kind"] == "sched_exit")
    assert 0 <= exited - wrote < 5.0


def test_a_rodata_write_is_refused(kernel, isolated):
    out = isolated / "res"
    rec = run(kernel, out, sched(kernel, "scx_qmap"), [
        ((Op.add(CgroupDef("cg", workers=2)),), 0.5),
        ((Op.bpf_write("slice_ns", 1),), 0.5),
    ], duration=3.0)  # fmt: skip
    assert rec.status.value == "fail"
    (write,) = rec.bpf_writes
    assert write["status"] == 1 and ".rodata" in write["error"] and "old" not in write
    text = " ".join(f.message for f in rec.verdict.findings)
    assert "bpf_write slice_ns=1: the host refused (EPERM)" in text, text


@pytest.mark.parametrize("series", SERIES)
def test_capture_btf_the_unit_tests_replay(kernels, isolated, series):
    """scx_qmap's own BTF and the raw bytes of its sections (and 7.x's arena
    globals), with how they render. KTSTR_REGEN_CAPTURE=1 writes them to
    tests/data for the unit tier (tests/unit/test_btf.py)."""
    from drgn import container_of

    from ktstr.inspect.bpfmaps import arena_globals
    from ktstr.inspect.program import open_program
    from ktstr.inspect.snapshot import Snapshotter

    kernel = kernel_for(kernels, series)
    capture: dict = {}

    def grab(mem, info):
        prog = open_program(mem, info, kernel.directory / "vmlinux")
        snap = Snapshotter(prog)
        maps = []
        for m, btf in snap.scheduler_maps_with_btf():
            name, kind = snap.map_name(m), snap.map_type(m)
            vt = int(m.btf_value_type_id.value_())
            if kind == "ARRAY" and vt and btf is not None:
                base = int(container_of(m, "struct bpf_array", "map").value.address_)
                raw = bytes(prog.read(base, int(m.value_size.value_())))
            elif kind == "ARENA" and btf is not None:
                addr, vt = arena_globals(prog, m, btf)
                raw = bytes(prog.read(addr, btf.type(vt).size))
            else:
                continue
            maps.append({
                "name": name, "type_id": vt, "raw": base64.b64encode(raw).decode(),
                "rendered": btf.render(vt, raw),
            })  # fmt: skip
            capture["btf"] = base64.b64encode(btf.raw).decode()
        capture["maps"] = maps

    # No spinners: the maps need none, and with one pinned to each CPU under
    # scx_qmap and one TCG thread the guest sent nothing for 120 s, 3 times
    # in about 8 runs (the shell never reached its echo; a CPU was parsing a
    # 9p reply). Not understood yet; the catalog does not run scx_qmap.
    got = capture_live(kernel, sched(kernel, "scx_qmap").binary, TOPO, grab, spin=False)
    assert got, "no vmcoreinfo"
    assert {"scx_qmap.bss", "scx_qmap.rodata"} <= {m["name"] for m in capture["maps"]}
    assert base64.b64decode(capture["btf"])[:2] == b"\x9f\xeb"
    if os.environ.get("KTSTR_REGEN_CAPTURE"):
        with gzip.open(DATA / f"btf-capture-{series}.json.gz", "wt") as f:
            json.dump(capture, f)
