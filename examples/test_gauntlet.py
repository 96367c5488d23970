"""One test expanded across topology presets and flag profiles.

Without --gauntlet it runs once at its own topology. With --gauntlet it
becomes gauntlet/<test>/<preset>/<profile> for every preset that fits its
constraints and every valid flag profile (or a pairwise subset with
--pairwise, or what fits a time budget with --budget SECONDS).

List what would run:  ktstr gauntlet --list examples/test_gauntlet.py
"""

from ktstr import CgroupDef, Flag, Scheduler, ktstr_test

QMAP = Scheduler(
    "scx_qmap",
    flags=[
        Flag("slice", args=["-s", "5000"]),
        Flag("batch", args=["-b", "4"]),
        Flag("print", args=["-P"], requires=["batch"]),  # -P is only useful with -b
        Flag("nonext", args=["-p"], excludes=["print"]),
    ],
)


@ktstr_test(scheduler=QMAP, llcs=2, cores=2, duration=2, min_llcs=2, max_cpus=16)
def test_qmap_keeps_everyone_running(ctx):
    ctx.execute_defs([CgroupDef("a", workers=2), CgroupDef("b", workers=2)])
