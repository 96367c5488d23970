import pytest

from ktstr.evaluate.stats import (
    Sample,
    cgroup_stats,
    format_stats,
    off_cpu_pct,
    percentile,
    run_stats,
)
from tests.unit.fake_reports import ANY_CPU, error_report, group, worker_report


def rep(on_ms: float, **kw: object) -> Sample:
    return Sample(worker_report(on_ms=on_ms, units=10, gap_at=100.0, **kw), ANY_CPU, 2.0)  # type: ignore[arg-type]


def test_percentile_nearest_rank():
    assert percentile([], 50) == 0.0
    assert percentile([5.0], 99) == 5.0
    assert percentile([float(x) for x in range(1, 101)], 50) == 50.0
    assert percentile([float(x) for x in range(1, 101)], 99) == 99.0


def test_off_cpu_and_spread():
    assert off_cpu_pct(rep(1500)) == pytest.approx(25.0)
    c = cgroup_stats("cg0", [rep(1800), rep(1500), rep(2000)])
    assert c.spread_pct == pytest.approx(25.0)


def test_spread_compares_workers_on_equal_terms_only():
    """pinned_llc: one worker pinned to a crowded LLC, one to an empty one.
    Their off-CPU shares differ by design; two workers pinned alike do not."""
    crowded, empty = (0, 1), (2, 3)
    pinned = [
        Sample(worker_report(on_ms=1000, units=10), ANY_CPU, 2.0, crowded),
        Sample(worker_report(on_ms=2000, units=10), ANY_CPU, 2.0, empty),
    ]
    assert cgroup_stats("pinned", pinned).spread_pct == 0.0
    twin = Sample(worker_report(on_ms=1600, units=10), ANY_CPU, 2.0, crowded)
    assert cgroup_stats("pinned", [*pinned, twin]).spread_pct == pytest.approx(30.0)


def test_worst_gap_and_latency_and_errors():
    c = cgroup_stats(
        "cg",
        [
            rep(1000, gap=3500, cpus=(0, 1), lat=(10, 20, 30)),
            rep(1000, gap=20, lat=(40,)),
            Sample(error_report(2, "boom"), ANY_CPU, 2.0),
        ],
    )
    assert (c.max_gap_ms, c.max_gap_cpu, c.migrations) == (3500, 1, 1)
    assert c.wake_samples == 4 and c.wake_p50_us == 20 and c.wake_p99_us == 40
    assert c.workers == 3 and c.errors == ("boom",)


def test_format_stats_block():
    stats = run_stats(
        [
            group("cg0", [rep(1900, gap=3500, cpus=(0, 1)).report, rep(1700).report], (0, 1)),
            group("cg1", [rep(2000).report]),
        ]
    )
    lines = format_stats(stats)
    assert lines[0] == ("3 workers, 2 cpus, 1 migrations, worst_spread=10.0%, worst_gap=3500ms")
    assert lines[1] == "  cg0: workers=2 cpus=2 spread=10.0% gap=3500ms migrations=1 iter=20"
