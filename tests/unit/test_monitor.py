"""The monitor without a VM: the raw sampler replayed on memory images
captured from real guests (tests/vm/test_monitor.py makes them), the guest
memory map and page-table walk, and every check on synthetic samples."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import struct
from pathlib import Path

import pytest

from ktstr.evaluate.monitor import MonitorJudge, MonitorLimits, explain
from ktstr.inspect.layout import KIMAGE_BASE, Layout
from ktstr.inspect.memory import FaultError, GiB, PageImage, pc_regions
from ktstr.inspect.program import InspectError, parse_note, release_matches
from ktstr.inspect.reader import Reader
from ktstr.inspect.sample import CpuState, Sample, ScxState, Task
from ktstr.inspect.sampler import Sampler
from ktstr.inspect.watchdog import shorten_watchdog
from ktstr.runner.monitoring import plan_monitor
from ktstr.spec.checks import DEFAULTS, Thresholds, merge
from ktstr.spec.ledger import cpu_groups
from ktstr.spec.plan import resolve
from ktstr.spec.scenario import CgroupDef, CpusetSpec, Scenario
from ktstr.spec.topology import Topology

DATA = Path(__file__).parent.parent / "data"


def capture(series: str) -> tuple[Layout, PageImage, dict]:
    with gzip.open(DATA / f"monitor-capture-{series}.json.gz", "rt") as f:
        doc = json.load(f)
    pages = {int(p): base64.b64decode(b) for p, b in doc["pages"].items()}
    return Layout.from_data(doc["layout"]), PageImage(pages), doc["sample"]


def plain(sample: Sample) -> dict:
    """As the capture stored it (JSON)."""
    d = dataclasses.asdict(sample)
    for w in d["waiting"]:
        w["allowed"] = sorted(w["allowed"])
    return json.loads(json.dumps(d))


@pytest.mark.parametrize("series", ["6.12", "7.3"])
def test_the_sampler_replays_a_real_guest(series):
    """scx_simple with a spinner pinned to each of 4 CPUs, as the host read
    it: 6.12 keeps sched_ext's state in globals, 7.x behind scx_root."""
    layout, image, want = capture(series)
    got = Sampler(Reader(image, layout), layout).sample(1.0)
    assert plain(got) == want
    assert got.scx.ops == "simple" and got.scx.enable_state.endswith("ENABLED")
    assert [c.curr_comm for c in got.cpus] == ["sh"] * 4
    assert all(c.curr_class == "ext" and not c.idle and c.nr_running >= 1 for c in got.cpus)
    global_dsq = (1 << 63) | 1  # SCX_DSQ_GLOBAL
    assert global_dsq in got.scx.dsqs and 0 in got.scx.dsqs  # scx_simple's shared DSQ 0
    if series == "7.3":
        assert "scx_root" in layout.symbols and got.scx.events["SCX_EV_DISPATCH_KEEP_LAST"] > 0
    else:
        assert "scx_root" not in layout.symbols and "ops" in layout.symbols


def test_a_page_the_capture_lacks_faults():
    layout, image, _ = capture("7.3")
    with pytest.raises(FaultError):
        Reader(image, layout).read(layout.page_offset + (1 << 40), 8)


def test_ram_appears_below_and_above_the_pci_hole():
    assert pc_regions(1 * GiB) == pc_regions(1 * GiB)[:1]
    (low,) = pc_regions(3 * GiB)
    assert (low.phys, low.size) == (0, 3 * GiB)
    low, high = pc_regions(4 * GiB)  # over 3.5 GiB: split at 3 GiB, the rest at 4 GiB
    assert (low.size, high.phys, high.size, high.ram) == (3 * GiB, 4 * GiB, 1 * GiB, 3 * GiB)


def _table(entries: dict[int, int]) -> bytes:
    page = bytearray(4096)
    for index, value in entries.items():
        struct.pack_into("<Q", page, index * 8, value)
    return bytes(page)


def test_page_table_walk_with_small_and_huge_pages():
    """vmalloc addresses (bucket tables, BPF maps) walk the guest's tables."""
    virt_4k = 0xFFFFC90000001000 + 0x123
    virt_2m = 0xFFFFC90000400000 + 0x456
    i = [(virt_4k >> s) & 511 for s in (39, 30, 21, 12)]
    pages = {
        1: _table({i[0]: 0x2000 | 1}),  # pgd -> pud
        2: _table({i[1]: 0x3000 | 1}),  # pud -> pmd
        3: _table({i[2]: 0x4000 | 1, (virt_2m >> 21) & 511: 0x600000 | 1 | 1 << 7}),
        4: _table({i[3]: 0x5000 | 1 | 1 << 63}),  # NX bit ignored
        5: b"\xaa" * 4096,
        0x600000 // 4096: b"\xbb" * 4096,
    }
    layout = dataclasses.replace(_layout(), pgd_phys=0x1000)
    r = Reader(PageImage(pages), layout)
    assert r.phys(virt_4k) == 0x5123 and r.read(virt_4k, 2) == b"\xaa\xaa"
    assert r.phys(virt_2m) == 0x600456
    assert r.phys(KIMAGE_BASE + 0x10) == 0x10 + layout.phys_base
    with pytest.raises(FaultError, match="not mapped"):
        r.phys(0xFFFFC90040000000)


