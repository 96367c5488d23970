"""Reading a snapshot document (``snapshot-NN-name.json``) after the run:
what tests assert on and what ``ktstr snapshot show`` prints. Pure: JSON in,
values out.

    snap = run.snapshots["after"]
    snap.var("nr_enqueued")                 # .bss/.data/.rodata/arena, by name
    snap.var("qa.cpu_ctxs[2].dsp_cnt")      # or a path into one
    snap.map("cpu_ctx_stor").cpu(2)["dsp_cnt"]
    snap.dsq(local=3).tasks                 # [{"pid", "comm", "weight", ...}]
    snap.dsq(0).pids()                      # a user DSQ by id
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = "ktstr.snapshot/1"
#: The kernel keeps 15 characters of a BPF map's name.
MAP_NAME_LEN = 15
_PART = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[([0-9]+)\]")


class SnapshotError(LookupError):
    """What a test asked of a snapshot is not in it (the message says what is)."""


def _hint(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3)
    return f"; did you mean {', '.join(close)}?" if close else f"; it has {', '.join(names[:12])}"


@dataclass(frozen=True, slots=True)
class Dsq:
    id: int
    nr: int
    tasks: list[dict[str, Any]]

    def pids(self) -> list[int]:
        return [int(t["pid"]) for t in self.tasks]


@dataclass(frozen=True, slots=True)
class BpfMap:
    doc: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.doc["name"])

    @property
    def type(self) -> str:
        return str(self.doc["type"])

    @property
    def entries(self) -> list[dict[str, Any]]:
        return list(self.doc.get("entries") or [])

    @property
    def vars(self) -> dict[str, Any]:
        """A section's variables (``.bss``, ``.data``, ``.rodata``), or an
        arena's globals."""
        return dict(self.doc.get("vars") or self.doc.get("globals") or {})

    def __getitem__(self, key: Any) -> Any:
        """The value stored under ``key`` (an array index, a hash key, or a
        task storage owner's pid)."""
        for e in self.entries:
            k = e.get("key")
            if k == key or (isinstance(k, dict) and k.get("pid") == key):
                return e.get("value", e.get("cpus", e.get("map")))
        raise SnapshotError(f"map {self.name} has no entry {key!r} ({len(self.entries)} entries)")

    def cpu(self, cpu: int, key: int = 0) -> Any:
        """A per-CPU map's value on ``cpu`` (of entry ``key``)."""
        per_cpu = self[key]
        if not isinstance(per_cpu, list):
            raise SnapshotError(f"map {self.name} is a {self.type}, not a per-CPU map")
        if not 0 <= cpu < len(per_cpu):
            raise SnapshotError(f"map {self.name} has values for cpus 0-{len(per_cpu) - 1}")
        return per_cpu[cpu]

    def values(self) -> Iterator[Any]:
        for e in self.entries:
            yield e.get("value", e.get("cpus"))


class Snapshot:
    def __init__(self, doc: dict[str, Any], path: Path | None = None) -> None:
        if doc.get("schema") != SCHEMA:
            raise SnapshotError(f"{path or 'document'} is not a ktstr snapshot ({SCHEMA})")
        self.doc = doc
        self.path = path

    @classmethod
    def load(cls, path: Path) -> Snapshot:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"cannot read snapshot {path}: {exc}") from None
        if not isinstance(doc, dict):
            raise SnapshotError(f"{path} is not a ktstr snapshot")
        return cls(doc, Path(path))

    name = property(lambda self: str(self.doc.get("name", "")))
    trigger = property(lambda self: str(self.doc.get("trigger", "")))

    @property
    def scx(self) -> dict[str, Any]:
        return dict(self.doc.get("scx") or {})

    @property
    def cpus(self) -> list[dict[str, Any]]:
        return list(self.doc.get("cpus") or [])

    @property
    def maps(self) -> list[BpfMap]:
        return [BpfMap(m) for m in self.doc.get("maps") or []]

    def map(self, name: str) -> BpfMap:
        """A scheduler map by name (the kernel keeps its first 15 characters)."""
        maps = self.maps
        for m in maps:
            if m.name == name or m.name == name[:MAP_NAME_LEN]:
                return m
        found = [m for m in maps if m.name.endswith("." + name.lstrip("."))]  # "bss"
        if len(found) == 1:
            return found[0]
        raise SnapshotError(f"no map {name!r}" + _hint(name, [m.name for m in maps]))

    def var(self, path: str) -> Any:
        """A global variable (or a path into one) of the scheduler's
        ``.bss``, ``.data``, ``.rodata`` or arena."""
        parts = _split(path)
        sections = [m.vars for m in self.maps if m.vars]
        for section in sections:
            if parts[0] in section:
                return _walk(section[parts[0]], parts[1:], path)
        names = [n for s in sections for n in s]
        inside = [f"{n}.{parts[0]}" for s in sections for n, v in s.items() if _has(v, parts[0])]
        hint = f"; it is inside: {', '.join(inside[:3])}" if inside else _hint(parts[0], names)
        raise SnapshotError(f"no global {parts[0]!r}" + hint)

    def dsq(self, id: int | None = None, *, local: int | None = None) -> Dsq:
        """A CPU's local DSQ (``local=cpu``), or a global or user DSQ by id."""
        if local is not None:
            for c in self.cpus:
                if c.get("cpu") == local:
                    return _dsq(c["local_dsq"])
            raise SnapshotError(f"no cpu {local} (cpus {[c.get('cpu') for c in self.cpus]})")
        for d in self.doc.get("dsqs") or []:
            if int(str(d["id"]), 16) == id:
                return _dsq(d)
        ids = [str(d["id"]) for d in self.doc.get("dsqs") or []]
        raise SnapshotError(f"no DSQ {id!r} (DSQs: {', '.join(ids)})")


def _dsq(d: dict[str, Any]) -> Dsq:
    return Dsq(id=int(str(d["id"]), 16), nr=int(d["nr"]), tasks=list(d.get("tasks") or []))


def _split(path: str) -> list[Any]:
    parts: list[Any] = []
    pos = 0
    while pos < len(path):
        m = _PART.match(path, pos)
        if m is None:
            raise SnapshotError(f"{path!r} is not a variable name or path")
        parts.append(m.group(1) if m.group(1) else int(m.group(2)))
        pos = m.end()
    if not parts or not isinstance(parts[0], str):
        raise SnapshotError(f"{path!r} is not a variable name or path")
    return parts


def _walk(value: Any, parts: list[Any], path: str) -> Any:
    for part in parts:
        indexable = isinstance(part, int) and isinstance(value, list) and part < len(value)
        if indexable or (isinstance(part, str) and isinstance(value, dict) and part in value):
            value = value[part]
        else:
            raise SnapshotError(f"{path}: no {part!r} in {str(value)[:120]}")
    return value


def _has(value: Any, name: str) -> bool:
    return isinstance(value, dict) and name in value


def snapshots_of(result_dir: Path) -> dict[str, Snapshot]:
    """A results directory's snapshots, by name (from its result.json)."""
    doc = json.loads((Path(result_dir) / "result.json").read_text())
    out = {}
    for meta in doc.get("snapshots") or []:
        if meta.get("file"):
            out[meta["name"]] = Snapshot.load(Path(result_dir) / meta["file"])
    return out
