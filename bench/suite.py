#!/usr/bin/env python3
"""Harness efficiency of ``ktstr run`` over the catalog under EEVDF, at
``-j 1`` and ``-j 2`` (or the widths given): wall time, the sum of workload
time, their ratio, and the time per phase summed over the runs.

    .venv/bin/python bench/suite.py [--jobs 1 2] [--duration 2] [SCENARIO...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ktstr.report import phase_spent, phase_totals
from ktstr.spec.catalog import CATALOG


def one(width: int, names: list[str], duration: float, topology: str) -> float:
    with tempfile.TemporaryDirectory(prefix="ktstr-suite-") as d:
        t0 = time.monotonic()
        argv = [sys.executable, "-m", "ktstr", "run", *names, "--duration", f"{duration:g}",
                "--topology", topology, "-j", str(width), "--results", d]  # fmt: skip
        subprocess.run(argv, capture_output=True, check=False)
        wall = time.monotonic() - t0
        docs = [json.loads(p.read_text()) for p in Path(d).glob("*/result.json")]
    work = sum(float(doc["durations"]["workload_s"]) for doc in docs)
    passed = sum(doc["status"] == "pass" for doc in docs)
    print(f"-j {width}: {len(docs)} runs ({passed} passed), wall {wall:.0f}s, workload "
          f"{work:.0f}s, efficiency {work / wall:.0%}")  # fmt: skip
    failed = sorted(str(doc.get("scenario")) for doc in docs if doc["status"] != "pass")
    if failed:
        print(f"  not passed: {', '.join(failed)}")
    spent = [phase_spent(doc["durations"].get("phases", {})) for doc in docs]
    print("  " + phase_totals([s for s in spent if s]))
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenarios", nargs="*", help="default: the whole catalog but payloads")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--topology", default="1n2l2c1t")
    args = ap.parse_args()
    names = args.scenarios or [s.name for s in CATALOG if s.group != "payloads"]
    walls = {width: one(width, names, args.duration, args.topology) for width in args.jobs}
    base = min(walls)
    for width, wall in walls.items():
        if width != base:
            print(f"-j {width} against -j {base}: {walls[base] / wall:.2f}x faster")


if __name__ == "__main__":
    main()