def _layout(**kw) -> Layout:
    base = dict(
        release="7.3.4", hz=1000, nr_cpus=1, nr_nodes=1, page_offset=0xFFFF888000000000,
        phys_base=0x1000000, pgd_phys=0, level5=False, kaslr_offset=0, rqs=(), per_cpu_offsets=(),
    )  # fmt: skip
    return Layout(**{**base, **kw})  # type: ignore[arg-type]


def test_the_watchdog_is_only_shortened_and_its_check_in_moved_first():
    ts, timeout = KIMAGE_BASE + 0x100, KIMAGE_BASE + 0x108
    layout = _layout(symbols={"watchdog_timestamp": ts, "watchdog_timeout": timeout}, phys_base=0)
    image = PageImage({0: struct.pack("<QQ", 0, 0).rjust(0x100, b"\0") + bytes(4096 - 0x100)})
    r = Reader(image, layout)
    r.write_u64(ts, 10_000)
    r.write_u64(timeout, 30_000)
    w = shorten_watchdog(r, 0, 5.0, jiffies=12_000)
    assert (w.where, w.old_jiffies, w.new_jiffies) == ("scx_watchdog_timeout", 30_000, 5_000)
    assert r.u64(ts) == 25_000 and r.u64(timeout) == 5_000  # due: 10 s + 30 s / 2
    again = shorten_watchdog(r, 0, 10.0, jiffies=13_000)
    assert again.skipped and r.u64(timeout) == 5_000  # never lengthened


def test_vmcoreinfo_notes_are_checked():
    desc = b"OSRELEASE=7.3.4\nPAGESIZE=4096\nKERNELOFFSET=1e000000\nNUMBER(phys_base)=0x2000\n"
    note = struct.pack("<III", 11, len(desc), 0) + b"VMCOREINFO\0\0" + desc
    info = parse_note(note)
    assert info.release == "7.3.4" and info.kaslr_offset == 0x1E000000
    assert info.number("phys_base") == 0x2000
    huge = struct.pack("<III", 11, 1 << 20, 0) + b"VMCOREINFO\0\0"
    for bad in (note[:8], note.replace(b"VMCOREINFO", b"NOTCOREINF"), huge):
        with pytest.raises(InspectError):
            parse_note(bad)
    assert release_matches("6.12.117", "6.12.117") and release_matches("6.12.117-ktstr", "6.12.117")
    assert not release_matches("6.12.1", "6.12.117") and not release_matches("7.3.4", "6.12.117")


# -- the checks -----------------------------------------------------------------


def cpu(nr=1, *, idle=False, clock=0, local=0, pid=100) -> CpuState:
    return CpuState(
        nr_running=nr, scx_nr_running=nr, local_dsq=local, clock=clock, curr_pid=0 if idle else pid,
        curr_comm="swapper" if idle else "w", curr_class="idle" if idle else "ext", idle=idle,
    )  # fmt: skip


def sample(t, cpus, waiting=()) -> Sample:
    return Sample(t=t, jiffies=int(t * 1000), cpus=tuple(cpus), scx=ScxState(), waiting=waiting)


def feed(judge, frames):
    for f in frames:
        judge.add(f)
    return judge


def test_imbalance_must_be_sustained_and_is_judged_per_cpuset():
    lopsided = [cpu(6), cpu(0, idle=True), cpu(0, idle=True), cpu(0, idle=True)]
    frames = [sample(t / 10, [dataclasses.replace(c, clock=t) for c in lopsided]) for t in range(9)]
    j = feed(MonitorJudge(MonitorLimits(), ((0, 1, 2, 3),)), frames[:4])
    assert "rq_imbalance" not in j.findings  # 4 samples < 5
    j.add(frames[4])
    assert j.findings["rq_imbalance"].evidence["load"] == [6, 0, 0, 0]
    split = feed(MonitorJudge(MonitorLimits(), ((0,), (1, 2, 3))), frames)  # cpu0 alone
    assert "rq_imbalance" not in split.findings


