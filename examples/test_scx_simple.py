"""scx_simple with its flags. The binary is found next to this file, in
$KTSTR_SCHEDULER, on PATH, or next to the kernel (ktstr kernel build
--schedulers puts the in-tree examples there).

Run: .venv/bin/pytest examples/test_scx_simple.py
     .venv/bin/pytest examples/test_scx_simple.py --gauntlet --budget 120
"""

from ktstr import CgroupDef, Flag, Scheduler, Work, ktstr_test

SIMPLE = Scheduler(
    "scx_simple",
    topology="1n2l2c1t",
    flags=[Flag("fifo", args=["-f"])],  # global FIFO instead of weighted vtime
)


@ktstr_test(scheduler=SIMPLE, duration=3)
def test_spinners_and_pingpong(ctx):
    ctx.execute_defs([
        CgroupDef("spin", workers=2),
        CgroupDef("pingpong", workers=2, work=Work.futex_pingpong()),
    ])
