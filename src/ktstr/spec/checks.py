"""Check thresholds and their merge chain. Pure.

Every field is ``None`` = inherit from the layer below, ``False`` = this
check is off, or a value. ``merge(defaults, scheduler, test)`` applies the
layers in order: the last value set wins, so a higher layer can switch a
check off or back on.

Timing thresholds (gaps, wake latencies, rates) assume a real CPU per vCPU.
Under TCG, or when vCPUs outnumber host CPUs, ``timing_scale`` widens them
by a documented factor and the report says so: a false alarm from emulation
is as bad as a missed bug.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from ktstr.errors import ConfigError

Value = float | bool | None

_GATE = re.compile(
    r"payload\.([a-z][a-z0-9_-]{0,31}\.[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})(<=|>=|=)(.*)"
)


@dataclass(frozen=True, slots=True)
class PayloadGate:
    """A bound on a payload metric: ``payload.hackbench.time_s <= 12``.
    ``metric`` is ``NAME.METRIC``; ``op`` is ``<=``, ``>=`` or ``off``."""

    metric: str
    op: str
    value: float = 0.0

    def __post_init__(self) -> None:
        if _GATE.fullmatch(f"payload.{self.metric}<=0") is None:
            raise ConfigError(f"payload gate {self.metric!r}: expected NAME.METRIC")
        if self.op not in ("<=", ">=", "off"):
            raise ConfigError(f"payload gate {self.metric}: op must be <=, >= or off")
        v = self.value
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ConfigError(f"payload gate {self.metric}: {v!r} is not a finite number")

    @property
    def payload(self) -> str:
        return self.metric.split(".", 1)[0]

    @property
    def key(self) -> str:
        return self.metric.split(".", 1)[1]

    def describe(self) -> str:
        return (
            f"payload.{self.metric} {self.op} {self.value:g}"
            if self.op != "off"
            else (f"payload.{self.metric} off")
        )

    @classmethod
    def parse(cls, text: str) -> PayloadGate:
        """``payload.NAME.METRIC<=12``, ``>=3`` or ``=off``."""
        m = _GATE.fullmatch(text.replace(" ", ""))
        if m is None:
            raise ConfigError(
                f"bad payload gate {text!r}: expected payload.NAME.METRIC<=VALUE, >=VALUE or =off"
            )
        metric, op, raw = m.groups()
        if op == "=" and raw == "off":
            return cls(metric, "off")
        if op == "=":
            raise ConfigError(f"payload gate {text!r}: say <= or >= (which way is worse?)")
        try:
            return cls(metric, op, float(raw))
        except ValueError:
            raise ConfigError(f"payload gate {text!r}: {raw!r} is not a number") from None


def _gates(value: Any) -> tuple[PayloadGate, ...]:
    """``{"hackbench.time_s": "<=12"}`` or gates -> gates."""
    if isinstance(value, dict):
        return tuple(
            PayloadGate.parse(f"payload.{k}{v if str(v)[:2] in ('<=', '>=') else '=' + str(v)}")
            for k, v in value.items()
        )
    if not isinstance(value, tuple | list) or not all(isinstance(g, PayloadGate) for g in value):
        raise ConfigError(f"threshold payload: expected a dict or PayloadGates, got {value!r}")
    return tuple(value)


def time_like(metric: str) -> str:
    """ "max" for times (bigger is slower), "min" for rates, "" otherwise:
    which way emulation moves a metric."""
    if metric.endswith(("_per_s", "_per_cpu_s")):
        return "min"
    if metric.endswith(("_s", "_ms", "_us", "usecs_per_op")):
        return "max"
    return ""


#: TCG runs guest code an order of magnitude slower and its vCPU threads are
#: host threads that the host scheduler preempts: gaps and latencies that are
#: bugs on real hardware are ordinary there.
TCG_TIMING_FACTOR = 4.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    """Limits of the checks; None inherits, False turns a check off."""

    not_starved: bool | None = None  # every worker made progress
    isolation: bool | None = None  # workers stayed inside their cgroup's cpuset
    max_gap_ms: Value = None  # longest gap between a worker's iterations
    max_spread_pct: Value = None  # off-CPU % spread (max - min) within a cgroup
    max_throughput_cv: Value = None  # CV of work rate across a cgroup's workers
    #: p10 over CPU-bound workers of actual / ideal CPU share (evaluate/fairness.py)
    min_share_ratio: Value = None
    #: judge shares by cgroup cpu.weight alone (not also per task)
    cgroup_weights: bool | None = None
    #: % of samples CPU-bound workers fewer than cores each had a core (evaluate/placement.py)
    min_spread_out_pct: Value = None
    min_together_pct: Value = None  # % of samples talking workers shared an LLC
    min_numa_local_pct: Value = None  # % of samples memory-bound workers ran on their node
    #: interactive workers' wake-up p90 over the hogs' mean timeslice
    max_interactive_ratio: Value = None
    #: % a cpu.max-limited cgroup may use over its quota; on = the scheduler
    #: enforces cpu.max (and the share oracle counts the limit)
    max_bandwidth_pct: Value = None
    min_work_rate: Value = None  # work units per second, every worker
    max_wake_p99_us: Value = None  # p99 wake-to-run latency of a cgroup
    max_wake_cv: Value = None  # CV of wake latencies of a cgroup
    min_iteration_rate: Value = None  # iterations per second, every worker
    max_migration_ratio: Value = None  # migrations per iteration of a cgroup
    # -- the host's monitor of the guest kernel (evaluate/monitor.py) --
    max_imbalance: Value = None  # max/min nr_running over a cpuset's CPUs
    max_local_dsq: Value = None  # tasks in one CPU's local DSQ
    max_rq_clock_lag_ms: Value = None  # rq clock standing on a busy CPU while time moves
    max_runnable_wait_ms: Value = None  # on = half the sched_ext watchdog timeout
    max_idle_waiting_ms: Value = None  # a CPU idle while a task allowed on it waits
    monitor_sustain: Value = None  # consecutive samples a monitor condition must hold
    sched_watchdog_s: Value = None  # sched_ext watchdog timeout ktstr sets after attach
    #: Bounds on payload metrics (``payload.NAME.METRIC<=X``); merged by metric.
    payload: tuple[PayloadGate, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "payload", _gates(self.payload))
        for f in dataclasses.fields(self):
            if f.name == "payload":
                continue
            v = getattr(self, f.name)
            if f.name in AUTO_CHECKS and v is True:
                continue
            if f.name in BOOL_CHECKS:
                if v is not None and not isinstance(v, bool):
                    raise ConfigError(f"threshold {f.name} is on/off, got {v!r}")
            elif (
                v is not None
                and v is not False
                and (
                    isinstance(v, bool)
                    or not isinstance(v, int | float)
                    or not math.isfinite(v)
                    or v < 0
                )
            ):
                raise ConfigError(
                    f"threshold {f.name} must be a finite number >= 0 or off, got {v!r}"
                )

    def merged(self, over: Thresholds) -> Thresholds:
        """``over`` on top of ``self``: its set fields win."""
        changes = {
            f.name: getattr(over, f.name)
            for f in dataclasses.fields(over)
            if getattr(over, f.name) is not None and f.name != "payload"
        }
        gates = {g.metric: g for g in (*self.payload, *over.payload)}
        return dataclasses.replace(self, **changes, payload=tuple(gates.values()))

    def active(self) -> dict[str, Any]:
        """Checks that are on, with their values."""
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) not in (None, False) and f.name != "payload"
        }
        gates = [g.describe() for g in self.payload if g.op != "off"]
        return {**out, "payload": gates} if gates else out

    @classmethod
    def parse(cls, items: list[str]) -> Thresholds:
        """``name=value`` strings (``off``/``on`` too), e.g. from the CLI."""
        kw: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(cls)} - {"payload"}
        gates = []
        for item in items:
            if item.startswith("payload."):
                gates.append(PayloadGate.parse(item))
                continue
            name, sep, raw = item.partition("=")
            if not sep or name not in names:
                raise ConfigError(
                    f"bad threshold {item!r}: expected NAME=VALUE with NAME one of "
                    f"{', '.join(sorted(names))}, or payload.NAME.METRIC<=VALUE"
                )
            if raw in ("off", "false"):
                kw[name] = False
            elif raw in ("on", "true"):
                kw[name] = True
            else:
                try:
                    kw[name] = float(raw)
                except ValueError:
                    raise ConfigError(f"threshold {name}: {raw!r} is not a number") from None
        return cls(**kw, payload=tuple(gates))


BOOL_CHECKS = frozenset({"not_starved", "isolation", "cgroup_weights"})
#: Checks where ``on`` (True) means "the default for this run".
AUTO_CHECKS = frozenset({"max_runnable_wait_ms"})
TIMING_MAX = (
    "max_gap_ms",
    "max_wake_p99_us",
    "max_runnable_wait_ms",
    "max_idle_waiting_ms",
    "max_rq_clock_lag_ms",
)
TIMING_MIN = ("min_work_rate", "min_iteration_rate")

#: ktstr's defaults: progress and isolation on, gaps up to 2 s, spread 15 %;
#: the monitor's checks on, over 5 consecutive samples; sched_ext's watchdog
#: shortened to 5 s.
DEFAULTS = Thresholds(
    not_starved=True,
    isolation=True,
    max_gap_ms=2000.0,
    max_spread_pct=15.0,
    min_share_ratio=0.6,
    max_imbalance=4.0,
    max_local_dsq=50.0,
    max_rq_clock_lag_ms=1000.0,
    max_runnable_wait_ms=True,
    max_idle_waiting_ms=100.0,
    monitor_sustain=5.0,
    sched_watchdog_s=5.0,
    max_bandwidth_pct=10.0,
)

#: Under a sched_ext scheduler cpu.max binds only if the scheduler implements
#: it (``ops.cgroup_set_bandwidth``); a definition that does turns it back on.
SCHED_EXT_DEFAULTS = Thresholds(max_bandwidth_pct=False)


def defaults_for(sched_ext: bool) -> Thresholds:
    """ktstr's defaults for a run under EEVDF or under a sched_ext scheduler."""
    return DEFAULTS.merged(SCHED_EXT_DEFAULTS) if sched_ext else DEFAULTS


