"""Pure: payload output -> metrics, and the findings on payload runs.

Each parser reads one tool's documented, structured output and nothing
else: stress-ng's YAML report (``--yaml``), cyclictest's JSON report
(``--json``), and the fixed summary lines of hackbench and ``perf bench
sched``. A parser either returns every metric it promises or raises
``ParseError`` naming what was missing: never a silent zero. The text comes
from the guest, so parsers bound what they read and accept only finite
numbers.

Custom commands name a parser function (``module:function``). The guest
chooses the names in test bodies, so the host calls only functions
registered with ``@ktstr.payload_parser`` in its own process.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ktstr.protocol.messages import PayloadMetrics
from ktstr.spec.checks import PayloadGate, time_like
from ktstr.spec.ledger import ExpectedPayload
from ktstr.spec.payload import PayloadKind, Until, parser_ref

Metrics = dict[str, float]
Parser = Callable[[str, str], Mapping[str, Any]]
MAX_METRICS = 256
METRIC_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_NUM = r"([0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
#: Lines of output kept in a finding.
TAIL_LINES = 15

#: ``@ktstr.payload_parser`` functions, by ``module:qualname``.
PARSERS: dict[str, Parser] = {}


class ParseError(ValueError):
    """Output that does not hold what its parser promises."""


def payload_parser(fn: Parser) -> Parser:
    """Allow ``fn`` as a custom payload parser: ``@ktstr.payload_parser``.
    It is called on the host with the payload's (stdout, stderr) and returns
    ``{metric: number}``; raising means the output held no metrics."""
    PARSERS[f"{fn.__module__}:{fn.__qualname__}"] = fn
    PARSERS[parser_ref(fn)] = fn
    return fn


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ParseError(f"{what}: {text[:40]!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > 1e15:
        raise ParseError(f"{what}: {text[:40]} is not a usable number")
    return value


def _one(pattern: str, text: str, what: str) -> float:
    found = re.findall(pattern, text, re.MULTILINE)
    if len(found) != 1:
        raise ParseError(f"expected one {what!r} line, found {len(found)}")
    return _number(found[0], what)


# -- the tools' parsers ------------------------------------------------------

#: stress-ng YAML keys -> our metric names (per stressor).
STRESS_KEYS = {
    "bogo-ops": "bogo_ops",
    "bogo-ops-per-second-real-time": "bogo_ops_per_s",
    "bogo-ops-per-second-usr-sys-time": "bogo_ops_per_cpu_s",
    "wall-clock-time": "wall_s",
    "user-time": "user_s",
    "system-time": "system_s",
}
_STRESSOR = re.compile(r"    - stressor: ([a-z0-9][a-z0-9-]{0,63})")
_KEY = re.compile(r"      ([a-z0-9-]{1,64}): (\S{1,64})")


def parse_stress_ng(report: str) -> Metrics:
    """The ``metrics:`` list of stress-ng's YAML report: per stressor
    ``NAME.bogo_ops``, ``NAME.bogo_ops_per_s`` (real time),
    ``NAME.bogo_ops_per_cpu_s`` (usr+sys time), ``NAME.wall_s``..."""
    lines = report.splitlines()
    try:
        start = lines.index("metrics:")
    except ValueError:
        raise ParseError("no 'metrics:' section in the YAML report") from None
    out: Metrics = {}
    stressor = ""
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        if not line.startswith(" "):
            break  # the next top-level section, or the document end
        m = _STRESSOR.fullmatch(line)
        if m:
            stressor = m.group(1)
            if any(k.startswith(stressor + ".") for k in out):
                raise ParseError(f"stressor {stressor} listed twice")
            continue
        k = _KEY.fullmatch(line)
        if k is None or not stressor:
            raise ParseError(f"unexpected line in metrics: {line[:80]!r}")
        name = STRESS_KEYS.get(k.group(1))
        if name:
            out[f"{stressor}.{name}"] = _number(k.group(2), f"{stressor} {k.group(1)}")
    stressors = {key.split(".")[0] for key in out}
    if not stressors:
        raise ParseError("the YAML report lists no stressor metrics")
    for s in stressors:
        missing = [v for v in ("bogo_ops", "bogo_ops_per_s") if f"{s}.{v}" not in out]
        if missing:
            raise ParseError(f"stressor {s}: no {', '.join(missing)}")
    return out


def parse_hackbench(stdout: str) -> Metrics:
    """``Time: 1.234`` -> ``time_s``."""
    return {"time_s": _one(rf"^Time: {_NUM}$", stdout, "Time:")}


def parse_perf_messaging(stdout: str) -> Metrics:
    """``Total time: 0.143 [sec]`` -> ``time_s``."""
    return {"time_s": _one(rf"^\s*Total time: {_NUM} \[sec\]$", stdout, "Total time:")}


def parse_perf_pipe(stdout: str) -> Metrics:
    """``Total time``, ``usecs/op`` and ``ops/sec`` lines."""
    return {
        "time_s": _one(rf"^\s*Total time: {_NUM} \[sec\]$", stdout, "Total time:"),
        "usecs_per_op": _one(rf"^\s*{_NUM} usecs/op$", stdout, "usecs/op"),
        "ops_per_s": _one(rf"^\s*{_NUM} ops/sec$", stdout, "ops/sec"),
    }


def _field(thread: Any, key: str, where: str) -> float:
    v = thread.get(key) if isinstance(thread, dict) else None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ParseError(f"{where}: no numeric {key!r}")
    return _number(repr(v), f"{where} {key}")


def parse_cyclictest(report: str) -> Metrics:
    """cyclictest's JSON report: ``tN.min_us``/``avg_us``/``max_us``/``cycles``
    per thread, and overall ``min_us``, ``avg_us`` (cycle-weighted),
    ``max_us``, ``cycles``."""
    try:
        doc = json.loads(report, parse_constant=lambda c: None)
    except (ValueError, RecursionError) as exc:
        raise ParseError(f"the JSON report does not parse: {str(exc)[:120]}") from None
    threads = doc.get("thread") if isinstance(doc, dict) else None
    if not isinstance(threads, dict) or not threads:
        raise ParseError("the JSON report has no threads")
    out: Metrics = {}
    total = weighted = 0.0
    lo, hi = math.inf, -math.inf
    for key in sorted(threads, key=lambda k: (len(k), k))[: MAX_METRICS // 4]:
        if not key.isdigit() or len(key) > 4:
            raise ParseError(f"thread id {key[:20]!r} is not a number")
        t = threads[key]
        cycles = _field(t, "cycles", f"thread {key}")
        vals = {k: _field(t, k, f"thread {key}") for k in ("min", "avg", "max")}
        out[f"t{key}.cycles"] = cycles
        for k, v in vals.items():
            out[f"t{key}.{k}_us"] = v
        if cycles > 0:
            total += cycles
            weighted += vals["avg"] * cycles
            lo, hi = min(lo, vals["min"]), max(hi, vals["max"])
    if total <= 0:
        raise ParseError("no thread measured a single cycle")
    out.update(cycles=total, min_us=lo, max_us=hi, avg_us=weighted / total)
    return out


def parse(kind: PayloadKind, msg: PayloadMetrics) -> Metrics:
    if kind is PayloadKind.STRESS_NG:
        return parse_stress_ng(msg.report)
    if kind is PayloadKind.CYCLICTEST:
        return parse_cyclictest(msg.report)
    if kind is PayloadKind.HACKBENCH:
        return parse_hackbench(msg.stdout)
    if kind is PayloadKind.PERF_MESSAGING:
        return parse_perf_messaging(msg.stdout)
    if kind is PayloadKind.PERF_PIPE:
        return parse_perf_pipe(msg.stdout)
    raise ParseError(f"no parser for {kind.value}")


def custom(ref: str, msg: PayloadMetrics) -> Metrics:
    """Call a registered parser; its result is checked like guest data."""
    fn = PARSERS.get(ref)
    if fn is None:
        raise ParseError(f"parser {ref} is not registered: decorate it with @ktstr.payload_parser")
    try:
        got = fn(msg.stdout, msg.stderr)
    except Exception as exc:  # a user's parser on guest output: any failure is a finding
        raise ParseError(f"parser {ref} raised {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(got, Mapping) or len(got) > MAX_METRICS:
        raise ParseError(f"parser {ref} must return a dict of at most {MAX_METRICS} metrics")
    out: Metrics = {}
    for k, v in got.items():
        if not isinstance(k, str) or not METRIC_RE.fullmatch(k):
            raise ParseError(f"parser {ref}: metric name {str(k)[:40]!r} is not [A-Za-z0-9_.-]")
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ParseError(f"parser {ref}: metric {k} is not a number: {v!r:.40}")
        try:
            out[k] = _number(repr(float(v)), f"metric {k}")
        except OverflowError:  # an int too large for a float
            raise ParseError(f"parser {ref}: metric {k} is out of range") from None
    return out


# -- judging one run ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PayloadResult:
    """One payload run as result.json and the report show it."""

    name: str
    kind: str
    cgroup: str
    index: int
    command: tuple[str, ...]
    exit_code: int | None
    ended: str
    duration_s: float
    planned_s: float
    metrics: Metrics = field(default_factory=dict)
    #: Why this run fails ("" = it ran, ended as planned, and parsed).
    problem: str = ""
    check: str = ""
    output_tail: str = ""


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """Its first lines (a usage error says what was wrong there) and its last."""
    all_lines = text.rstrip().splitlines()
    if len(all_lines) <= lines:
        return "\n".join(all_lines)
    return "\n".join([*all_lines[:3], "...", *all_lines[3 - lines :]])


def _problem(exp: ExpectedPayload, msg: PayloadMetrics) -> tuple[str, str]:
    """(check, message) when the run itself went wrong."""
    p = exp.payload
    if msg.ended not in ("exit", "stopped", "never"):
        return "malformed_frame", f"ended {msg.ended[:20]!r} is not exit, stopped or never"
    if msg.error or msg.ended == "never":
        return "payload_failed", f"could not run: {msg.error or 'it never started'}"
    if msg.ended == "stopped" and p.until is Until.EXIT:
        return (
            "payload_incomplete",
            f"did not finish within its cgroup's {exp.planned_s:.1f}s and was killed",
        )
    if msg.exit_code is None:
        return "payload_failed", "no exit status"
    if msg.exit_code < 0:
        how = "after SIGINT" if msg.ended == "stopped" else "on its own"
        return "payload_failed", f"killed by signal {-msg.exit_code} ({how})"
    if msg.exit_code != 0:
        return "payload_failed", f"exited with status {msg.exit_code}"
    return "", ""


def measure(exp: ExpectedPayload, msg: PayloadMetrics) -> PayloadResult:
    """The metrics of one run, or the reason it has none."""
    p = exp.payload
    check, problem = _problem(exp, msg)
    metrics: Metrics = {}
    if not problem:
        try:
            if p.kind is PayloadKind.COMMAND:
                metrics = custom(p.parser, msg) if p.parser else {}
            else:
                metrics = parse(p.kind, msg)
        except ParseError as exc:
            check, problem = "payload_unparsed", f"printed nothing parseable: {exc}"
    shown = msg.stderr if problem and msg.stderr.strip() else msg.stdout
    return PayloadResult(
        name=p.name,
        kind=p.kind.value,
        cgroup=exp.cgroup,
        index=exp.index,
        command=tuple(msg.command),
        exit_code=msg.exit_code,
        ended=msg.ended,
        duration_s=round(msg.duration_s, 3),
        planned_s=round(exp.planned_s, 3),
        metrics=metrics,
        problem=problem,
        check=check,
        output_tail=tail(shown) if problem else "",
    )


def _gate(g: PayloadGate, r: PayloadResult, scaled_by: str) -> tuple[str, str, dict[str, Any]]:
    where = f"payload {r.name}" + (f" #{r.index}" if r.index else "")
    value = r.metrics.get(g.key)
    if value is None:
        have = ", ".join(sorted(r.metrics)[:12]) or "none"
        return "payload_gate", f"{where}: no metric {g.key!r} to check (has: {have})", {}
    bad = value > g.value if g.op == "<=" else value < g.value
    if not bad:
        return "", "", {}
    how = f" (scaled: {scaled_by})" if scaled_by and time_like(g.key) else ""
    return (
        "payload_gate",
        f"{where}: {g.key} = {value:g}, limit {g.op} {g.value:g}{how}",
        {"payload": r.name, "metric": g.key, "value": value, "limit": g.value, "op": g.op},
    )


def _excerpt(output: str) -> str:
    """First and last line of the output, for a one-line finding."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip() and ln.strip() != "..."]
    if not lines:
        return ""
    shown = lines[0][:160] + (f" ... {lines[-1][:160]}" if len(lines) > 1 else "")
    return f" (output: {shown})"


def payload_findings(
    results: tuple[PayloadResult, ...], gates: tuple[PayloadGate, ...], scaled_by: str = ""
) -> list[tuple[str, str, dict[str, Any]]]:
    """(check, message, evidence) of every failing payload run and gate."""
    out = []
    for r in results:
        where = f"payload {r.name}" + (f" #{r.index}" if r.index else "") + f" in {r.cgroup}"
        if r.problem:
            out.append(
                (
                    r.check,
                    f"{where} {r.problem}" + _excerpt(r.output_tail),
                    {"payload": r.name, "command": list(r.command), "tail": r.output_tail},
                )
            )
            continue
        for g in gates:
            if g.op != "off" and g.payload == r.name:
                check, msg, ev = _gate(g, r, scaled_by)
                if check:
                    out.append((check, msg, ev))
    names = {r.name for r in results}
    for g in gates:
        if g.op != "off" and g.payload not in names and results:
            out.append(("payload_gate", f"gate {g.describe()}: no payload {g.payload!r} ran", {}))
    return out
