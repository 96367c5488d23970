"""Pure: monitor samples -> findings and a summary. Streaming, no I/O.

``MonitorJudge.add(sample)`` is fed every tick; each check needs its
condition to hold for ``sustain`` consecutive samples (one-sample noise is
not a finding), and reports the first time it held, with the CPU(s), the
time in the run and the sampled values:

* ``rq_imbalance``: max / max(1, min) of the CPUs' load, each averaged
  over the last ``sustain`` samples, over the CPUs of one cpuset group
  above ``max_imbalance`` (a burst that lands elsewhere each sample is no
  imbalance; a CPU that stays loaded beside an idle one is), judged only
  while the group's total load is steady (tasks still arriving, as 32
  spinners released at once under TCG, land unevenly at first). The load is ``nr_running``
  under the kernel's own classes; while a sched_ext scheduler is enabled it
  is what is committed to the CPU (its current sched_ext task, its local
  DSQ, and tasks of other classes), because a task waiting in a shared DSQ
  is counted on some rq's ``scx.nr_running`` but may run on any CPU;
* ``local_dsq``: a CPU's local DSQ deeper than ``max_local_dsq``;
* ``rq_clock_stuck``: ``rq->clock`` standing still on a CPU that is not
  idle while the guest's time moves on (jiffies, or other CPUs' clocks) for
  longer than ``max_rq_clock_lag_ms``. When the whole guest stands (the
  host did not run it, or it was paused) nothing is judged;
* ``runnable_wait``: a runnable task waiting longer than
  ``max_runnable_wait_ms`` (default: half the sched_ext watchdog timeout), an
  early warning before the kernel's watchdog kills the scheduler;
* ``work_conservation``: a CPU idle while a task allowed on it waits in a
  queue, for longer than ``max_idle_waiting_ms``; the task's own wait must
  span the idle stretch (tasks woken an instant before a sample are on
  their way, not stranded).

The last two read sched_ext's runnable lists, so they apply while a
sched_ext scheduler is enabled.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ktstr.inspect.sample import CpuState, Sample, Task


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorLimits:
    """The monitor checks' thresholds, after the merge chain and scaling;
    None = off."""

    max_imbalance: float | None = 4.0
    max_local_dsq: float | None = 50.0
    max_rq_clock_lag_ms: float | None = 1000.0
    max_runnable_wait_ms: float | None = None
    max_idle_waiting_ms: float | None = 100.0
    sustain: int = 5


@dataclass(frozen=True, slots=True)
class MonitorFinding:
    check: str
    message: str
    at_s: float
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Run:
    """A condition's consecutive samples and when it started."""

    count: int = 0
    since: float = 0.0

    def step(self, holds: bool, t: float) -> int:
        if not holds:
            self.count = 0
            return 0
        if self.count == 0:
            self.since = t
        self.count += 1
        return self.count


def _task(t: Task) -> str:
    return f"{t.comm}[{t.pid}]"


