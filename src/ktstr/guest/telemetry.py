"""What a worker measures of itself as it runs: iterations and work units,
the longest gap between iterations (net of intended sleeps) with when and
where it was, the CPUs it ran on and its migrations, a reservoir of wake
latencies, and for wake-ups by a partner the CPUs of both (``place``).
``tick`` is on the hot path of every Python work kind."""

from __future__ import annotations

import ctypes
import os
import random
import time
from pathlib import Path
from typing import Any

from ktstr.guest.work_types import LAT_RESERVOIR
from ktstr.protocol.messages import MAX_WAKE_PLACES

_libc = ctypes.CDLL(None, use_errno=True)


def schedstat() -> tuple[int, int, int]:
    """(on-CPU ns, run-queue wait ns, timeslices) of this task."""
    try:
        a, b, c = Path("/proc/self/schedstat").read_text().split()[:3]
        return int(a), int(b), int(c)
    except (OSError, ValueError):
        return (0, 0, 0)


class Telemetry:
    """Per-iteration bookkeeping; ``tick`` is on the hot path."""

    __slots__ = (
        "cpus",
        "iterations",
        "last",
        "last_cpu",
        "lat",
        "lat_seen",
        "max_gap",
        "max_gap_at",
        "max_gap_cpu",
        "mem_node",
        "migrations",
        "places",
        "places_lost",
        "rnd",
        "t0",
        "units",
    )

    def __init__(self, t0_ns: int = 0) -> None:
        self.t0 = self.last = t0_ns or time.monotonic_ns()
        self.iterations = self.units = self.migrations = 0
        self.max_gap = self.max_gap_at = 0
        self.last_cpu = self.max_gap_cpu = _libc.sched_getcpu()
        self.cpus = {self.last_cpu}
        self.lat: list[int] = []
        self.lat_seen = 0
        self.mem_node = -1  # NUMA node of the work's memory, where it has some
        self.rnd = random.Random(os.getpid())
        self.places: dict[tuple[int, int], int] = {}  # (waker's CPU, own CPU) -> wake-ups
        self.places_lost = 0

    def tick(self, units: int = 1, blocked_ns: int = 0) -> None:
        now = time.monotonic_ns()
        cpu = _libc.sched_getcpu()
        gap = now - self.last - blocked_ns
        if gap > self.max_gap:
            self.max_gap, self.max_gap_at, self.max_gap_cpu = gap, self.last - self.t0, cpu
        if cpu != self.last_cpu:
            self.migrations += 1
            self.cpus.add(cpu)
            self.last_cpu = cpu
        self.iterations += 1
        self.units += units
        self.last = now

    def absorb(self, native: dict[str, Any]) -> None:
        """Take over the telemetry of a native loop (``ktstr._native``)."""
        self.iterations += int(native["iterations"])
        self.units += int(native["iterations"])
        if native["max_gap_ns"] > self.max_gap:
            self.max_gap = int(native["max_gap_ns"])
            self.max_gap_at = int(native["t0_ns"]) + int(native["max_gap_at_ns"]) - self.t0
            self.max_gap_cpu = int(native["max_gap_cpu"])
        self.migrations += int(native["migrations"])
        self.cpus.update(native["cpus"])
        self.last = time.monotonic_ns()
        self.lat.extend(native["lat_ns"][: LAT_RESERVOIR - len(self.lat)])
        self.lat_seen += int(native["lat_seen"])
        for waker, cpu, n in native["places"]:
            self._count(int(waker), int(cpu), int(n))
        self.places_lost += int(native["places_lost"])

    def place(self, waker_cpu: int) -> None:
        """A partner on ``waker_cpu`` woke this task, which runs here now."""
        cpu = _libc.sched_getcpu()
        if waker_cpu < 0 or cpu < 0:
            self.places_lost += 1
        else:
            self._count(waker_cpu, cpu, 1)

    def _count(self, waker: int, cpu: int, n: int) -> None:
        key = (waker, cpu)
        if key in self.places or len(self.places) < MAX_WAKE_PLACES:
            self.places[key] = self.places.get(key, 0) + n
        else:
            self.places_lost += n

    def latency(self, ns: int) -> None:
        """A wake-to-run latency sample (reservoir-capped)."""
        self.lat_seen += 1
        if len(self.lat) < LAT_RESERVOIR:
            self.lat.append(ns)
        else:
            j = self.rnd.randrange(self.lat_seen)
            if j < LAT_RESERVOIR:
                self.lat[j] = ns
