#!/usr/bin/env python3
"""Worker fidelity: the wake-latency floor of ktstr's FutexPingPong and
PipeIo workers next to a C reference doing the same exchange in the same VM
(bench/ref_pingpong.c, compiled here with gcc), and spin throughput per CPU.

    .venv/bin/python bench/workers.py [--topology 1n1l2c1t] [--seconds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from ktstr.host.kernel import resolve_kernel
from ktstr.protocol.messages import MessageKind
from ktstr.runner import BootRequest, run_guest
from ktstr.spec.topology import Topology

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default="1n1l2c1t")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ktstr-bench-") as tmp:
        ref = Path(tmp) / "ref_pingpong"
        subprocess.run(["gcc", "-O2", "-o", str(ref), str(HERE / "ref_pingpong.c")], check=True)
        s = args.seconds
        cmd = (f"cd /tmp && for k in futex pipe; do echo REF $k $({ref} $k {s}); done; "
               f"{sys.executable} {HERE / '_guest_workers.py'} {s}")
        out: list[str] = []
        req = BootRequest(kernel=resolve_kernel(None), topology=Topology.parse(args.topology),
                          job={"mode": "exec", "command": cmd, "host_paths": [tmp]})
        run = run_guest(req, on_text=lambda k, t: out.append(t) if k is MessageKind.STDOUT
                        else sys.stderr.write(t))
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in "".join(out).splitlines()
            if line.startswith(("REF", "KTSTR"))}
    print(f"VM: {args.topology}, {run.accel.describe().split(' (')[0]}, {s:g}s per measurement")
    print(f"{'exchange':8} {'C p50':>9} {'C p99':>9} {'ktstr p50':>10} {'ktstr p99':>10} "
          f"{'ratio p50':>10} {'ratio p99':>10}")
    for kind in ("futex", "pipe"):
        c50, c99, _ = map(float, rows[("REF", kind)])
        k50, k99, _ = map(float, rows[("KTSTR", kind)])
        print(f"{kind:8} {c50:8.1f}us {c99:8.1f}us {k50:9.1f}us {k99:9.1f}us "
              f"{k50 / c50:10.2f} {k99 / c99:10.2f}")
    (rate,) = rows[("KTSTR", "spin")]
    print(f"spin: {float(rate) / 1e6:.1f} M additions/s per CPU (Python loop)")


if __name__ == "__main__":
    main()
