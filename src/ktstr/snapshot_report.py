"""``ktstr snapshot show``: a snapshot as a scheduler developer reads it.

The summary: what froze the guest and when, sched_ext's state and exit,
each CPU's current task and local DSQ, the global and user DSQs with their
tasks, and one line per BPF map. ``--map NAME`` prints one map as a table
(one row per entry, or per CPU for per-CPU maps); ``--cpu N`` narrows the
CPUs, the DSQ tasks queued on that CPU and the per-CPU values to one CPU.
"""

from __future__ import annotations

import json
from typing import Any

from ktstr.evaluate.snapshots import BpfMap, Snapshot

#: Tasks named per DSQ line, entries and variables per map.
TASKS_SHOWN = 8
ROWS_SHOWN = 64
CELL = 40


def render(snap: Snapshot, map_name: str | None = None, cpu: int | None = None) -> str:
    if map_name is not None:
        return "\n".join(_map_table(snap.map(map_name), cpu))
    d = snap.doc
    lines = [
        f"snapshot {snap.name} ({snap.trigger}) at +{d.get('at_s', 0):.3f}s, workload "
        f"{d.get('workload_s', 0):.3f}s; guest frozen {1000 * d.get('frozen_s', 0):.0f} ms; "
        f"kernel {d.get('kernel', '?')}"
    ]
    if d.get("late"):
        lines.append(f"note: {d['late']}")
    if d.get("error"):
        lines.append(f"error: {d['error']}")
    lines += [f"not read: {part}: {why}" for part, why in (d.get("errors") or {}).items()]
    lines += _scx(snap.scx)
    lines += _cpus(snap, cpu)
    lines += _dsqs(snap, cpu)
    lines.append(f"maps ({len(snap.maps)}):")
    lines += [f"  {_map_line(m, cpu)}" for m in snap.maps]
    return "\n".join(lines)


def _scx(scx: dict[str, Any]) -> list[str]:
    if not scx:
        return []
    line = (
        f"sched_ext: {scx.get('ops') or '-'} {scx.get('enable_state', '?')}, "
        f"bypass depth {scx.get('bypass_depth')}"
    )
    if scx.get("aborting"):
        line += ", aborting"
    out = [line]
    if scx.get("exit_kind"):
        why = ": ".join(x for x in (scx.get("exit_reason"), scx.get("exit_msg")) if x)
        out.append(f"exit: {scx['exit_kind']} {why}".rstrip())
    return out


def _task(t: dict[str, Any]) -> str:
    wait = t.get("runnable_ms")
    return f"{t.get('comm')}[{t.get('pid')}]" + (f" {wait:g}ms" if wait is not None else "")


def _tasks(tasks: list[dict[str, Any]]) -> str:
    shown = ", ".join(_task(t) for t in tasks[:TASKS_SHOWN])
    return shown + (f", ... {len(tasks) - TASKS_SHOWN} more" if len(tasks) > TASKS_SHOWN else "")


def _cpus(snap: Snapshot, only: int | None) -> list[str]:
    rows = [c for c in snap.cpus if only is None or c.get("cpu") == only]
    if not rows:
        return []
    out = ["cpu  current                  nr_running  local DSQ (waited)"]
    for c in rows:
        curr = "idle" if c.get("idle") else f"{c['curr'].get('comm')}[{c['curr'].get('pid')}]"
        local = c.get("local_dsq") or {}
        queued = f"{local.get('nr', 0)}" + (
            f": {_tasks(local.get('tasks') or [])}" if local.get("tasks") else ""
        )
        out.append(f"{c.get('cpu'):3}  {curr:24} {c.get('nr_running', '-')!s:11} {queued}")
    return out


def _dsqs(snap: Snapshot, only: int | None) -> list[str]:
    out = []
    for d in snap.doc.get("dsqs") or []:
        tasks = list(d.get("tasks") or [])
        if only is not None:
            tasks = [t for t in tasks if t.get("cpu") in (None, only)]
        name = _dsq_name(str(d["id"]))
        line = f"DSQ {d['id']}{name}: {d.get('nr', 0)} queued"
        out.append(line + (f": {_tasks(tasks)}" if tasks else ""))
    return out


