"""A ktstr test without a scheduler: runs under EEVDF, the kernel's default.

Run: .venv/bin/pytest examples/test_eevdf.py
"""

from ktstr import CgroupDef, CpusetSpec, Work, ktstr_test


@ktstr_test(llcs=2, cores=2, duration=3)
def test_two_cgroups_share_fairly(ctx):
    ctx.execute_defs([CgroupDef("cg_0", workers=2), CgroupDef("cg_1", workers=2)])


@ktstr_test(llcs=2, cores=2, duration=3)
def test_disjoint_cpusets_stay_isolated(ctx):
    ctx.execute_defs([
        CgroupDef("left", workers=2, cpuset=CpusetSpec.llc(0)),
        CgroupDef("right", workers=2, cpuset=CpusetSpec.llc(1), work=Work.bursty(5, 5)),
    ])
