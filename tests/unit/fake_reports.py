"""A worker report as the guest sends it, for tests of stats and verdicts."""

from __future__ import annotations

from typing import Any


def worker_report(
    index: int = 0,
    *,
    units: int = 100,
    wall: float = 2.0,
    gap: float = 5.0,
    gap_at: float = 1200.0,
    cpus: tuple[int, ...] = (0,),
    on_ms: float = 1900.0,
    lat: tuple[float, ...] = (),
    **extra: Any,
) -> dict[str, Any]:
    return {
        "index": index, "work_units": units, "iterations": units, "wall_s": wall,
        "max_gap_ms": gap, "max_gap_cpu": cpus[-1], "max_gap_at_ms": gap_at,
        "cpus": list(cpus), "migrations": len(cpus) - 1, "on_cpu_ms": on_ms,
        "wake_lat_us": list(lat), "wake_samples": len(lat), **extra,
    }  # fmt: skip
