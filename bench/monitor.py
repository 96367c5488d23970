#!/usr/bin/env python3
"""What the host-side monitor costs: its sampling thread's own CPU time at a
given rate, as % of one host core, on guests of several sizes, and the time
from the guest's SysReady to the first sample (most of it drgn attaching).

Each guest runs the ``steady`` scenario (one spinner per CPU) under the
given scheduler, or EEVDF.

    .venv/bin/python bench/monitor.py [--topologies 1n2l2c1t,4n8l4c2t] [--scheduler scx_simple]
"""

from __future__ import annotations

import argparse

from ktstr.host.kernel import resolve_kernel
from ktstr.runner import BootRequest, SchedulerRun, run_scenario, scheduler_binary
from ktstr.runner.monitoring import MonitorPlan
from ktstr.spec.scenario import CgroupDef, Scenario, resolve
from ktstr.spec.topology import Topology


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topologies", default="1n2l2c1t,4n8l4c2t")
    ap.add_argument("--scheduler", default="scx_simple", help="'none' for EEVDF")
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--kernel")
    args = ap.parse_args()
    kernel = resolve_kernel(args.kernel)
    sched = None
    if args.scheduler != "none":
        sched = SchedulerRun(binary=scheduler_binary(args.scheduler, kernel))
    print(f"kernel {kernel.version}, {args.scheduler}, monitor at {args.hz:g} Hz")
    print(f"{'topology':12} {'vCPUs':>5} {'samples':>7} {'rate':>6} {'cpu %':>6} "
          f"{'attach':>7} {'ready->1st':>10} {'per tick':>9}")  # fmt: skip
    for name in args.topologies.split(","):
        topo = Topology.parse(name)
        plan = resolve(
            Scenario.of_defs("steady", [CgroupDef("cg", workers=topo.cpus)]), topo, args.duration
        )
        req = BootRequest(
            kernel=kernel,
            topology=topo,
            job={},
            boot_timeout=600,
            monitor=MonitorPlan(hz=args.hz),
        )
        run = run_scenario(req, plan, sched)
        m = run.monitor
        assert m is not None and m.result is not None and m.judge is not None
        r = m.result
        if r.error:
            print(f"{name:12} monitor failed: {r.error}")
            continue
        summary = m.summary() or {}
        to_first = (summary.get("first_sample_at_s") or 0.0) - (run.timings.ready or 0.0)
        pct = 100 * r.cpu_s / r.wall_s if r.wall_s else 0.0
        per_tick = 1000 * r.cpu_s / r.samples if r.samples else 0.0
        print(
            f"{name:12} {topo.cpus:5} {r.samples:7} {m.judge.summary()['hz']:6.2f} "
            f"{pct:6.2f} {r.attach_s:6.2f}s {to_first:9.2f}s {per_tick:7.2f}ms"
        )


if __name__ == "__main__":
    main()