def test_bursts_that_move_between_cpus_are_no_imbalance_stacking_is():
    """hackbench-like storms: every sample one CPU holds a burst, a different
    one each time (seen under EEVDF: [4,3,4,2,6,1,2,3]). Averaged over the
    sustain window the CPUs carry alike; a burst that stays is stacking."""

    def frames(pick):
        out = []
        for t in range(12):
            loads = [1, 1, 1, 1]
            loads[pick(t)] = 7
            out.append(sample(t / 10, [cpu(n, clock=t) for n in loads]))
        return out

    storm = feed(MonitorJudge(MonitorLimits(), ((0, 1, 2, 3),)), frames(lambda t: t % 4))
    assert "rq_imbalance" not in storm.findings and storm.max_imbalance == 7.0
    stuck = feed(MonitorJudge(MonitorLimits(), ((0, 1, 2, 3),)), frames(lambda t: 2))
    f = stuck.findings["rq_imbalance"]
    assert f.evidence["mean"] == [1.0, 1.0, 7.0, 1.0] and "on average over 5 samples" in f.message


def test_imbalance_waits_for_the_population_to_settle():
    """oversubscribed_4x at 8 CPUs under TCG: the 32 spinners became runnable
    over a second, a few CPUs first (mean [2.0, 3.0, 1.0, 1.6, 4.4, ...],
    totals rising to 32). Judged once the total holds; stacking then fails."""
    ramp = [[1, 0, 0, 0], [3, 1, 0, 0], [5, 2, 1, 0], [7, 3, 1, 1], [8, 4, 2, 2]]
    frames = [sample(t / 10, [cpu(n, clock=t) for n in loads]) for t, loads in enumerate(ramp)]
    j = feed(MonitorJudge(MonitorLimits(), ((0, 1, 2, 3),)), frames)
    assert "rq_imbalance" not in j.findings
    steady = [sample((5 + t) / 10, [cpu(n, clock=5 + t) for n in (12, 2, 1, 1)]) for t in range(5)]
    # the first window whose totals hold (16 each): the last ramp sample and 4 steady ones
    assert feed(j, steady).findings["rq_imbalance"].evidence["mean"] == [10.2, 2.6, 1.2, 1.2]


def test_deep_local_queue_and_stuck_clock():
    j = MonitorJudge(MonitorLimits(max_local_dsq=50, max_rq_clock_lag_ms=300))
    for t in range(10):  # cpu1's clock and jiffies move on, cpu0's stands
        j.add(sample(t / 10, [cpu(60, local=60, clock=5), cpu(1, clock=t * 100_000_000)]))
    assert j.findings["local_dsq"].evidence == {"cpu": 0, "depth": 60}
    f = j.findings["rq_clock_stuck"]
    assert f.evidence["cpu"] == 0 and f.evidence["lag_ms"] > 300  # busy, clock frozen at 5
    idle = MonitorJudge(MonitorLimits(max_rq_clock_lag_ms=300))
    feed(idle, [sample(t / 10, [cpu(0, idle=True, clock=5)]) for t in range(20)])
    assert "rq_clock_stuck" not in idle.findings  # an idle CPU's clock may stand still


def test_a_guest_the_host_did_not_run_is_not_a_stuck_clock():
    """Under TCG the host may not run a vCPU (or the whole guest) for a
    while: clocks and jiffies stand together, then jump. Only a clock that
    stands while the guest's time moves past the limit is a finding."""
    j = MonitorJudge(MonitorLimits(max_rq_clock_lag_ms=300))
    frozen = [cpu(1, clock=7), cpu(1, clock=9)]
    for t in range(20):  # the host sampled for 2 s; the guest's time stood
        j.add(Sample(t=t / 10, jiffies=500, cpus=tuple(frozen), scx=ScxState()))
    assert "rq_clock_stuck" not in j.findings
    short = MonitorJudge(MonitorLimits(max_rq_clock_lag_ms=300))
    for t in range(10):  # cpu0 missed 200 ms of its 300 ms allowance, then ran
        c0 = 5 if t < 3 else t * 100_000_000
        short.add(sample(t / 10, [cpu(1, clock=c0), cpu(1, clock=t * 100_000_000)]))
    assert "rq_clock_stuck" not in short.findings


def test_sched_ext_imbalance_counts_what_is_committed_to_each_cpu():
    """Under sched_ext a task in a shared DSQ counts on some rq's
    nr_running but may run anywhere (scx_central queues everything from
    cpu0): only the current task and the local DSQ are the CPU's own."""
    central = [cpu(8), cpu(1), cpu(1), cpu(1)]  # 8 on cpu0's books, each running one
    scx = ScxState(enable_state="SCX_ENABLED")
    frames = [Sample(t=t / 10, jiffies=t * 100, cpus=tuple(central), scx=scx) for t in range(8)]
    j = feed(MonitorJudge(MonitorLimits(), ((0, 1, 2, 3),)), frames)
    assert "rq_imbalance" not in j.findings and j.max_imbalance == 1.0
    piled = [cpu(8, local=7), cpu(1), cpu(1), cpu(1)]  # 7 queued on cpu0's local DSQ
    frames = [Sample(t=t / 10, jiffies=t * 100, cpus=tuple(piled), scx=scx) for t in range(8)]
    j = feed(MonitorJudge(MonitorLimits(), ((0, 1, 2, 3),)), frames)
    assert j.findings["rq_imbalance"].evidence["load"] == [8, 1, 1, 1]


