"""A/B comparison of results, and pass rates of repeated runs (SciPy).

Runs are paired into cases by test and topology; what differs between the
sides (scheduler, kernel) is what is being compared. For every metric both
sides have at least two runs of, the report gives each side's median, the
relative change of B against A with a 95 % percentile-bootstrap interval,
Welch's t-test p-value, the p-value after Benjamini-Hochberg correction over
all metrics compared, and a verdict: a change is significant only when the
adjusted p is below 0.05 and the interval excludes zero.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
import statistics
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ALPHA = 0.05
Z95 = 1.959964  # two-sided 95 %
Doc = dict[str, Any]


def case_key(doc: Doc) -> tuple[str, str]:
    test = str(doc.get("scenario") or doc.get("test"))
    return test, str(doc.get("topology"))


def side_label(docs: list[Doc]) -> str:
    """What a side ran: its scheduler(s) and kernel(s)."""
    scheds = sorted({(d.get("scheduler") or {}).get("name", "EEVDF") for d in docs})
    kernels = sorted({(d.get("kernel") or {}).get("version", "?") for d in docs})
    return f"{'/'.join(scheds)} on Linux {'/'.join(kernels)}"


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _dicts(v: Any) -> list[dict[str, Any]]:
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def metrics(doc: Doc) -> dict[str, float]:
    """The numbers of one run that a comparison looks at (a damaged file
    yields fewer of them, never an error)."""
    try:
        return _metrics(doc)
    except (TypeError, AttributeError, ValueError):
        return {}


def _metrics(doc: Doc) -> dict[str, float]:
    out: dict[str, float] = {}
    raw: Any = _dict(doc.get("durations")).get("workload_s")
    secs = float(raw) if _num(raw) else 0.0
    for c in _dicts(_dict(doc.get("stats")).get("cgroups")):
        name = c.get("name", "?")
        if secs > 0 and _num(c.get("work_units")):
            out[f"{name}.work_rate"] = float(c["work_units"]) / secs
        for key in ("wake_p50_us", "wake_p99_us", "max_gap_ms", "spread_pct", "migrations"):
            if _num(c.get(key)):
                out[f"{name}.{key}"] = float(c[key])
    mon = _dict(doc.get("monitor"))
    for key in ("max_imbalance", "max_runnable_wait_ms", "idle_while_waiting_ms"):
        if _num(mon.get(key)):
            out[f"monitor.{key}"] = float(mon[key])
    for p in _dicts(doc.get("payloads")):
        values = _dict(p.get("metrics"))
        for k, v in values.items():
            if _num(v):
                out[f"payload.{p.get('name')}.{k}"] = float(v)
    return {k: v for k, v in out.items() if math.isfinite(v)}


_HIGHER = re.compile(r"(work_rate|bogo_ops(_per_s|_per_cpu_s)?|ops_per_s|iterations)$")
_LOWER = re.compile(r"(_us|_ms|_s|_pct|migrations|max_imbalance|usecs_per_op)$")


def better(metric: str) -> str:
    """Which way is better: "higher", "lower", or "" (no judgment)."""
    if _HIGHER.search(metric):
        return "higher"
    if _LOWER.search(metric):
        return "lower"
    return ""


@dataclass(frozen=True, slots=True)
class Change:
    case: str
    metric: str
    n_a: int
    n_b: int
    median_a: float
    median_b: float
    change: float  # relative, (B - A) / A; absolute B - A when A's median is 0 or a _pct
    ci: tuple[float, float]
    p: float
    p_adj: float
    better: str
    verdict: str  # "better", "worse", "changed", "no significant change"
    relative: bool = True
    #: The A/A noise of this metric: its run-to-run coefficient of variation
    #: (its standard deviation where it is absolute), if calibrated.
    noise: float | None = None

    @property
    def floor(self) -> float | None:
        """The change A against A shows at this comparison's N (95 %)."""
        if self.noise is None:
            return None
        return Z95 * math.sqrt(1 / self.n_a + 1 / self.n_b) * self.noise


