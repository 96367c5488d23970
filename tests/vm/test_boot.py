"""Boot the shared sched_ext kernel at declared topologies and check what the
guest sees, from its own sysfs."""

from __future__ import annotations

import json

import pytest

from ktstr.evaluate.topology import topology_mismatches
from ktstr.runner import BootRequest, run_guest
from ktstr.spec.topology import Topology

SHAPES = {
    "1n2l2c1t": "2 LLCs in 1 node",
    "2n4l2c1t": "2 NUMA nodes with 2 LLCs each",
    "1n1l2c2t": "SMT 2",
    "2n4l2c2t": "16 vCPUs: NUMA + LLCs + SMT",
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_guest_sees_declared_topology(kernel, isolated, shape):
    topo = Topology.parse(shape)
    run = run_guest(BootRequest(kernel=kernel, topology=topo, job={"mode": "probe"}))
    seen = run.result("topology")
    assert seen is not None, "the guest sent no topology report"
    assert topology_mismatches(topo, seen.data) == []
    assert len(seen.data["cpus"]) == topo.cpus
    assert len(seen.data["nodes"]) == topo.numa_nodes
    assert len({c["l3_cpus"] for c in seen.data["cpus"].values()}) == topo.llcs
    # the agent said SysReady over the virtio-serial port, then exited cleanly
    assert run.timings.ready is not None and run.exit_code == 0
    assert run.timings.kernel_start is not None
    assert 0 < run.timings.kernel_start < run.timings.ready < run.timings.qemu_exit


def test_snapshot_request_freezes_captures_and_replies(kernel, isolated):
    run = run_guest(
        BootRequest(kernel=kernel, topology=Topology.parse("1n1l2c1t"), job={"mode": "snapshot"})
    )
    assert run.snapshots is not None
    (taken,) = run.snapshots.taken
    snap = json.loads(taken.text)
    assert snap["request_id"] == 1 and snap["trigger"] == "request" and snap["frozen_s"] < 5
    assert "RIP=" in snap["registers"] and "CPU#1" in snap["registers"]
    assert "maps" not in snap  # a registers-only capture (CaptureKind.REGISTERS)
    result = run.result("snapshot")
    assert result is not None and result.passed and result.data["status"] == 0
    assert run.exit_code == 0


def test_judged_runs_get_single_threaded_tcg(kernel, qemu):
    """Multi-threaded TCG races with int3 text patching ("Oops: int3" seen on
    QEMU 10.0 when a scheduler attaches, and under EEVDF when the first
    cpuset flips its static key): judged jobs get one thread."""
    from ktstr.host.qemu_argv import Accel
    from ktstr.runner import prepare

    topo = Topology.parse("1n2l2c1t")
    plain, accel, _, _ = prepare(
        BootRequest(kernel=kernel, topology=topo, job={"mode": "probe"}, accel="tcg")
    )
    sched, saccel, _, _ = prepare(
        BootRequest(
            kernel=kernel,
            topology=topo,
            accel="tcg",
            job={"mode": "scenario", "scheduler": {"binary": "/x", "args": []}},
        )
    )
    assert accel.accel is Accel.TCG and saccel.accel is Accel.TCG
    assert plain.tcg_multithread == (qemu.version >= (8, 1, 0))
    assert not sched.tcg_multithread and "sched_ext schedulers flip" in saccel.reason
    eevdf, eaccel, _, _ = prepare(
        BootRequest(kernel=kernel, topology=topo, accel="tcg", job={"mode": "scenario"})
    )
    assert not eevdf.tcg_multithread and "cgroups flip static keys" in eaccel.reason
    for mode in ("kselftest", "shell", "exec"):  # the selftests crashed a multi-threaded guest
        spec, _, _, _ = prepare(
            BootRequest(kernel=kernel, topology=topo, accel="tcg", job={"mode": mode})
        )
        assert not spec.tcg_multithread, mode