@dataclass(slots=True)
class MonitorJudge:
    limits: MonitorLimits
    #: CPU groups whose run queues should be balanced (the plan's cpusets).
    groups: tuple[tuple[int, ...], ...] = ()
    samples: int = 0
    first_t: float | None = None
    last_t: float = 0.0
    cpus: int = 0
    max_imbalance: float = 0.0
    max_local_dsq: int = 0
    max_wait: Task | None = None
    max_idle_waiting_ms: float = 0.0
    findings: dict[str, MonitorFinding] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    _runs: dict[tuple[str, Any], _Run] = field(default_factory=dict)
    #: Milliseconds per jiffy (the guest's CONFIG_HZ).
    jiffy_ms: float = 1.0
    #: Per CPU: (clock, jiffies, highest clock of any CPU) when it last moved.
    _clocks: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    #: Per CPU group: (time, load per CPU) of its last ``sustain`` samples.
    _loads: dict[tuple[int, ...], collections.deque[tuple[float, list[int]]]] = field(
        default_factory=dict
    )

    def _run(self, key: tuple[str, Any]) -> _Run:
        if key not in self._runs:
            self._runs[key] = _Run()
        return self._runs[key]

    def _found(self, check: str, message: str, t: float, **evidence: Any) -> None:
        self.counts[check] = self.counts.get(check, 0) + 1
        if check not in self.findings:
            at = t - (self.first_t or 0.0)
            self.findings[check] = MonitorFinding(check, f"{message} at +{at:.1f}s", at, evidence)

    def add(self, s: Sample) -> None:
        if self.first_t is None:
            self.first_t = s.t
        self.samples += 1
        self.last_t = s.t
        self.cpus = len(s.cpus)
        self._imbalance(s)
        self._local(s)
        self._clock(s)
        self._waits(s)

    def _imbalance(self, s: Sample) -> None:
        """Each CPU's load averaged over the last ``sustain`` samples: a CPU
        that stays loaded while another stays idle is stacking; bursts that
        land on different CPUs each time (message storms, forks) average
        out."""
        lim, n = self.limits, len(s.cpus)
        scx = s.scx.enable_state == "SCX_ENABLED"
        for group in self.groups or (tuple(range(n)),):
            load = [cpu_load(s.cpus[c], scx) for c in group if c < n]
            if len(load) < 2:
                continue
            self.max_imbalance = max(self.max_imbalance, max(load) / max(1, min(load)))
            window = self._loads.setdefault(group, collections.deque(maxlen=lim.sustain))
            if window and len(window[0][1]) != len(load):
                window.clear()
            window.append((s.t, load))
            if lim.max_imbalance is None or len(window) < lim.sustain:
                continue
            totals = [sum(w[1]) for w in window]
            if min(totals) < STEADY * max(totals):
                continue  # tasks still arriving or leaving: where they land first is no verdict
            mean = [round(sum(w[1][i] for w in window) / len(window), 1) for i in range(len(load))]
            ratio = max(mean) / max(1.0, min(mean))
            if ratio > lim.max_imbalance:
                what = "tasks committed (current, local DSQ)" if scx else "nr_running"
                self._found(
                    "rq_imbalance",
                    f"run queues of cpus {_cpus(group)} unbalanced {ratio:.1f}x on average "
                    f"over {lim.sustain} samples ({what}, mean {mean}; last {load})",
                    window[0][0],
                    cpus=list(group),
                    load=load,
                    mean=mean,
                    sched_ext=scx,
                )

    def _local(self, s: Sample) -> None:
        lim = self.limits
        for cpu, c in enumerate(s.cpus):
            self.max_local_dsq = max(self.max_local_dsq, c.local_dsq)
            over = lim.max_local_dsq is not None and c.local_dsq > lim.max_local_dsq
            run = self._run(("local", cpu))
            if run.step(over, s.t) == lim.sustain:
                self._found(
                    "local_dsq",
                    f"cpu{cpu}'s local DSQ held {c.local_dsq} tasks (limit {lim.max_local_dsq:g})",
                    run.since,
                    cpu=cpu,
                    depth=c.local_dsq,
                )

    def _clock(self, s: Sample) -> None:
        limit = self.limits.max_rq_clock_lag_ms
        newest = max((c.clock for c in s.cpus), default=0)
        for cpu, c in enumerate(s.cpus):
            last = self._clocks.get(cpu)
            if last is None or c.idle or c.clock != last[0]:
                self._clocks[cpu] = (c.clock, s.jiffies, newest)
                self._run(("clock", cpu)).step(False, s.t)
                continue
            lag_ms = max((s.jiffies - last[1]) * self.jiffy_ms, (newest - last[2]) / 1e6)
            stuck = limit is not None and lag_ms > limit
            run = self._run(("clock", cpu))
            if run.step(stuck, s.t) == self.limits.sustain:
                self._found(
                    "rq_clock_stuck",
                    f"cpu{cpu}'s rq clock stood at {c.clock} for {lag_ms:.0f}ms of guest "
                    f"time while it ran {c.curr_comm}[{c.curr_pid}] (limit {limit:.0f}ms)",
                    run.since,
                    cpu=cpu,
                    clock=c.clock,
                    lag_ms=round(lag_ms, 1),
                    task=f"{c.curr_comm}[{c.curr_pid}]",
                )

    def _waits(self, s: Sample) -> None:
        lim = self.limits
        longest = max(s.waiting, key=lambda w: w.wait_ms, default=None)
        best = self.max_wait
        if longest is not None and (best is None or longest.wait_ms > best.wait_ms):
            self.max_wait = longest
        limit = lim.max_runnable_wait_ms
        over = limit is not None and longest is not None and longest.wait_ms > limit
        run = self._run(("wait", None))
        if run.step(over, s.t) == lim.sustain and longest is not None:
            self._found(
                "runnable_wait",
                f"{_task(longest)} waited {longest.wait_ms:.0f}ms to run (cpu{longest.cpu}"
                + (f", dsq {longest.dsq:#x}" if longest.dsq is not None else "")
                + f"; limit {limit:.0f}ms)",
                run.since,
                task=_task(longest),
                cpu=longest.cpu,
                wait_ms=longest.wait_ms,
                dsq=longest.dsq,
            )
        self._idle_waiting(s)

    def _idle_waiting(self, s: Sample) -> None:
        lim = self.limits
        for cpu, c in enumerate(s.cpus):
            run = self._run(("idle", cpu))
            # The same wait must span the idle stretch: a task that was woken
            # an instant ago (ping-pong) is on its way to the CPU, not stranded.
            since_ms = (s.t - run.since) * 1000.0 if run.count else 0.0
            victim = max(
                (
                    w
                    for w in s.waiting
                    if c.idle and cpu in w.allowed and w.wait_ms + WAIT_SLACK_MS >= since_ms
                ),
                key=lambda w: w.wait_ms,
                default=None,
            )
            if run.step(victim is not None, s.t) == 0 or victim is None:
                continue
            held_ms = (s.t - run.since) * 1000.0
            self.max_idle_waiting_ms = max(self.max_idle_waiting_ms, held_ms)
            limit = lim.max_idle_waiting_ms
            if limit is not None and run.count >= lim.sustain and held_ms > limit:
                self._found(
                    "work_conservation",
                    f"cpu{cpu} sat idle for {held_ms:.0f}ms while {_task(victim)}, "
                    f"allowed on it, waited {victim.wait_ms:.0f}ms on cpu{victim.cpu}"
                    + (f" in dsq {victim.dsq:#x}" if victim.dsq is not None else "")
                    + f" (limit {limit:.0f}ms)",
                    run.since,
                    idle_cpu=cpu,
                    task=_task(victim),
                    queue_cpu=victim.cpu,
                    dsq=victim.dsq,
                    wait_ms=victim.wait_ms,
                )

    def summary(self) -> dict[str, Any]:
        span = self.last_t - (self.first_t or self.last_t)
        return {
            "samples": self.samples,
            "hz": round((self.samples - 1) / span, 2) if span > 0 else 0.0,
            "cpus": self.cpus,
            "max_imbalance": round(self.max_imbalance, 2),
            "max_local_dsq": self.max_local_dsq,
            "max_runnable_wait_ms": round(self.max_wait.wait_ms, 1) if self.max_wait else 0.0,
            "longest_waiting": _task(self.max_wait) if self.max_wait else None,
            "idle_while_waiting_ms": round(self.max_idle_waiting_ms, 1),
            "checks": {
                name: ("fail" if name in self.findings else "pass")
                for name in CHECKS
                if self._enabled(name)
            },
        }

    def _enabled(self, name: str) -> bool:
        lim = self.limits
        return {
            "rq_imbalance": lim.max_imbalance is not None,
            "local_dsq": lim.max_local_dsq is not None,
            "rq_clock_stuck": lim.max_rq_clock_lag_ms is not None,
            "runnable_wait": lim.max_runnable_wait_ms is not None,
            "work_conservation": lim.max_idle_waiting_ms is not None,
        }[name]


