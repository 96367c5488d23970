"""Wiring the monitor into a run: start it when the guest says where its
kernel lives, shorten the watchdog when the scheduler attaches, stop it
before the VM's RAM files go, and hand the judge its samples."""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ktstr.evaluate.monitor import MonitorJudge, MonitorLimits
from ktstr.evaluate.placement import settled
from ktstr.host.kernel import Kernel
from ktstr.inspect.attach import Target
from ktstr.inspect.monitor import Monitor, MonitorConfig, MonitorResult
from ktstr.inspect.sample import Sample
from ktstr.protocol.messages import KernAddrs
from ktstr.spec.checks import Thresholds
from ktstr.spec.ledger import cpu_groups
from ktstr.spec.plan import Plan
from ktstr.spec.serde import from_data

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorPlan:
    """What the host asks of the monitor for one VM."""

    hz: float = 10.0
    #: sched_ext watchdog timeout to set after attach; None = leave the kernel's.
    watchdog_s: float | None = 5.0
    limits: MonitorLimits = field(default_factory=MonitorLimits)
    #: CPU groups whose run queues should be balanced (the plan's cpusets).
    groups: tuple[tuple[int, ...], ...] = ()


def _num(v: object) -> float | None:
    return None if v in (None, False, True) else float(v)  # type: ignore[arg-type]


def plan_monitor(t: Thresholds, hz: float = 10.0) -> MonitorPlan:
    """The monitor's plan from (scaled) thresholds. ``max_runnable_wait_ms``
    on means half the sched_ext watchdog timeout ktstr sets (or the kernel's
    30 s when it sets none)."""
    watchdog = _num(t.sched_watchdog_s)
    wait = _num(t.max_runnable_wait_ms)
    if t.max_runnable_wait_ms is True:
        wait = (watchdog if watchdog else 30.0) * 1000.0 / 2
    limits = MonitorLimits(
        max_imbalance=_num(t.max_imbalance),
        max_local_dsq=_num(t.max_local_dsq),
        max_rq_clock_lag_ms=_num(t.max_rq_clock_lag_ms),
        max_runnable_wait_ms=wait,
        max_idle_waiting_ms=_num(t.max_idle_waiting_ms),
        sustain=max(1, int(_num(t.monitor_sustain) or 5)),
    )
    return MonitorPlan(hz=hz, watchdog_s=watchdog, limits=limits)


def target(kernel: Kernel, memory_dir: Path, addrs: KernAddrs) -> Target:
    return Target(
        files=tuple(sorted(memory_dir.glob("node*"), key=lambda p: int(p.name[4:]))),
        vmlinux=kernel.directory / "vmlinux",
        version=kernel.version,
        config_hz=int(kernel.config.get("CONFIG_HZ", "1000") or 1000),
        vmcoreinfo=(addrs.vmcoreinfo_phys, addrs.vmcoreinfo_size),
    )


@dataclass(slots=True)
class MonitorRun:
    """The monitor of one VM: its thread, its judge, and every sample kept
    for the columnar file (bounded: past ``MAX_SERIES`` every other one)."""

    plan: MonitorPlan
    monitor: Monitor | None = None
    judge: MonitorJudge | None = None
    result: MonitorResult | None = None
    note: str = ""
    series: list[Sample] = field(default_factory=list)
    stride: int = 1
    #: When the monitor started, seconds after the VM was launched.
    started_at: float | None = None
    _seen: int = 0

    def _keep(self, s: Sample) -> None:
        assert self.judge is not None
        self.judge.add(s)
        self._seen += 1
        if self._seen % self.stride:
            return
        self.series.append(s)
        if len(self.series) >= MAX_SERIES:
            self.series = self.series[::2]
            self.stride *= 2

    def start(self, kernel: Kernel, memory_dir: Path | None, addrs: KernAddrs, t0: float) -> None:
        vmlinux = kernel.directory / "vmlinux"
        if memory_dir is None or not vmlinux.is_file():
            self.note = "monitor off: " + (
                "guest RAM is not shared"
                if memory_dir is None
                else f"no vmlinux in {kernel.directory}"
            )
            return
        config = MonitorConfig(target=target(kernel, memory_dir, addrs), hz=self.plan.hz)
        self.judge = MonitorJudge(
            self.plan.limits, self.plan.groups, jiffy_ms=1000.0 / config.target.config_hz
        )
        self.started_at = time.monotonic() - t0
        self.monitor = Monitor(config, t0, self._keep)
        self.monitor.start()

    def scenario(self, plan_data: Any, all_cpus: tuple[int, ...]) -> None:
        """A scenario started: balance is judged within its cpusets."""
        if self.judge is None:
            return
        try:
            plan = from_data(Plan, plan_data)
            self.judge.groups = cpu_groups(plan, all_cpus) or (all_cpus,)
        except Exception:  # an unreadable plan is the verdict's finding, not ours
            self.judge.groups = (all_cpus,)

    def workload_samples(self, windows: list[tuple[float, float]]) -> tuple[Sample, ...]:
        """The samples of the workload (host seconds), each window settled."""
        return settled(self.series, windows)

    def scheduler_attached(self) -> None:
        if self.monitor is not None and self.plan.watchdog_s is not None:
            self.monitor.shorten_watchdog(self.plan.watchdog_s)

    def stop(self) -> None:
        if self.monitor is not None and self.result is None:
            self.result = self.monitor.stop()
            if self.result.error:
                self.note = f"monitor failed: {self.result.error}"

    def summary(self) -> dict[str, Any] | None:
        if self.judge is None or self.result is None:
            return None
        out = self.judge.summary()
        r = self.result
        out["attach_s"] = round(r.attach_s, 3)
        out["first_sample_s"] = round(r.first_sample_s, 3) if r.first_sample_s else None
        if r.first_sample_s is not None and self.started_at is not None:
            out["first_sample_at_s"] = round(self.started_at + r.first_sample_s, 3)
        out["cpu_pct"] = round(100 * r.cpu_s / r.wall_s, 2) if r.wall_s else 0.0
        if r.watchdog is not None:
            w = r.watchdog
            out["watchdog"] = {
                "wrote": w.where,
                "from_s": round(w.old_jiffies / w.hz, 3),
                "to_s": round(w.new_jiffies / w.hz, 3),
                "skipped": w.skipped,
            }
        return out

    def write_series(self, path: Path) -> None:
        """The samples as columns (one array per field; per-CPU fields one
        array per CPU), gzip-compressed JSON."""
        cols: dict[str, Any] = {"t": [], "jiffies": [], "enable_state": [], "waiting": []}
        per_cpu: dict[str, list[list[Any]]] = {}
        for s in self.series:
            cols["t"].append(round(s.t, 4))
            cols["jiffies"].append(s.jiffies)
            cols["enable_state"].append(s.scx.enable_state)
            cols["waiting"].append([dataclasses.asdict(w) for w in s.waiting[:8]])
            for i, c in enumerate(s.cpus):
                for key in (
                    "nr_running",
                    "scx_nr_running",
                    "local_dsq",
                    "clock",
                    "curr_pid",
                    "idle",
                ):
                    per_cpu.setdefault(key, [[] for _ in s.cpus])[i].append(getattr(c, key))
        doc = {"schema": "ktstr.monitor/1", "stride": self.stride, "columns": cols, "cpus": per_cpu}
        with gzip.open(path, "wt") as f:
            json.dump(doc, f, default=list)


#: Samples kept for the columnar file before halving (10 min at 10 Hz).
MAX_SERIES = 6000
CPU_COLUMNS = ("nr_running", "scx_nr_running", "local_dsq", "clock", "curr_pid", "idle")
