#!/usr/bin/env python3
"""Worker fidelity: the wake-latency floor of ktstr's FutexPingPong and
PipeIo workers next to a C reference doing the same exchange in the same VM
(bench/ref_pingpong.c, compiled here with gcc), and spin throughput per CPU.

    .venv/bin/python bench/workers.py [--topology 1n1l2c1t] [--seconds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ktstr.host.kernel import resolve_kernel
from ktstr.protocol.messages import MessageKind
from ktstr.runner import BootRequest, run_guest
from ktstr.spec.topology import Topology

HERE = Path(__file__).resolve().parent
#: (side A CPU, side B CPU): same CPU = wake + switch; cross = IPI wake-ups.
PLACEMENTS = ((0, 0), (0, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default="1n1l2c1t")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3, help="medians over this many rounds")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ktstr-bench-") as tmp:
        ref = Path(tmp) / "ref_pingpong"
        subprocess.run(["gcc", "-O2", "-o", str(ref), str(HERE / "ref_pingpong.c")], check=True)
        s = args.seconds
        gw = f"{sys.executable} {HERE / '_guest_workers.py'} {s}"
        cmd = "cd /tmp"
        for _ in range(args.rounds):  # interleaved: drift hits both alike
            for a, b in PLACEMENTS:
                cmd += (
                    f"; for k in futex pipe; do echo REF $k@{a}{b} "
                    f"$({ref} $k {s} {a} {b}); done; {gw} {a} {b}"
                )
        out: list[str] = []
        req = BootRequest(
            kernel=resolve_kernel(None),
            topology=Topology.parse(args.topology),
            job={"mode": "exec", "command": cmd, "host_paths": [tmp]},
            ready_timeout=3600.0,
        )
        run = run_guest(
            req,
            on_text=lambda k, t: out.append(t) if k is MessageKind.STDOUT else sys.stderr.write(t),
        )
    rows: dict[tuple[str, str], list[list[float]]] = {}
    for line in "".join(out).splitlines():
        if line.startswith(("REF", "KTSTR")):
            who, key, *vals = line.split()
            rows.setdefault((who, key), []).append([float(v) for v in vals])

    def med(who: str, key: str, col: int) -> float:
        return statistics.median(r[col] for r in rows[(who, key)])

    print(
        f"VM: {args.topology}, {run.accel.describe().split(' (')[0]}, {s:g}s per measurement, "
        f"medians of {args.rounds} interleaved rounds"
    )
    print(
        f"{'exchange':20} {'C p50':>9} {'C p99':>9} {'ktstr p50':>10} {'ktstr p99':>10} "
        f"{'ratio p50':>10} {'ratio p99':>10}"
    )
    for a, b in PLACEMENTS:
        for kind in ("futex", "pipe"):
            key = f"{kind}@{a}{b}"
            c50, c99 = med("REF", key, 0), med("REF", key, 1)
            k50, k99 = med("KTSTR", key, 0), med("KTSTR", key, 1)
            where = "same cpu" if a == b else "cross cpu"
            print(
                f"{kind + ' (' + where + ')':20} {c50:8.1f}us {c99:8.1f}us {k50:9.1f}us "
                f"{k99:9.1f}us {k50 / c50:10.2f} {k99 / c99:10.2f}"
            )
    print(f"spin: {med('KTSTR', 'spin', 0) / 1e6:.1f} M additions/s per CPU (Python loop)")


if __name__ == "__main__":
    main()
