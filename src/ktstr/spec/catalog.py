"""Canned scenarios (``ktstr list``). Pure data: each is a Scenario."""

from __future__ import annotations

import dataclasses

from ktstr.spec.catalog_more import MORE
from ktstr.spec.checks import Thresholds
from ktstr.spec.cpuset import CpusetSpec
from ktstr.spec.payload import Payload
from ktstr.spec.scenario import CgroupDef, HoldSpec, Op, Scenario, Step
from ktstr.spec.work import Affinity, AffinityMode, SchedPolicy, Work

_half = HoldSpec.fraction(0.5)

CATALOG: tuple[Scenario, ...] = (
    Scenario.of_defs(
        "steady",
        [CgroupDef(name="cg0", workers=2), CgroupDef(name="cg1", workers=2)],
        "two cgroups of CPU spinners for the whole run: the fairness baseline",
    ),
    Scenario.of_defs(
        "cpuset_disjoint",
        [
            CgroupDef(name="left", workers=2, cpuset=CpusetSpec.disjoint(0, 2)),
            CgroupDef(name="right", workers=2, cpuset=CpusetSpec.disjoint(1, 2)),
        ],
        "two cgroups on disjoint halves of the CPUs (LLC-aligned): isolation",
    ),
    Scenario.of_defs(
        "cpuset_overlap",
        [
            CgroupDef(name="a", workers=2, cpuset=CpusetSpec.overlapping(0, 2, 0.5)),
            CgroupDef(name="b", workers=2, cpuset=CpusetSpec.overlapping(1, 2, 0.5)),
        ],
        "two cgroups whose cpusets overlap in the middle",
    ),
    Scenario(
        name="cgroup_add_remove",
        description="cgroups come and go while others keep running",
        steps=(
            Step(ops=(Op.add(CgroupDef(name="base", workers=2)),), hold=HoldSpec.fraction(0.3)),
            Step(
                ops=(Op.add(CgroupDef(name="extra", workers=2, work=Work.bursty())),),
                hold=HoldSpec.fraction(0.4),
            ),
            Step(ops=(Op.remove("extra"),), hold=HoldSpec.fraction(0.3)),
        ),
    ),
    Scenario(
        name="cpuset_swap",
        description="two cgroups swap their disjoint cpusets repeatedly",
        steps=(
            Step(
                ops=(
                    Op.add(CgroupDef(name="a", workers=2, cpuset=CpusetSpec.disjoint(0, 2))),
                    Op.add(CgroupDef(name="b", workers=2, cpuset=CpusetSpec.disjoint(1, 2))),
                ),
                hold=HoldSpec.fraction(0.2),
            ),
            Step(ops=(Op.swap_cpusets("a", "b"),), hold=HoldSpec.loop(0.5, 0.8)),
        ),
    ),
    Scenario.of_defs(
        "affinity_churn",
        [
            CgroupDef(name="churn", workers=2, work=Work.affinity_churn()),
            CgroupDef(name="steady", workers=2),
        ],
        "workers re-pin themselves across CPUs while others spin",
    ),
    Scenario.of_defs(
        "mixed_work",
        [
            CgroupDef(name="spin", workers=1),
            CgroupDef(name="yield", workers=1, work=Work.yield_heavy()),
            CgroupDef(name="bursty", workers=1, work=Work.bursty(3, 7)),
            CgroupDef(name="pingpong", workers=2, work=Work.futex_pingpong()),
            CgroupDef(name="pipes", workers=2, work=Work.pipe_io()),
            CgroupDef(name="cache", workers=1, work=Work.cache_pressure(1024, 64)),
        ],
        "every common work type at once",
    ),
    Scenario.of_defs(
        "nested_cgroups",
        [
            CgroupDef(
                name="parent",
                workers=1,
                children=(
                    CgroupDef(name="child0", workers=2),
                    CgroupDef(
                        name="child1",
                        workers=2,
                        work=Work.bursty(),
                        children=(CgroupDef(name="grandchild", workers=1),),
                    ),
                ),
            )
        ],
        "a three-level cgroup tree with workers at every level",
    ),
    Scenario.of_defs(
        "oversubscribed",
        [CgroupDef(name="heavy", workers=8), CgroupDef(name="light", workers=4, work=Work.mixed())],
        "far more runnable workers than CPUs",
    ),
    Scenario.of_defs(
        "rt_mix",
        [
            CgroupDef(name="rt", workers=1, work=Work.bursty(2, 8), policy=SchedPolicy.fifo(10)),
            CgroupDef(name="normal", workers=2),
        ],
        "a bursty SCHED_FIFO task beside normal spinners",
    ),
    Scenario.of_defs(
        "wake_latency",
        [
            CgroupDef(name="futex", workers=2, work=Work.futex_pingpong()),
            CgroupDef(name="pipe", workers=2, work=Work.pipe_io()),
        ],
        "paired ping-pong workers: wake-to-run latency",
    ),
    Scenario.of_defs(
        "pinned_llc",
        [
            CgroupDef(name="pinned", workers=2, affinity=Affinity(mode=AffinityMode.LLC_ALIGNED)),
            CgroupDef(name="single", workers=2, affinity=Affinity(mode=AffinityMode.SINGLE_CPU)),
        ],
        "LLC-aligned and single-CPU affinities",
    ),
    # -- real payloads (the host needs stress-ng, rt-tests and perf) --
    Scenario.of_defs(
        "scx_smoke",
        [
            CgroupDef(
                name="stress",
                workers=0,
                payload=Payload.stress_ng("--cpu", "0", "--fork", "0", "--affinity", "0"),
            )
        ],
        "sched_ext CI's smoke load: stress-ng cpu, fork and affinity stressors on every CPU",
        # A smoke test: the scheduler survives and every stressor completes.
        # Fork storms keep run queues uneven even averaged over 5 samples
        # (EEVDF: mean [17.4, 3.2, 11.0, 12.2], every CPU busy); that is not
        # what this load tests.
        thresholds=Thresholds(max_imbalance=False),
        # stress-ng starts its 3 stressors per CPU one by one: under one TCG
        # thread at 8 vCPUs that took over 5 s, and stopped during start-up it
        # exits 2 ("abort signal during startup", said only with -v).
        duration_s=15.0,
    ),
    Scenario.of_defs(
        "hackbench_hogs",
        [
            CgroupDef(
                name="bench", workers=0, payload=Payload.hackbench(groups=2, loops=50, fds=10)
            ),
            CgroupDef(name="hogs", workers=2),
        ],
        "hackbench (process mode, sockets) beside CPU hogs in another cgroup",
        # wake-affine placement keeps hackbench's senders and receivers
        # stacked where they wake, even averaged over 5 samples (EEVDF: mean
        # [1.2, 5.2, 2.0, 1.6], 25 tasks on one CPU); not a fault
        thresholds=Thresholds(max_imbalance=False),
    ),
    Scenario.of_defs(
        "cyclictest_noisy",
        [
            CgroupDef(
                name="latency", workers=0, payload=Payload.cyclictest(threads=2, interval_us=1000)
            ),
            CgroupDef(name="noise", workers=4, work=Work.mixed()),
        ],
        "cyclictest (SCHED_OTHER, so the scheduler under test places it) beside a noisy cgroup",
    ),
    Scenario.of_defs(
        "perf_pipe_llcs",
        [
            CgroupDef(
                name="pipe",
                workers=0,
                cpuset=CpusetSpec.across_llcs(2),
                # 2000 round trips took 6 s under one TCG thread beside a
                # second VM (603 ops/s with perf's start-up): past the 5 s.
                payload=Payload.perf_pipe(loops=1_000),
            ),
            CgroupDef(name="bg", workers=1),
        ],
        "perf bench sched pipe between two CPUs of different LLCs, one spinner beside",
    ),
)

#: The groups of the scenarios above (catalog_more.py sets its own).
_GROUPS = {
    "steady": "fairness", "oversubscribed": "overload", "mixed_work": "overload",
    "cpuset_disjoint": "cpusets and cgroups", "cpuset_overlap": "cpusets and cgroups",
    "cgroup_add_remove": "cpusets and cgroups", "cpuset_swap": "cpusets and cgroups",
    "nested_cgroups": "cpusets and cgroups", "affinity_churn": "churn",
    "rt_mix": "real-time", "wake_latency": "latency", "pinned_llc": "placement",
    "scx_smoke": "payloads", "hackbench_hogs": "payloads", "cyclictest_noisy": "payloads",
    "perf_pipe_llcs": "payloads",
}  # fmt: skip
CATALOG = tuple(dataclasses.replace(s, group=_GROUPS[s.name]) for s in CATALOG) + MORE
SCENARIOS: dict[str, Scenario] = {s.name: s for s in CATALOG}