def _relative(a: Any, b: Any, axis: int = -1) -> Any:
    import numpy as np

    ma, mb = np.median(a, axis=axis), np.median(b, axis=axis)
    return (mb - ma) / np.where(ma == 0, np.nan, np.abs(ma))


def _absolute(a: Any, b: Any, axis: int = -1) -> Any:
    import numpy as np

    return np.median(b, axis=axis) - np.median(a, axis=axis)


def _one(case: str, metric: str, a: list[float], b: list[float]) -> Change:
    """One metric: medians, the change with its bootstrap interval (relative,
    or absolute where A's median is 0 or the metric is a percentage), and
    Welch's p-value."""
    import numpy as np
    from scipy import stats

    ma, mb = statistics.median(a), statistics.median(b)
    # A share in percent is compared in points: 0.02 % against 0.45 % of
    # spread is no change worth a verdict, yet relative it was +2243 %, 30
    # times the A/A noise (scx_simple against itself, 1 s runs).
    relative = ma != 0 and not metric.endswith("_pct")
    change = (mb - ma) / abs(ma) if relative else mb - ma
    with warnings.catch_warnings():  # degenerate samples are handled below
        warnings.simplefilter("ignore")
        boot = stats.bootstrap((np.array(a), np.array(b)), _relative if relative else _absolute,
                               vectorized=True, method="percentile", n_resamples=2000,
                               random_state=0)  # fmt: skip
        if statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0:
            p = 1.0 if ma == mb else _separated_p(len(a), len(b))
        else:
            p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    lo, hi = (float(x) for x in boot.confidence_interval)
    if math.isnan(lo) or math.isnan(hi):  # resamples with a zero baseline: no interval
        lo, hi = -math.inf, math.inf
    p = 1.0 if math.isnan(p) else p
    return Change(case, metric, len(a), len(b), ma, mb, change, (lo, hi), p, p, better(metric),
                  "", relative)  # fmt: skip


def _separated_p(n_a: int, n_b: int) -> float:
    """Two sides constant at different values: Welch's t has no variance to
    work with, so p is the exact two-sided permutation p of the sides being
    wholly apart: 2 of the C(n_a + n_b, n_a) ways to split the runs. Two runs
    a side of an integer metric ([2, 2] against [3, 3]) give 0.33, not 0;
    six a side give 0.002."""
    return min(1.0, 2 / math.comb(n_a + n_b, n_a))


Noise = dict[str, dict[str, float]]  # case -> metric -> A/A noise


def compare(a_docs: list[Doc], b_docs: list[Doc], noise: Noise | None = None) -> list[Change]:
    """Every metric of every case both sides ran at least twice; with
    ``noise`` (from an A/A calibration) a change inside the noise is never
    significant."""
    from scipy import stats

    def group(docs: list[Doc]) -> dict[tuple[str, str], list[dict[str, float]]]:
        out: dict[tuple[str, str], list[dict[str, float]]] = {}
        for d in docs:
            out.setdefault(case_key(d), []).append(metrics(d))
        return out

    ga, gb = group(a_docs), group(b_docs)
    changes = []
    for key in sorted(set(ga) & set(gb)):
        names = sorted(set().union(*ga[key]) & set().union(*gb[key]))
        for m in names:
            a = [r[m] for r in ga[key] if m in r]
            b = [r[m] for r in gb[key] if m in r]
            if not any(a) and not any(b):
                continue  # zero in every run on both sides: nothing to compare
            if len(a) >= 2 and len(b) >= 2:
                changes.append(_one(f"{key[0]} [{key[1]}]", m, a, b))
    if not changes:
        return []
    adj = stats.false_discovery_control([c.p for c in changes], method="bh")
    noise = noise or {}
    changes = [dataclasses.replace(c, noise=noise.get(c.case, {}).get(c.metric)) for c in changes]
    return [_verdict(c, float(p)) for c, p in zip(changes, adj, strict=True)]