def merge(*layers: Thresholds | None) -> Thresholds:
    """defaults -> scheduler -> test (-> command line): the last set wins."""
    out = Thresholds()
    for layer in layers:
        if layer is not None:
            out = out.merged(layer)
    return out


@dataclass(frozen=True, slots=True)
class Scale:
    """How much timing thresholds stretch on this host, and why."""

    factor: float = 1.0
    reason: str = ""


def timing_scale(tcg: bool, vcpus: int, host_cpus: int) -> Scale:
    factor, why = 1.0, []
    if tcg:
        factor *= TCG_TIMING_FACTOR
        why.append(f"TCG x{TCG_TIMING_FACTOR:g}")
    if host_cpus > 0 and vcpus > host_cpus:
        factor *= vcpus / host_cpus
        why.append(f"{vcpus} vCPUs on {host_cpus} host CPUs x{vcpus / host_cpus:.2g}")
    return Scale(factor, ", ".join(why))


def scaled(t: Thresholds, scale: Scale) -> Thresholds:
    """Timing thresholds widened by ``scale`` (maxima up, minima down)."""
    if scale.factor == 1.0:
        return t
    changes: dict[str, Any] = {}
    for name in TIMING_MAX:
        v = getattr(t, name)
        if v not in (None, False, True):
            changes[name] = float(v) * scale.factor
    for name in TIMING_MIN:
        v = getattr(t, name)
        if v not in (None, False):
            changes[name] = float(v) / scale.factor
    gates = []
    for g in t.payload:
        how, value = time_like(g.key), g.value
        if (how, g.op) == ("max", "<="):
            value *= scale.factor
        elif (how, g.op) == ("min", ">="):
            value /= scale.factor
        gates.append(PayloadGate(g.metric, g.op, value))
    return dataclasses.replace(t, **changes, payload=tuple(gates))
