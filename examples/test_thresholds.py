"""Per-test threshold overrides are decorator arguments: they sit on top of
the defaults and the scheduler's own (defaults -> scheduler -> test)."""

from ktstr import CgroupDef, Work, ktstr_test


@ktstr_test(llcs=1, cores=2, duration=3,
            max_wake_p99_us=50_000,  # judge wake latency (scaled under TCG)
            max_spread_pct=25.0,  # a looser fairness bound for this mix
            isolation=False)  # and no cpuset isolation check
def test_pingpong_latency(ctx):
    ctx.execute_defs([
        CgroupDef("pairs", workers=2, work=Work.pipe_io()),
        CgroupDef("noise", workers=2, work=Work.mixed()),
    ])