def waiter(wait_ms, allowed=(0, 1), cpu_=0):
    return Task(
        pid=67, comm="python", cpu=cpu_, wait_ms=wait_ms, dsq=0x58, allowed=frozenset(allowed)
    )


def test_fresh_wakeups_on_an_idle_cpu_are_not_stranded_tasks():
    """Ping-pong workers: at every sample some task was woken a millisecond
    ago and sits queued for a CPU that is about to run it."""
    j = MonitorJudge(MonitorLimits(max_idle_waiting_ms=100))
    for t in range(30):
        j.add(sample(t / 10, [cpu(1, clock=t), cpu(0, idle=True, clock=t)], (waiter(1.0),)))
    assert "work_conservation" not in j.findings and j.max_idle_waiting_ms < 100


def test_work_conservation_names_the_idle_cpu_and_the_waiting_task():
    j = MonitorJudge(MonitorLimits(max_idle_waiting_ms=100))
    for t in range(8):
        j.add(
            sample(t / 10, [cpu(1, clock=t), cpu(0, idle=True, clock=t)], (waiter(50 + 100 * t),))
        )
    f = j.findings["work_conservation"]
    assert f.evidence["idle_cpu"] == 1 and f.evidence["task"] == "python[67]"
    assert f.evidence["dsq"] == 0x58 and "cpu1 sat idle" in f.message and "dsq 0x58" in f.message
    assert j.summary()["idle_while_waiting_ms"] >= 400


def test_an_idle_cpu_the_waiting_task_may_not_use_is_not_a_finding():
    j = MonitorJudge(MonitorLimits(max_idle_waiting_ms=100))
    for t in range(10):
        j.add(sample(t / 10, [cpu(2, clock=t), cpu(0, idle=True, clock=t)], (waiter(500, (0,)),)))
    assert "work_conservation" not in j.findings


def test_a_long_runnable_wait_is_an_early_warning():
    j = MonitorJudge(MonitorLimits(max_runnable_wait_ms=2500))
    for t in range(6):
        j.add(sample(t / 10, [cpu(2, clock=t)], (waiter(2600 + t),)))
    f = j.findings["runnable_wait"]
    assert f.evidence["task"] == "python[67]" and f.evidence["wait_ms"] >= 2600
    assert j.summary()["checks"]["runnable_wait"] == "fail"


def test_explanation_shows_the_seconds_before_the_end():
    frames = [
        sample(t / 10, [cpu(1, clock=t), cpu(0, idle=True, clock=t)], (waiter(100 * t),))
        for t in range(40)
    ]
    lines = explain(frames, until=3.9, seconds=2.0)
    assert 3 <= len(lines) <= 5
    assert lines[-1].startswith("- 0.") and "cpu1:idle" in lines[-1]
    assert "longest wait python[67]" in lines[-1]


def test_monitor_checks_follow_the_threshold_chain():
    t = merge(DEFAULTS, Thresholds(max_imbalance=False, max_idle_waiting_ms=250.0))
    plan = plan_monitor(t)
    assert plan.limits.max_imbalance is None and plan.limits.max_idle_waiting_ms == 250.0
    assert plan.limits.max_runnable_wait_ms == 2500.0  # half of the 5 s watchdog
    no_watchdog = plan_monitor(merge(DEFAULTS, Thresholds(sched_watchdog_s=False)))
    assert no_watchdog.watchdog_s is None and no_watchdog.limits.max_runnable_wait_ms == 15000.0


def test_balance_is_judged_within_the_plans_cpusets():
    topo = Topology.parse("1n2l2c1t")
    sc = Scenario.of_defs(
        "x",
        [
            CgroupDef("a", workers=2, cpuset=CpusetSpec.llc(0)),
            CgroupDef("b", workers=2, cpuset=CpusetSpec.llc(1)),
        ],
    )
    assert cpu_groups(resolve(sc, topo, 1.0), (0, 1, 2, 3)) == ((0, 1), (2, 3))
    free = Scenario.of_defs("y", [CgroupDef("a", workers=2)])
    assert cpu_groups(resolve(free, topo, 1.0), (0, 1, 2, 3)) == ((0, 1, 2, 3),)