def _dsq_name(dsq_id: str) -> str:
    value = int(dsq_id, 16)
    if value == 1 << 63 | 1:
        return " (global)"
    return " (builtin)" if value & 1 << 63 else ""


def _map_line(m: BpfMap, cpu: int | None) -> str:
    head = f"{m.name:16} {m.type:14}"
    if m.doc.get("error"):
        return f"{head} error: {m.doc['error']}"
    if m.vars:
        sec = m.doc.get("section") or "arena globals"
        return f"{head} {sec}: " + _clip(_flat(m.vars), 200)
    entries = m.entries
    if not entries:
        return f"{head} empty" if "entries" in m.doc else head
    more = " (truncated)" if m.doc.get("truncated") else ""
    return f"{head} {len(entries)} entries{more}; first: " + _clip(_entry(entries[0], cpu), 140)


def _entry(e: dict[str, Any], cpu: int | None) -> str:
    if "cpus" in e:
        values = e["cpus"] if cpu is None else e["cpus"][cpu : cpu + 1]
        return f"{e['key']} -> {_clip(json.dumps(values), 120)}"
    if "map" in e:
        inner = e["map"]
        return f"{e['key']} -> map {inner.get('name')} ({len(inner.get('entries') or [])})"
    return f"{_short(e.get('key'))} -> {_short(e.get('value'))}"


def _map_table(m: BpfMap, cpu: int | None) -> list[str]:
    out = [f"map {m.name} ({m.type}, max {m.doc.get('max_entries')} entries)"]
    if m.vars:
        out += [f"  {k} = {_short(v, 200)}" for k, v in _flat(m.vars).items()][: ROWS_SHOWN * 4]
        return out
    rows: list[tuple[str, Any]] = []
    for e in m.entries:
        if "cpus" in e:
            for c, v in enumerate(e["cpus"]):
                if cpu is None or c == cpu:
                    rows.append((f"{e['key']} cpu{c}", v))
        elif "map" in e:
            rows.append((str(e["key"]), {"map": e["map"].get("name"), **_inner(e["map"])}))
        else:
            rows.append((_short(e.get("key")), e.get("value")))
    out += _table(rows[:ROWS_SHOWN])
    if len(rows) > ROWS_SHOWN:
        out.append(f"  ... {len(rows) - ROWS_SHOWN} more rows")
    return out


def _inner(m: dict[str, Any]) -> dict[str, Any]:
    entries = m.get("entries") or []
    return {
        "type": m.get("type"),
        "entries": _short(entries if len(entries) < 16 else len(entries)),
    }


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    """Rows of dict values as columns (one level flattened), else key -> value."""
    if rows and all(isinstance(v, dict) for _, v in rows):
        cols: list[str] = []
        for _, v in rows:
            cols += [k for k in _flat(v) if k not in cols]
        width = max(len(k) for k, _ in rows)
        head = f"  {'key':{width}}  " + "  ".join(c[:CELL] for c in cols)
        body = [
            f"  {k:{width}}  "
            + "  ".join(_short(_flat(v).get(c, ""), CELL).ljust(len(c[:CELL])) for c in cols)
            for k, v in rows
        ]
        return [head, *body]
    return [f"  {k} -> {_short(v, 160)}" for k, v in rows]


def _flat(v: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, x in v.items():
        if isinstance(x, dict) and not prefix:
            out.update(_flat(x, f"{k}."))
        else:
            out[prefix + k] = x
    return out


def _short(v: Any, n: int = 60) -> str:
    return _clip(v if isinstance(v, str) else json.dumps(v), n)


def _clip(v: Any, n: int) -> str:
    text = v if isinstance(v, str) else json.dumps(v)
    return text if len(text) <= n else text[: n - 3] + "..."
