"""Pure: what the BPF verifier spent on each program of the scheduler under
test, from the agent's attach report, and the table ``ktstr verifier`` prints.

The agent reads each new program's ``bpf_prog_info`` at attach
(``guest/bpfprogs.py``); the list arrives in the free-form ``detail`` of a
Lifecycle frame, so every entry is checked here and malformed ones dropped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ktstr.protocol.evidence import Evidence

MAX_PROGRAMS = 256
#: The verifier gives up on a program after this many instructions
#: (BPF_COMPLEXITY_LIMIT_INSNS).
COMPLEXITY_LIMIT = 1_000_000


@dataclass(frozen=True, slots=True)
class Program:
    name: str
    type: str
    verified_insns: int
    xlated_bytes: int
    jited_bytes: int
    loaded_at_ms: float
    #: Its verification and load (until the next program's load began).
    load_ms: float | None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 else None


def _ms(v: Any) -> float | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
    return float(v) if ok else None


def _program(d: Any) -> Program | None:
    if not isinstance(d, dict):
        return None
    name, ptype = d.get("name"), d.get("type")
    ints = [_int(d.get(k)) for k in ("verified_insns", "xlated_bytes", "jited_bytes")]
    at = _ms(d.get("loaded_at_ms"))
    load = d.get("load_ms")
    if not isinstance(name, str) or not isinstance(ptype, str) or None in ints or at is None:
        return None
    if load is not None and _ms(load) is None:
        return None
    v, x, j = (i or 0 for i in ints)
    return Program(name[:32], ptype[:20], v, x, j, at, _ms(load))


def programs(ev: Evidence) -> tuple[Program, ...]:
    """The scheduler's programs from its (last) attach report."""
    found: Any = None
    for _, lc in ev.lifecycle:
        if lc.phase == "scheduler_attached" and isinstance(lc.detail, dict):
            found = lc.detail.get("programs")
    if not isinstance(found, list):
        return ()
    out = (_program(d) for d in found[:MAX_PROGRAMS])
    return tuple(p for p in out if p is not None)


def as_json(progs: tuple[Program, ...]) -> list[dict[str, Any]]:
    return [asdict(p) for p in progs]


def summary(progs: tuple[Program, ...]) -> str:
    """One line for the report."""
    if not progs:
        return ""
    total = sum(p.verified_insns for p in progs)
    worst = max(progs, key=lambda p: p.verified_insns)
    took = sum(p.load_ms or 0.0 for p in progs)
    return (
        f"verifier: {len(progs)} programs, {total} insns verified (most: {worst.name} "
        f"{worst.verified_insns}, {100 * worst.verified_insns / COMPLEXITY_LIMIT:.1f}% of the "
        f"limit); loading took {took:.0f}ms"
    )


def _labelled(progs: tuple[Program, ...]) -> dict[str, Program]:
    """Programs by name; a repeated (truncated) name gets ``#2``, ``#3``."""
    out: dict[str, Program] = {}
    for p in progs:
        label, n = p.name, 1
        while label in out:
            n += 1
            label = f"{p.name}#{n}"
        out[label] = p
    return out


def table(cells: dict[str, tuple[Program, ...]]) -> list[str]:
    """Programs x kernels: verified instructions (and load ms) per cell."""
    kernels = list(cells)
    by = {k: _labelled(v) for k, v in cells.items()}
    names: list[str] = []
    for progs in by.values():
        names += [n for n in progs if n not in names]
    width = max([len(n) for n in names] + [7])
    head = f"{'program':{width}}" + "".join(f"  {k:>22}" for k in kernels)
    lines = [head, "-" * len(head)]
    for n in names:
        row = f"{n:{width}}"
        for k in kernels:
            p = by[k].get(n)
            if p is None:
                row += f"  {'-':>22}"
            else:
                ms = f"{p.load_ms:.0f}ms" if p.load_ms is not None else "?"
                row += f"  {f'{p.verified_insns} insns, {ms}':>22}"
        lines.append(row)
    totals = "".join(f"  {f'{sum(p.verified_insns for p in cells[k])} insns':>22}" for k in kernels)
    lines.append(f"{'total':{width}}{totals}")
    return lines
