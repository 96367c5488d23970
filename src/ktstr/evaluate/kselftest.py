"""Pure: the sched_ext selftests' output -> one result per selftest. Fails closed.

The guest sends each test's block (``selftest:NAME``) and, per runner
process, a summary (``selftest-run``: exit status, timeout, the test it was
in when it ended, the output's tail with the ``RESULTS:`` counts). The host
trusts none of it as given: a block's status comes from its own result line
(``ok N NAME #``, ``ok N NAME # SKIP``, ``not ok N NAME #``), the runner's
counts must match the blocks seen, and every test the host expected (from
``runner -l`` where the runner has it) needs a block. A runner that died or
timed out fails the test it was in; expected tests without a block fail as
"no result".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ktstr.protocol.messages import TestResult

_RESULT = re.compile(r"^(ok|not ok) \d+ (\S+) #\s*(SKIP)?(.*)$")
_COUNT = re.compile(r"^(PASSED|SKIPPED|FAILED):\s+(\d+)$", re.M)
#: A selftest's name; it becomes a directory, so it starts with a letter or
#: digit (never ``.``/``..``, never the evidence's ``_vm``) and fits 120.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,119}")


@dataclass(frozen=True, slots=True)
class SelftestResult:
    name: str
    status: str  # "pass" | "skip" | "fail"
    message: str  # one line: why it failed or was skipped ("" when it passed)
    output: str  # its block of output (kept for failures)
    duration_s: float = 0.0


def _str(data: Any, key: str) -> str:
    v = data.get(key) if isinstance(data, dict) else None
    return v if isinstance(v, str) else ""


def _num(data: Any, key: str) -> float:
    v = data.get(key) if isinstance(data, dict) else None
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0


def parse_block(name: str, block: str, duration: float = 0.0) -> SelftestResult:
    """One test's block: its status from its own result line."""
    lines = block.splitlines()
    found = [m for m in (_RESULT.match(ln) for ln in lines) if m and m.group(2) == name]
    if len(found) != 1:
        why = "no result line" if not found else f"{len(found)} result lines"
        return SelftestResult(name, "fail", f"{why} in its output", block, duration)
    m = found[0]
    output = "\n".join(ln for ln in lines if not _RESULT.match(ln))
    headers = ("TEST:", "DESCRIPTION:", "OUTPUT:")
    body = [ln for ln in output.splitlines() if ln.strip() and not ln.startswith(headers)]
    if m.group(3):
        why = m.group(4).strip() or (body[-1].strip() if body else "skipped by the test")
        why = why.removeprefix("SKIP:").strip()
        return SelftestResult(name, "skip", why[:300], output, duration)
    if m.group(1) == "not ok":
        why = next((ln.strip() for ln in body if "ERR" in ln or "fail" in ln.lower()), "")
        return SelftestResult(name, "fail", (why or "not ok")[:300], output, duration)
    return SelftestResult(name, "pass", "", "", duration)


def counts(tail: str) -> dict[str, int] | None:
    """The runner's own ``RESULTS:`` counts, if it got that far."""
    found = dict(_COUNT.findall(tail))
    if set(found) != {"PASSED", "SKIPPED", "FAILED"}:
        return None
    return {k: int(v) for k, v in found.items()}


def judge(results: list[TestResult], expected: list[str] | None) -> list[SelftestResult]:
    """Every selftest's result, in order; damage and gaps are failures."""
    out: dict[str, SelftestResult] = {}
    problems: list[SelftestResult] = []
    for r in results:
        if r.name.startswith("selftest:"):
            name = r.name.removeprefix("selftest:")
            if not NAME_RE.fullmatch(name):
                why = f"a block for an unnamed test {name[:40]!r}"
                problems.append(SelftestResult("(runner)", "fail", why, ""))
                continue
            res = parse_block(name, _str(r.data, "block"), _num(r.data, "duration_s"))
            if name in out and out[name] != res:
                res = SelftestResult(name, "fail", "two different results", res.output)
            out[name] = res
    runs = [r for r in results if r.name == "selftest-run"]
    if not runs:
        problems.append(SelftestResult("(runner)", "fail", "the runner never reported its end", ""))
    for run in runs:
        problems += _run_problems(run.data, out)
    for name in expected or ():
        if name not in out:
            out[name] = SelftestResult(name, "fail", "no result: the runner never ran it", "")
    return [*out.values(), *problems]


def _run_problems(data: Any, out: dict[str, SelftestResult]) -> list[SelftestResult]:
    unfinished = _str(data, "unfinished")
    tail = _str(data, "tail")
    if data.get("timed_out") if isinstance(data, dict) else False:
        why = f"the runner timed out{' in this test' if unfinished else ''}"
    elif unfinished:
        why = f"the runner died in this test (exit status {data.get('exit_code')})"
    else:
        why = ""
    if why:
        name = unfinished if NAME_RE.fullmatch(unfinished) else "(runner)"
        out[name] = SelftestResult(name, "fail", why, tail)
        return []
    c = counts(tail)
    if c is None:
        return [SelftestResult("(runner)", "fail", "the runner ended without its RESULTS", tail)]
    seen = {"PASSED": 0, "SKIPPED": 0, "FAILED": 0}
    filt = _str(data, "filter")
    for r in out.values():
        if not filt or filt in r.name:
            seen[{"pass": "PASSED", "skip": "SKIPPED", "fail": "FAILED"}[r.status]] += 1
    if seen != c:
        return [
            SelftestResult(
                "(runner)", "fail", f"the runner counted {c}, its blocks say {seen}", tail
            )
        ]
    return []
