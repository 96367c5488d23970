"""Runs inside the VM for bench/workers.py: ktstr's own workers (futex and
pipe ping-pong pairs, then one spinner per CPU) in the root cgroup."""

from __future__ import annotations

import os
import sys
import time

from ktstr.evaluate.stats import percentile
from ktstr.guest.work_types import SPIN_UNIT, make_shared
from ktstr.guest.workers import WorkerPool, WorkerSpec
from ktstr.spec.work import NORMAL, Work


def run(work: Work, count: int, seconds: float, cpus: tuple[int, ...]) -> list[dict]:
    pool = WorkerPool()
    shared = make_shared(work, "/tmp", "bench")
    specs = []
    for i in range(count):
        if work.paired and i % 2 == 0:
            shared = make_shared(work, "/tmp", f"bench{i}")
        specs.append(
            WorkerSpec(
                cgroup="bench",
                procs_dir="/sys/fs/cgroup",
                index=i,
                work=work,
                policy=NORMAL,
                nice=0,
                affinity=(cpus[i % len(cpus)],),
                allowed=tuple(range(os.cpu_count() or 1)),
                role=i % 2 if work.paired else 0,
                shared=shared,
            )
        )
    pool.spawn(specs)
    pool.release()
    time.sleep(seconds)
    reports = pool.stop()
    pool.close()
    return reports


def main() -> None:
    seconds, a, b = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    for name, work in (("futex", Work.futex_pingpong()), ("pipe", Work.pipe_io())):
        reports = run(work, 2, seconds, (a, b))
        lats = [x for r in reports for x in r.get("wake_lat_us", [])]
        print(
            f"KTSTR {name}@{a}{b} {percentile(lats, 50):.2f} {percentile(lats, 99):.2f} {len(lats)}"
        )
    ncpu = os.cpu_count() or 1
    reports = run(Work.spin(), ncpu, seconds, tuple(range(ncpu)))
    rates = [r["work_units"] * SPIN_UNIT / r["wall_s"] for r in reports]
    print(f"KTSTR spin {sum(rates) / len(rates):.0f}")


if __name__ == "__main__":
    main()