#: Jitter allowed between the host's sample times and the guest's jiffies.
WAIT_SLACK_MS = 50.0

#: rq_imbalance judges a window only when its smallest total load is at least
#: this share of its largest.
STEADY = 0.75

CHECKS = ("rq_imbalance", "local_dsq", "rq_clock_stuck", "runnable_wait", "work_conservation")


def cpu_load(c: CpuState, scx: bool) -> int:
    """What a CPU has to run (see ``rq_imbalance`` above)."""
    if not scx:
        return c.nr_running
    return max(0, c.nr_running - c.scx_nr_running) + c.local_dsq + (c.curr_class == "ext")


def _cpus(group: Iterable[int]) -> str:
    from ktstr.spec.topology import format_cpus

    return format_cpus(sorted(group))


def explain(samples: Iterable[Sample], until: float, seconds: float = 3.0) -> list[str]:
    """The monitor's view of the seconds before ``until``: which CPUs ran
    what or sat idle, queue depths, the longest-waiting task; one line per
    half second."""
    lines = []
    last = -1.0
    for s in samples:
        if s.t < until - seconds or s.t > until or s.t - last < 0.5:
            continue
        last = s.t
        cpus = " ".join(_cpu_word(i, c) for i, c in enumerate(s.cpus[:16]))
        wait = max(s.waiting, key=lambda w: w.wait_ms, default=None)
        tail = f"; longest wait {_task(wait)} {wait.wait_ms:.0f}ms on cpu{wait.cpu}" if wait else ""
        dsqs = {k: v for k, v in s.scx.dsqs.items() if v}
        extra = f"; dsqs {dsqs}" if dsqs else ""
        lines.append(f"-{until - s.t:4.1f}s {cpus}{tail}{extra}")
    return lines


def _cpu_word(i: int, c: CpuState) -> str:
    what = "idle" if c.idle else f"{c.curr_comm}[{c.curr_pid}]/{c.curr_class}"
    return f"cpu{i}:{what}" + (f" q{c.local_dsq}" if c.local_dsq else "")


def to_data(s: Sample) -> dict[str, Any]:
    return dataclasses.asdict(s)
