import pytest

from ktstr.errors import ConfigError
from ktstr.spec.checks import DEFAULTS, Thresholds, merge, scaled, timing_scale


def test_defaults_are_ktstrs():
    assert DEFAULTS.active() == {
        "not_starved": True,
        "isolation": True,
        "max_gap_ms": 2000.0,
        "max_spread_pct": 15.0,
        "min_share_ratio": 0.6,  # p10 of actual over ideal CPU share
        # the monitor's
        "max_imbalance": 4.0,
        "max_local_dsq": 50.0,
        "max_rq_clock_lag_ms": 1000.0,
        "max_runnable_wait_ms": True,  # half the sched_ext watchdog timeout
        "max_idle_waiting_ms": 100.0,
        "monitor_sustain": 5.0,
        "sched_watchdog_s": 5.0,
        "max_bandwidth_pct": 10.0,  # a cpu.max-limited cgroup's excess over its quota
    }


def test_sched_ext_defaults_do_not_expect_cpu_max_to_bind():
    from ktstr.spec.checks import defaults_for

    assert defaults_for(sched_ext=False) == DEFAULTS
    sx = defaults_for(sched_ext=True)
    assert sx.max_bandwidth_pct is False and sx.merged(DEFAULTS) == DEFAULTS


def test_merge_chain_override_disable_inherit():
    sched = Thresholds(max_gap_ms=500.0, max_wake_p99_us=800.0)
    test = Thresholds(max_gap_ms=False, isolation=False, max_spread_pct=30.0)
    t = merge(DEFAULTS, sched, test)
    assert t.max_gap_ms is False  # the test switched off what the scheduler set
    assert t.isolation is False and t.not_starved is True  # disabled / inherited
    assert t.max_spread_pct == 30.0 and t.max_wake_p99_us == 800.0  # override / inherit
    assert (
        merge(DEFAULTS, Thresholds(max_gap_ms=False), Thresholds(max_gap_ms=100.0)).max_gap_ms
        == 100.0
    )  # a higher layer can switch it back on
    assert merge(DEFAULTS, None, Thresholds()) == DEFAULTS  # unset inherits everything


def test_parse_and_validation():
    t = Thresholds.parse(["max_gap_ms=250", "isolation=off", "not_starved=on"])
    assert (t.max_gap_ms, t.isolation, t.not_starved) == (250.0, False, True)
    with pytest.raises(ConfigError, match="expected NAME=VALUE"):
        Thresholds.parse(["max_gapms=1"])
    with pytest.raises(ConfigError, match="not a number"):
        Thresholds.parse(["max_gap_ms=fast"])
    with pytest.raises(ConfigError, match=">= 0 or off"):
        Thresholds(max_gap_ms=-1.0)
    with pytest.raises(ConfigError, match="on/off"):
        Thresholds(isolation=3)  # type: ignore[arg-type]


def test_timing_scale_under_tcg_and_oversubscription():
    assert timing_scale(False, 4, 8).factor == 1.0
    s = timing_scale(True, 8, 2)
    assert s.factor == 16.0 and "TCG x4" in s.reason and "8 vCPUs on 2 host CPUs" in s.reason
    t = scaled(
        Thresholds(
            max_gap_ms=100.0, min_work_rate=40.0, max_spread_pct=15.0, max_wake_p99_us=False
        ),
        s,
    )
    assert t.max_gap_ms == 1600.0 and t.min_work_rate == 2.5  # maxima up, minima down
    assert t.max_spread_pct == 15.0 and t.max_wake_p99_us is False  # not timing / off
