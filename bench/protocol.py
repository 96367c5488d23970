#!/usr/bin/env python3
"""Frame decoder throughput on this machine, for typical frame mixes.

The host reads the virtio-serial socket in chunks of up to 256 KiB; the port
carries 85-92 MB/s here, so the decoder must stay well above that.

    .venv/bin/python bench/protocol.py [--mb 64]
"""

from __future__ import annotations

import argparse
import random
import time

from ktstr.protocol.frames import FrameDecoder
from ktstr.protocol.messages import (
    Encoder,
    Lifecycle,
    MessageKind,
    SchedExit,
    Stimulus,
    WorkerReports,
)


def mix(name: str, target: int, rnd: random.Random) -> tuple[bytes, int]:
    enc = Encoder()
    report = {
        "tid": 1234,
        "work_units": 123456,
        "max_gap_ms": 12.5,
        "cpus": [0, 1, 2],
        "migrations": 17,
        "wake_lat_us": [rnd.randint(5, 500) for _ in range(64)],
    }
    makers = {
        "control (~60 B JSON)": [
            lambda: enc.message(Stimulus(t_ms=rnd.random() * 1e4, op="set_cpuset"))
        ],
        "log chunks (4 KiB text)": [lambda: enc.text(MessageKind.SCHED_LOG, "x" * 4096)],
        "mixed (control, reports, logs, 16 KiB dumps)": [
            lambda: enc.message(Lifecycle(phase="tick")),
            lambda: enc.message(WorkerReports(cgroup="cg0", reports=[report] * 4)),
            lambda: enc.text(MessageKind.STDOUT, "line of output\n" * 20),
            lambda: enc.message(SchedExit(exit_kind="error", reason="stall", dump="d" * 16384)),
        ],
    }[name]
    parts, size = [], 0
    while size < target:
        raw = rnd.choice(makers)()
        parts.append(raw)
        size += len(raw)
    return b"".join(parts), len(parts)


def bench(stream: bytes, chunk: int) -> tuple[float, int]:
    dec = FrameDecoder()
    view = memoryview(stream)
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(stream), chunk):
        n += len(dec.feed(bytes(view[i : i + chunk])))
    n += len(dec.finish())
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=64, help="stream size per mix")
    args = ap.parse_args()
    rnd = random.Random(1)
    print(f"{'mix':46} {'chunk':>7} {'MB/s':>8} {'frames/s':>11}")
    for name in (
        "control (~60 B JSON)",
        "log chunks (4 KiB text)",
        "mixed (control, reports, logs, 16 KiB dumps)",
    ):
        stream, count = mix(name, args.mb * 1_000_000, rnd)
        for chunk in (4096, 65536, 262144):
            secs, n = min((bench(stream, chunk) for _ in range(3)), key=lambda r: r[0])
            assert n == count, (n, count)
            print(f"{name:46} {chunk:7} {len(stream) / secs / 1e6:8.0f} {n / secs:11,.0f}")


if __name__ == "__main__":
    main()
