#!/usr/bin/env python3
"""Boot-time figures for the cached kernel on this machine.

Prints host-side times from QEMU start to kernel start, agent ready, QEMU
exit and cleanup done for ktstr's probe boot, next to a raw boot of the same
kernel, topology and QEMU argv whose init is /bin/true (the kernel panics
when it exits and QEMU quits), and the ratio (ktstr's overhead).

    .venv/bin/python bench/boot.py [--topology 1n2l2c1t] [--runs 3]

``--sweep`` instead boots each preset size once (4 to 252 vCPUs) and prints
the time to agent ready next to the guest memory and boot budget it got.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import ktstr
from ktstr.host.kernel import resolve_kernel
from ktstr.host.vm import Vm
from ktstr.runner import BootRequest, prepare, run_guest
from ktstr.runner.guest_python import guest_python
from ktstr.spec.topology import PRESETS, Topology


def raw_boot(req: BootRequest) -> float:
    spec, _, _, _ = prepare(req)
    spec = dataclasses.replace(spec, init=("/bin/true",))
    vm = Vm(spec, {}, name="raw")
    t0 = time.monotonic()
    with vm:
        vm.wait(120)
    return time.monotonic() - t0


def ktstr_boot(req: BootRequest) -> dict[str, float]:
    t0 = time.monotonic()
    run = run_guest(req)
    done = time.monotonic() - t0
    t = run.timings
    assert t.kernel_start is not None and t.ready is not None and t.qemu_exit is not None
    out = {"kernel": t.kernel_start, "ready": t.ready, "exit": t.qemu_exit, "done": done}
    ready = next(lc for _, lc in run.evidence.lifecycle if lc.phase == "ready")
    steps = ready.detail.get("steps", {}) if isinstance(ready.detail, dict) else {}
    up = ready.detail.get("uptime_s", 0.0) if isinstance(ready.detail, dict) else 0.0
    marks = [("kernel boot, exec init, Python up", "python_up"),
             ("ktstr's imports", "imports_done"), ("mounts", "mounts_done"),
             ("private /tmp", "tmp_done"), ("virtio port open", "port_open")]  # fmt: skip
    last = 0.0
    for label, key in marks:
        if isinstance(steps.get(key), int | float):
            out[f"guest: {label}"] = float(steps[key]) - last
            last = float(steps[key])
    out["guest: first frames"] = up - last
    return out


SWEEP = ("tiny-2llc", "wide-1llc", "numa4-smt-8llc", "numa2-smt-12llc",
         "numa4-smt-12llc", "huge-14llc")  # fmt: skip


def sweep(kernel: str | None) -> None:
    """One probe boot per preset size: what the largest topologies cost here."""
    k = resolve_kernel(kernel)
    print(f"kernel {k.version}; one probe boot per size")
    print(f"{'preset':17} {'vCPUs':>5} {'memory':>8} {'budget':>7} {'kernel':>7} {'ready':>7}")
    for name in SWEEP:
        topo = PRESETS[name].topology
        req = BootRequest(kernel=k, topology=topo, job={"mode": "probe"})
        spec, accel, _, _ = prepare(req)
        budget = accel.boot_budget(topo.cpus)
        o = ktstr_boot(req)
        print(
            f"{name:17} {topo.cpus:5d} {spec.effective_memory_mb:6d}MB {budget:6.0f}s "
            f"{o['kernel']:6.1f}s {o['ready']:6.1f}s  ({accel.describe()})",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default="1n2l2c1t")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kernel")
    ap.add_argument("--sweep", action="store_true", help="time to ready per preset size")
    args = ap.parse_args()
    if args.sweep:
        sweep(args.kernel)
        return
    topo = Topology.parse(args.topology)
    req = BootRequest(kernel=resolve_kernel(args.kernel), topology=topo, job={"mode": "probe"})
    _, accel, qemu, _ = prepare(req)
    print(
        f"kernel {req.kernel.version} ({req.kernel.image.name}), topology {topo} "
        f"({topo.cpus} vCPUs), QEMU {qemu.version_str}, {accel.describe()}, "
        f"guest Python {guest_python(str(Path(ktstr.__file__).parent.parent)).exe}"
    )
    raws, ours = [], []
    for i in range(args.runs):  # interleaved, so drift hits both alike
        raws.append(raw_boot(req))
        ours.append(ktstr_boot(req))
        o = ours[-1]
        print(
            f"  run {i + 1}: raw {raws[-1]:.2f}s | ktstr kernel +{o['kernel']:.2f}s "
            f"ready +{o['ready']:.2f}s exit +{o['exit']:.2f}s done +{o['done']:.2f}s"
        )
    med = {k: statistics.median(o[k] for o in ours) for k in ours[0]}
    raw = statistics.median(raws)
    print(f"median of {args.runs}:")
    print(f"  QEMU start -> kernel start   {med['kernel']:6.2f} s")
    print(f"  QEMU start -> agent ready    {med['ready']:6.2f} s")
    print(f"  QEMU start -> QEMU exit      {med['exit']:6.2f} s")
    print(f"  QEMU start -> cleanup done   {med['done']:6.2f} s")
    print(f"  raw boot (init=/bin/true)    {raw:6.2f} s  (QEMU start -> QEMU exit)")
    print(f"  ratio ready/raw              {med['ready'] / raw:6.2f} x  (the issue's measure)")
    print(f"  ratio done/raw               {med['done'] / raw:6.2f} x")
    print("inside the guest (seconds since the kernel started, step by step):")
    for k, v in med.items():
        if k.startswith("guest: "):
            print(f"  {k[7:]:32} {v:6.2f} s")


if __name__ == "__main__":
    main()
