"""More canned scenarios, sized relative to the topology (``Size``) so one
definition fits every preset. Pure data; ``spec/catalog.py`` merges them.

Each says in its description what it exposes. Thresholds are ktstr's
defaults unless a scenario sets its own; the ideal-share oracle judges
every CPU-bound worker of a static scenario against its fair share."""

from __future__ import annotations

from ktstr.spec.checks import Thresholds
from ktstr.spec.cpuset import CpusetSpec, Size
from ktstr.spec.scenario import CgroupDef, HoldSpec, Op, Scenario, Step
from ktstr.spec.work import BATCH, IDLE, Affinity, AffinityMode, SchedPolicy, Work

ONE = Size.per_cpu(1)
TWO = Size.per_cpu(2)
HALF = Size.pct(50)

FAIRNESS = "fairness"
LATENCY = "latency"
PLACEMENT = "placement"
CGROUPS = "cpusets and cgroups"
CHURN = "churn"
OVERLOAD = "overload"
REALTIME = "real-time"
NUMA = "numa"


def _of(group: str, name: str, description: str, *defs: CgroupDef, **kw: object) -> Scenario:
    return Scenario.of_defs(name, list(defs), description, group=group, **kw)  # type: ignore[arg-type]


MORE: tuple[Scenario, ...] = (
    # -- fairness --
    _of(FAIRNESS, "weighted_cgroups",
        "cpu.weight 300 against 100, both cgroups 2 spinners per CPU: a scheduler must not "
        "starve the light cgroup below per-task or per-cgroup fairness",
        CgroupDef("heavy", workers=TWO, weight=300), CgroupDef("light", workers=TWO)),
    _of(FAIRNESS, "nice_mix",
        "nice 0 and nice 5 cgroups, 1 spinner per CPU each: shares by nice weight",
        CgroupDef("nice0", workers=ONE), CgroupDef("nice5", workers=ONE, nice=5)),
    _of(FAIRNESS, "batch_idle_mix",
        "SCHED_NORMAL and SCHED_BATCH spinners on a quarter of the CPUs each, a SCHED_IDLE "
        "spinner per CPU in a cgroup of weight 1: idle work takes only what the others leave",
        CgroupDef("normal", workers=Size.pct(25)),
        CgroupDef("batch", workers=Size.pct(25), policy=BATCH),
        # cpu.weight 1 too: with the cpu controller a cgroup competes by its
        # weight whatever its tasks' policy (EEVDF on 8 CPUs gave batch
        # tasks 0.37 of a CPU beside a weight-100 idle cgroup)
        CgroupDef("idle", workers=ONE, policy=IDLE, weight=1)),
    _of(FAIRNESS, "uneven_cgroups",
        "one spinner in one cgroup against 2 per CPU in another: per-task and per-cgroup "
        "fairness disagree, either is accepted",
        CgroupDef("lone", workers=1), CgroupDef("crowd", workers=TWO),
        # EEVDF balances load, and the lone spinner weighs as much as the
        # whole crowd: task counts stay uneven by design (4.4x and 5.0x
        # averaged at 8 CPUs, mean [0.6, 2.2, 0.6, 0.6, 1.4, 1.2, 0.8, 4.4])
        thresholds=Thresholds(max_imbalance=False)),
    _of(FAIRNESS, "per_core_pairs",
        "two spinners per core in one cgroup: equal shares among equals",
        CgroupDef("pairs", workers=Size.per_core(2))),
    _of(FAIRNESS, "deep_weights",
        "a three-level tree with cpu.weight at every level, spinners at the leaves",
        CgroupDef("top", workers=0, weight=200, children=(
            CgroupDef("mid", workers=0, weight=50, children=(
                CgroupDef("leaf", workers=ONE),)),
            CgroupDef("side", workers=ONE, weight=150))),
        CgroupDef("other", workers=ONE)),
    # -- latency --
    _of(LATENCY, "request_response",
        "schbench-style: requesters wake servers that work 0.2 ms and reply, beside hogs; "
        "request and wake-up latency",
        CgroupDef("rr", workers=TWO, work=Work.request_response(0.2)),
        CgroupDef("hogs", workers=ONE)),
    _of(LATENCY, "interactive_hogs",
        "an interactive task (1 ms bursts, 20 ms sleeps) beside a hog per CPU: its wake-up "
        "lateness",
        CgroupDef("interactive", workers=1, work=Work.interactive(1.0, 20.0)),
        CgroupDef("hogs", workers=ONE),
        thresholds=Thresholds(max_interactive_ratio=0.5)),
    _of(LATENCY, "periodic_timers",
        "5 ms periodic timers, one per CPU, beside a hog per CPU: lateness per period",
        CgroupDef("timers", workers=ONE, work=Work.timer_periodic(5.0, 0.5)),
        CgroupDef("hogs", workers=ONE)),
    _of(LATENCY, "thundering_herd",
        "2 waiters per CPU woken at once on one futex every 20 ms",
        CgroupDef("herd", workers=TWO, work=Work.thundering_herd(20.0, 0.2))),
    _of(LATENCY, "producer_consumer",
        "2 producers feed a bounded queue drained by the other workers (2 per CPU): "
        "time in queue",
        CgroupDef("queue", workers=TWO, work=Work.producer_consumer(2, 0.1))),
    _of(LATENCY, "pingpong_hogs",
        "futex ping-pong pairs beside a hog per CPU: wake-ups under load",
        CgroupDef("pairs", workers=HALF, work=Work.futex_pingpong()),
        CgroupDef("hogs", workers=ONE),
        # A pair's CPU time is what its wake-ups let it do: under EEVDF at 8
        # CPUs one pair did 437 round trips to the other's 805 (0.57 of the
        # mean). That is wake-up latency (the report's wake_p50/p99), not a
        # share; the hogs stay with the share oracle.
        thresholds=Thresholds(max_spread_pct=False)),
    # -- placement --
    _of(PLACEMENT, "spread_out",
        "spinners on half the cores: each gets a core of its own (no SMT sibling shared "
        "while a core idles, no LLC idle while another queues)",
        CgroupDef("few", workers=Size.per_core(0.5)),
        thresholds=Thresholds(min_spread_out_pct=95.0)),
    _of(PLACEMENT, "pairs_together",
        "one pipe ping-pong pair per LLC, free to run anywhere: each pair shares an LLC",
        CgroupDef("pairs", workers=Size.per_llc(2), work=Work.pipe_io()),
        # judged by the pairs' own count of wake-ups by where both ran:
        # 50-80 thousand in 15 s at 4 vCPUs, so the default 5 s is plenty
        thresholds=Thresholds(min_together_pct=95.0)),
    _of(PLACEMENT, "llc_pairs",
        "pipe ping-pong pairs pinned to an LLC each: communicating tasks stay together",
        CgroupDef("pairs", workers=Size.per_llc(2), work=Work.pipe_io(),
                  affinity=Affinity(mode=AffinityMode.LLC_ALIGNED))),
    _of(PLACEMENT, "pinned_and_free",
        "one pinned and one free spinner per CPU: the free ones must not starve nor crowd "
        "the pinned ones (a share a per-CPU queue reaches without constant migration)",
        CgroupDef("pinned", workers=ONE, affinity=Affinity(mode=AffinityMode.SINGLE_CPU)),
        CgroupDef("free", workers=ONE)),
    # -- cpusets and cgroups --
    _of(CGROUPS, "cpuset_halves_weighted",
        "disjoint halves, one with 3 per CPU, the other 1 per CPU: cpusets isolate load",
        CgroupDef("busy", workers=Size.per_cpu(3), cpuset=CpusetSpec.disjoint(0, 2)),
        CgroupDef("calm", workers=ONE, cpuset=CpusetSpec.disjoint(1, 2))),
    Scenario(name="move_workers", group=CGROUPS,
             description="every worker of a cgroup moves to another mid-run",
             steps=(Step(ops=(Op.add(CgroupDef("src", workers=ONE)),
                              Op.add(CgroupDef("dst", workers=ONE))),
                         hold=HoldSpec.fraction(0.5)),
                    Step(ops=(Op.move_all("src", "dst"),), hold=HoldSpec.fraction(0.5)))),
    Scenario(name="spawn_and_stop", group=CGROUPS,
             description="more workers join mid-run, then a cgroup's workers stop",
             steps=(Step(ops=(Op.add(CgroupDef("base", workers=Size.pct(25))),
                              Op.add(CgroupDef("burst", workers=1))),
                         hold=HoldSpec.fraction(0.3)),
                    # not oversubscribed: with more spinners than CPUs a per-CPU
                    # queue splits them unevenly, and the spread check (the
                    # oracle does not judge changing runs) would see that
                    Step(ops=(Op.spawn("burst", 2),), hold=HoldSpec.fraction(0.4)),
                    Step(ops=(Op.stop("burst"),), hold=HoldSpec.fraction(0.3)))),
    Scenario(name="remove_first", group=CGROUPS,
             description="the first cgroup is removed mid-run, the others go on",
             steps=(Step(ops=(Op.add(CgroupDef("first", workers=ONE)),
                              Op.add(CgroupDef("second", workers=ONE))),
                         hold=HoldSpec.fraction(0.5)),
                    Step(ops=(Op.remove("first"),), hold=HoldSpec.fraction(0.5)))),
    Scenario(name="reweight_and_move", group=CGROUPS,
             description="mid-run, one cgroup's cpu.weight rises to 400 and one worker of the "
                         "other moves into it",
             steps=(Step(ops=(Op.add(CgroupDef("a", workers=ONE)),
                              Op.add(CgroupDef("b", workers=ONE))),
                         hold=HoldSpec.fraction(0.4)),
                    Step(ops=(Op.set_weight("a", 400), Op.move_worker("b", 0, "a")),
                         hold=HoldSpec.fraction(0.6)))),
    _of(CGROUPS, "bandwidth_cap",
        "a spinner per CPU under cpu.max of one CPU, beside an uncapped cgroup as busy: the "
        "capped one stays within its quota, the other takes the rest (judged where the "
        "scheduler enforces cpu.max: EEVDF; needs CONFIG_CFS_BANDWIDTH)",
        CgroupDef("capped", workers=ONE, cpu_max=1.0), CgroupDef("free", workers=ONE)),
    Scenario(name="bandwidth_change", group=CGROUPS,
             description="cpu.max of a busy cgroup drops from 2 CPUs to half a CPU mid-run, "
                         "then the limit is lifted: nobody starves (needs CONFIG_CFS_BANDWIDTH)",
             steps=(Step(ops=(Op.add(CgroupDef("busy", workers=ONE, cpu_max=2.0)),
                              Op.add(CgroupDef("other", workers=HALF))),
                         hold=HoldSpec.fraction(0.4)),
                    Step(ops=(Op.set_cpu_max("busy", 0.5),), hold=HoldSpec.fraction(0.3)),
                    Step(ops=(Op.set_cpu_max("busy", 0),), hold=HoldSpec.fraction(0.3)))),
    Scenario(name="cpuset_shrink", group=CGROUPS,
             description="a busy cgroup's cpuset shrinks to one half, then grows back",
             steps=(Step(ops=(Op.add(CgroupDef("busy", workers=ONE)),),
                         hold=HoldSpec.fraction(0.3)),
                    Step(ops=(Op.set_cpuset("busy", CpusetSpec.disjoint(0, 2)),),
                         hold=HoldSpec.fraction(0.4)),
                    Step(ops=(Op.clear_cpuset("busy"),), hold=HoldSpec.fraction(0.3)))),
    # -- churn --
    _of(CHURN, "thread_storm",
        "short-lived threads (0.5 ms each) created one after another, one storm per CPU, "
        "beside hogs: creation to first run",
        CgroupDef("storm", workers=ONE, work=Work.thread_storm(0.5)),
        CgroupDef("hogs", workers=HALF)),
    _of(CHURN, "fork_exec_storm",
        "fork + exec of /bin/true in a loop, one per CPU, beside hogs",
        CgroupDef("storm", workers=ONE, work=Work.fork_exec()),
        CgroupDef("hogs", workers=HALF)),
    _of(CHURN, "page_fault_churn",
        "map, touch and unmap 1 MiB in a loop, one per CPU: fault-heavy CPU work",
        CgroupDef("faults", workers=ONE, work=Work.page_faults(1024))),
    _of(CHURN, "nice_churn",
        "workers cycling their own nice 0..19 beside steady spinners",
        CgroupDef("sweep", workers=HALF, work=Work.nice_sweep()),
        CgroupDef("steady", workers=HALF)),
    _of(CHURN, "yield_storm",
        "2 sched_yield()-heavy workers per CPU",
        CgroupDef("yielders", workers=TWO, work=Work.yield_heavy())),
    # -- overload --
    _of(OVERLOAD, "oversubscribed_4x",
        "4 spinners per CPU in one cgroup",
        CgroupDef("crowd", workers=Size.per_cpu(4))),
    _of(OVERLOAD, "mixed_overload",
        "2 spinners per CPU with I/O, bursty and cache-heavy work beside",
        CgroupDef("hogs", workers=TWO), CgroupDef("io", workers=1, work=Work.io_sync()),
        CgroupDef("bursty", workers=HALF, work=Work.bursty(3, 7)),
        CgroupDef("cache", workers=1, work=Work.cache_pressure(2048, 64)),
        # EEVDF balances load, not task counts: light sleepers gather where
        # hogs are few (6.12, averaged over 5 samples: [1.6, 1.2, 2.8, 5.0]
        # with every CPU busy); nr_running imbalance is no fault there
        thresholds=Thresholds(max_imbalance=False)),
    _of(OVERLOAD, "lock_convoy",
        "one lock fought over by 2 workers per CPU (flock), beside hogs",
        CgroupDef("lockers", workers=TWO, work=Work.mutex_contention(4)),
        CgroupDef("hogs", workers=HALF),
        # flock hands the lock over in no fair order: lockers' off-CPU time
        # differs by the lock, not the scheduler (EEVDF on 6.12: 19 %)
        thresholds=Thresholds(max_spread_pct=False)),
    # -- real-time --
    _of(REALTIME, "pi_convoy",
        "a convoy on a priority-inheriting futex among 4 workers beside hogs",
        CgroupDef("convoy", workers=4, work=Work.pi_lock(0.2)),
        CgroupDef("hogs", workers=ONE)),
    _of(REALTIME, "deadline_tasks",
        "a SCHED_DEADLINE task (2 ms every 20 ms) beside a hog per CPU: it keeps its period",
        CgroupDef("dl", workers=1, work=Work.deadline(2.0, 20.0)),
        CgroupDef("hogs", workers=ONE)),
    _of(REALTIME, "rr_timers",
        "SCHED_RR periodic timers (priority 20) beside normal hogs",
        CgroupDef("rr", workers=HALF, work=Work.timer_periodic(10.0, 1.0),
                  policy=SchedPolicy.rr(20)),
        CgroupDef("hogs", workers=ONE)),
    # -- NUMA and memory --
    _of(NUMA, "memory_bandwidth",
        "memory-bound copies (4 MiB) one per CPU: bandwidth per worker",
        CgroupDef("copy", workers=ONE, work=Work.memory_bw(4096))),
    _of(NUMA, "numa_halves",
        "memory-bound copies on one half of the CPUs, spinners on the other (a node each "
        "where the topology has two): load stays on its node",
        CgroupDef("n0", workers=ONE, work=Work.memory_bw(2048), cpuset=CpusetSpec.disjoint(0, 2)),
        CgroupDef("n1", workers=ONE, cpuset=CpusetSpec.disjoint(1, 2))),
    _of(NUMA, "numa_local",
        "one memory-bound copy (8 MiB) per node, free to run anywhere: each stays on the "
        "node its memory is on",
        CgroupDef("copy", workers=Size.per_node(1), work=Work.memory_bw(8192)),
        thresholds=Thresholds(min_numa_local_pct=95.0)),
)  # fmt: skip
