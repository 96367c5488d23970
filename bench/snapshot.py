#!/usr/bin/env python3
"""How long a snapshot freezes the guest: scx_qmap (its maps, task storage,
arena) with twice as many spinners as vCPUs, a snapshot every second of the
workload; per guest size, the frozen interval (QMP/gdbstub stop -> resume),
the part of it spent reading, the maps and the bytes of JSON kept.

Goal (issue 12): at most 0.5 s frozen on a 16-vCPU guest.

    .venv/bin/python bench/snapshot.py [--topologies 1n2l2c1t,1n2l4c2t] [--scheduler scx_qmap]
"""

from __future__ import annotations

import argparse
import statistics

from ktstr.host.kernel import resolve_kernel
from ktstr.runner import BootRequest, SchedulerRun, run_scenario, scheduler_binary
from ktstr.runner.monitoring import MonitorPlan
from ktstr.spec.scenario import CgroupDef, HoldSpec, Op, Scenario, Step, resolve
from ktstr.spec.topology import Topology


def scenario(cpus: int, seconds: int) -> Scenario:
    snaps = tuple(
        Step(ops=(Op.snapshot(f"s{i}"),), hold=HoldSpec.fraction(0.8 / seconds))
        for i in range(seconds)
    )
    start = Step(ops=(Op.add(CgroupDef("cg", workers=2 * cpus)),), hold=HoldSpec.fraction(0.2))
    return Scenario(name="snapbench", description="", steps=(start, *snaps), duration_s=seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topologies", default="1n2l2c1t,1n2l4c2t")
    ap.add_argument("--scheduler", default="scx_qmap")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--kernel")
    args = ap.parse_args()
    kernel = resolve_kernel(args.kernel)
    sched = SchedulerRun(binary=scheduler_binary(args.scheduler, kernel))
    print(f"kernel {kernel.version}, {args.scheduler}; goal: <= 0.5 s frozen at 16 vCPUs")
    print(f"{'topology':12} {'vCPUs':>5} {'snaps':>5} {'frozen p50':>10} {'max':>7} "
          f"{'reading':>8} {'maps':>5} {'KiB/snap':>8}")  # fmt: skip
    for name in args.topologies.split(","):
        topo = Topology.parse(name)
        plan = resolve(scenario(topo.cpus, args.seconds), topo, args.seconds)
        req = BootRequest(kernel=kernel, topology=topo, job={}, boot_timeout=600,
                          monitor=MonitorPlan())  # fmt: skip
        run = run_scenario(req, plan, sched)
        taken = [t for t in (run.snapshots.taken if run.snapshots else []) if t.text]
        if not taken:
            print(f"{name:12} no snapshot taken: {run.warnings}")
            continue
        frozen = [t.meta["frozen_s"] for t in taken]
        reading = [float(t.text.split('"read_s": ', 1)[1].split(",")[0]) for t in taken]
        kib = statistics.mean(len(t.text) for t in taken) / 1024
        print(
            f"{name:12} {topo.cpus:5} {len(taken):5} {statistics.median(frozen):9.3f}s "
            f"{max(frozen):6.3f}s {statistics.median(reading):7.3f}s "
            f"{taken[-1].meta.get('maps', 0):5} {kib:8.1f}"
        )


if __name__ == "__main__":
    main()
