"""Worker reports as the guest sends them, and the host's samples of them,
for tests of stats and verdicts."""

from __future__ import annotations

from typing import Any

from ktstr.evaluate.stats import Group, Sample
from ktstr.protocol.messages import WorkerReport

#: "Unrestricted": every CPU a test report names is allowed.
ANY_CPU = tuple(range(64))


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
    cgroup: str = "cg0",
    **extra: Any,
) -> WorkerReport:
    return WorkerReport(
        cgroup=cgroup, index=index, pid=100 + index, work_units=units, iterations=units,
        wall_s=wall, max_gap_ms=gap, max_gap_cpu=cpus[-1], max_gap_at_ms=gap_at,
        cpus=list(cpus), migrations=len(cpus) - 1, on_cpu_ms=on_ms,
        wake_lat_us=list(lat), wake_samples=len(lat), **extra,
    )  # fmt: skip


def error_report(index: int, error: str, cgroup: str = "cg0") -> WorkerReport:
    return WorkerReport(cgroup=cgroup, index=index, pid=100 + index, error=error)


def group(
    name: str,
    reports: list[WorkerReport] | tuple[WorkerReport, ...],
    allowed: tuple[int, ...] | None = None,
    planned: float = 2.0,
) -> Group:
    return Group(name, tuple(Sample(r, allowed or ANY_CPU, planned) for r in reports))