def calibrate(a1: list[Doc], a2: list[Doc]) -> dict[str, dict[str, dict[str, float | None]]]:
    """A against A: per case and metric, its noise (the runs' coefficient of
    variation, or standard deviation where the mean is 0), the change A/A
    itself showed, and the smallest change a comparison of 5 or 10 runs a
    side detects (two-sided 5 %, power 80 %, normal approximation)."""
    from scipy import stats

    z = float(stats.norm.ppf(0.975) + stats.norm.ppf(0.8))
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    pooled: dict[tuple[str, str], list[float]] = {}
    for d in [*a1, *a2]:
        key = case_key(d)
        for m, v in metrics(d).items():
            pooled.setdefault((f"{key[0]} [{key[1]}]", m), []).append(v)
    for c in compare(a1, a2):
        runs = pooled.get((c.case, c.metric), [])
        mean = statistics.fmean(runs) if runs else 0.0
        sd = statistics.stdev(runs) if len(runs) > 1 else 0.0
        noise = sd / abs(mean) if c.relative and mean else sd
        out.setdefault(c.case, {})[c.metric] = {
            "noise": noise,
            "relative": float(c.relative),
            "aa_change": c.change,
            "mde_n5": z * math.sqrt(2 / 5) * noise,
            "mde_n10": z * math.sqrt(2 / 10) * noise,
            "runs": float(len(runs)),
        }
    return out


def _verdict(c: Change, p_adj: float) -> Change:
    lo, hi = c.ci
    significant = p_adj < ALPHA and not (lo <= 0 <= hi) and not math.isnan(lo)
    if c.floor is not None and abs(c.change) <= c.floor:
        significant = False  # inside what A against A itself shows at this N
    if not significant:
        v = "no significant change"
    elif not c.better:
        v = "changed"
    else:
        up = c.change > 0
        v = "better" if up == (c.better == "higher") else "worse"
    return dataclasses.replace(c, p_adj=p_adj, verdict=v)


def gate_failures(changes: Iterable[Change], gates: list[str]) -> list[str]:
    """``METRIC:+10%`` (glob on metric names): a significant change that is
    worse than 10 % fails."""
    out = []
    for g in gates:
        pattern, _, limit = g.rpartition(":")
        pct = float(limit.strip().lstrip("+").rstrip("%")) / 100
        for c in changes:
            hit = c.verdict == "worse" and fnmatch.fnmatch(c.metric, pattern or "*")
            if hit and (not c.relative or abs(c.change) > pct):
                out.append(f"{c.case} {c.metric}: {c.change:+.1%} (gate {g})")
    return out


def table(changes: list[Change]) -> list[str]:
    lines = []
    case = ""
    for c in changes:
        if c.case != case:
            case = c.case
            lines += ["", case, f"  {'metric':30} {'A':>10} {'B':>10} {'change [95% CI]':>26} "
                                f"{'p adj':>7}  verdict"]  # fmt: skip
        if math.isinf(c.ci[0]):
            ci = f"{c.change:+.1%} [?]" if c.relative else f"{c.change:+.4g} abs [?]"
        elif c.relative:
            ci = f"{c.change:+.1%} [{c.ci[0]:+.0%}, {c.ci[1]:+.0%}]"
        else:
            ci = f"{c.change:+.4g} abs [{c.ci[0]:+.3g}, {c.ci[1]:+.3g}]"
        units = ""
        if c.noise:
            units = f" ({c.change / c.noise:+.1f} x noise)"
        lines.append(f"  {c.metric[:30]:30} {c.median_a:10.4g} {c.median_b:10.4g} {ci:>26} "
                     f"{c.p_adj:7.3f}  {c.verdict}{units}")  # fmt: skip
    return lines
