"""A frozen guest's scheduler state, through drgn, as one JSON document.

Called while the guest is stopped (QMP ``stop``): per CPU ``rq->scx``, the
current task and the local DSQ with its tasks; the global (per-node) and
user DSQs (sched_ext's DSQ hash table) with their tasks; sched_ext's state
(ops name, enable state, bypass depth, aborting, exit kind and reason); and
every BPF map of the scheduler under test - the maps sharing its struct_ops
map's BTF - rendered by field name through that BTF (``btf.py``): arrays,
per-CPU arrays (one value per CPU), hash maps, task and cgroup storage,
queues and stacks, the ``.bss``/``.data``/``.rodata`` sections as named
variables, and BPF arena globals. Version differences (6.12 globals vs 7.x
``scx_root``) are handled by trying members and symbols.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from ktstr.inspect.btf import Btf, BtfError

#: Tasks listed per DSQ, user DSQs listed, hash buckets and chain links
#: walked, bytes of one string: a guest's corrupted (or hostile) lists cannot
#: keep the host reading while the guest is frozen.
MAX_TASKS = 256
MAX_DSQS = 1024
MAX_BUCKETS = 1 << 16
MAX_CHAIN = 4096
MAX_STR = 1024
#: Largest BTF blob read from the guest.
MAX_BTF = 16 << 20


def _member(obj: Any, *names: str) -> Any:
    for name in names:
        with contextlib.suppress(AttributeError, LookupError):
            return getattr(obj, name)
    return None


def _int(obj: Any) -> int | None:
    return None if obj is None else int(obj.value_())


def _sym(prog: Any, *names: str) -> Any:
    for name in names:
        with contextlib.suppress(LookupError):
            return prog[name]
    return None


def _enum_name(prog: Any, enum: str, value: int) -> str:
    with contextlib.suppress(LookupError):
        for e in prog.type(enum).enumerators:
            if e.value == value:
                return str(e.name)
    return str(value)


def _cstr(obj: Any, limit: int = MAX_STR) -> str:
    """A C string (array or pointer), at most ``limit`` bytes, never past a
    page that is not mapped."""
    try:
        from drgn import TypeKind, sizeof

        if obj.type_.unaliased_kind() == TypeKind.ARRAY:
            size = min(sizeof(obj), limit)
            raw = bytes(obj.prog_.read(obj.address_, size))
            return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        addr = int(obj.value_())
        if not addr:
            return ""
        out = b""
        while len(out) < limit:
            n = min(limit - len(out), 4096 - (addr + len(out)) % 4096)
            chunk = bytes(obj.prog_.read(addr + len(out), n))
            end = chunk.find(b"\0")
            if end >= 0:
                return (out + chunk[:end]).decode("utf-8", "replace")
            out += chunk
        return out.decode("utf-8", "replace")
    except Exception:  # a pointer into freed or unmapped memory
        return "<unreadable>"


class Snapshotter:
    """Reads one snapshot from a drgn Program of a stopped guest."""

    def __init__(self, prog: Any, hz: int = 1000, budget_s: float = 2.0) -> None:
        from ktstr.inspect.bpfmaps import Budget

        self.prog = prog
        self.hz = hz
        self.jiffies = 0
        #: Longest the guest stays frozen for the reading (maps past it are
        #: named, not read).
        self.budget_s = budget_s
        self.deadline = 0.0
        self.budget = Budget()

    def take(self) -> dict[str, Any]:
        from drgn.helpers.linux.cpumask import for_each_online_cpu

        prog = self.prog
        self.deadline = time.monotonic() + self.budget_s
        self.jiffies = int(_sym(prog, "jiffies_64", "jiffies").value_())
        sch = self.root()
        errors: dict[str, str] = {}

        def part(name: str, read: Callable[[], Any], empty: Any) -> Any:
            """One part; a fault in it (a scheduler being torn down frees its
            DSQs while its exit state is still there) loses only that part."""
            try:
                return read()
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"[:300]
                return empty

        out = {
            "jiffies": self.jiffies,
            "scx": part("scx", lambda: self.scx_state(sch), {}),
            "cpus": part("cpus", lambda: [self.cpu(c) for c in for_each_online_cpu(prog)], []),
            "dsqs": part("dsqs", lambda: self.dsqs(sch), []),
            "maps": part("maps", self.maps, []),
        }
        if errors:
            out["errors"] = errors
        return out

    def root(self) -> Any:
        """7.x's ``struct scx_sched *scx_root`` when set; None on 6.12 (its
        state is in globals) or when no scheduler is loaded."""
        root = _sym(self.prog, "scx_root")
        return root if root is not None and int(root.value_()) else None

    # -- sched_ext --------------------------------------------------------------
    def scx_state(self, sch: Any) -> dict[str, Any]:
        prog = self.prog
        state_var = _sym(prog, "scx_enable_state_var", "scx_ops_enable_state_var")
        state = int(state_var.counter.value_()) if state_var is not None else -1
        enum = (
            "enum scx_enable_state"
            if _sym(prog, "scx_enable_state_var") is not None
            else ("enum scx_ops_enable_state")
        )
        out: dict[str, Any] = {"enable_state": _enum_name(prog, enum, state)}
        if sch is not None:
            out["ops"] = _cstr(sch.ops.name)
            out["bypass_depth"] = _int(_member(sch, "bypass_depth"))
            out["aborting"] = bool(_int(_member(sch, "aborting")) or 0)
            kind = int(sch.exit_kind.counter.value_())
            info = sch.exit_info
        else:
            ops = _sym(prog, "scx_ops")
            out["ops"] = _cstr(ops.name) if ops is not None else ""
            bypass = _sym(prog, "scx_ops_bypass_depth", "scx_bypass_depth")
            out["bypass_depth"] = _int(bypass)
            aborting = _sym(prog, "scx_aborting")
            out["aborting"] = bool(_int(aborting) or 0) if aborting is not None else None
            kind_var = _sym(prog, "scx_exit_kind")
            kind = int(kind_var.counter.value_()) if kind_var is not None else 0
            info = _sym(prog, "scx_exit_info")
        out["exit_kind"] = _enum_name(prog, "enum scx_exit_kind", kind) if kind else ""
        out["exit_kind_value"] = kind
        if kind and info is not None and int(info.value_()):
            out["exit_reason"] = _cstr(info.reason)
            out["exit_msg"] = _cstr(info.msg)
        return out

    # -- tasks and DSQs -------------------------------------------------------
    def task(self, t: Any) -> dict[str, Any]:
        scx = t.scx
        out = {
            "pid": int(t.pid.value_()),
            "comm": _cstr(t.comm),
            "weight": _int(_member(scx, "weight")),
            "slice": _int(_member(scx, "slice")),
            "dsq_vtime": _int(_member(scx, "dsq_vtime")),
        }
        at = _int(_member(scx, "runnable_at"))
        if at is not None:
            out["runnable_ms"] = round((self.jiffies - at) * 1000 / self.hz, 1)
        return out

    def dsq_tasks(self, dsq: Any) -> Iterator[dict[str, Any]]:
        from drgn.helpers.linux.list import list_for_each_entry

        head = dsq.list.address_of_()
        node = "scx.dsq_list.node"
        for i, t in enumerate(list_for_each_entry("struct task_struct", head, node)):
            if i >= MAX_TASKS:
                return
            yield self.task(t)

    def dsq(self, dsq: Any) -> dict[str, Any]:
        return {
            "id": f"{int(dsq.id.value_()):#x}",
            "nr": int(dsq.nr.value_()),
            "seq": _int(_member(dsq, "seq")),
            "tasks": list(self.dsq_tasks(dsq)),
        }

    def cpu(self, cpu: int) -> dict[str, Any]:
        from drgn.helpers.linux.percpu import per_cpu

        rq = per_cpu(self.prog["runqueues"], cpu)
        scx = rq.scx
        fields = ("nr_running", "flags", "cpu_released", "ops_qseq", "clock", "pnt_seq")
        out: dict[str, Any] = {"cpu": cpu}
        for name in fields:
            value = _member(scx, name)
            if value is not None:
                out[name] = int(value.value_())
        curr = rq.curr
        out["curr"] = {"pid": int(curr.pid.value_()), "comm": _cstr(curr.comm)}
        out["idle"] = int(curr.value_()) == int(rq.idle.value_())
        out["local_dsq"] = self.dsq(scx.local_dsq)
        return out

    def dsqs(self, sch: Any) -> list[dict[str, Any]]:
        """The global DSQ of each node, then every user DSQ."""
        prog = self.prog
        found = []
        nodes = int(_sym(prog, "nr_node_ids").value_()) if _sym(prog, "nr_node_ids") else 1
        if sch is not None and _member(sch, "pnode") is not None:
            found += [sch.pnode[n].global_dsq for n in range(nodes) if int(sch.pnode[n].value_())]
            table = sch.dsq_hash
        else:
            g = _sym(prog, "global_dsqs")
            if g is not None and int(g.value_()):
                found += [g[n][0] for n in range(nodes) if int(g[n].value_())]
            table = _sym(prog, "dsq_hash")
        out = [self.dsq(d) for d in found]
        if table is not None:
            out += [self.dsq(d) for d in self._hashed(table)]
        return out

    def _hashed(self, ht: Any) -> Iterator[Any]:
        from drgn import Object, container_of

        tbl = ht.tbl
        if not int(tbl.value_()):
            return
        found = 0
        for i in range(min(int(tbl.size.value_()), MAX_BUCKETS)):
            node = int(tbl.buckets[i].value_())
            for _ in range(MAX_CHAIN):  # an odd pointer (a "nulls" marker) ends a chain
                if not node or node & 1 or found >= MAX_DSQS:
                    break
                head = Object(self.prog, "struct rhash_head", address=node)
                yield container_of(head.address_of_(), "struct scx_dispatch_q", "hash_node")
                found += 1
                node = int(head.next.value_())

    # -- BPF maps ---------------------------------------------------------------
    def scheduler_maps(self) -> list[Any]:
        """The maps of the scheduler under test: those its struct_ops
        programs use, and those sharing its struct_ops map's BTF (one BPF
        object), in id order."""
        from drgn.helpers.linux.bpf import bpf_map_for_each, bpf_prog_for_each, bpf_prog_used_maps

        maps = {int(m.value_()): m for m in bpf_map_for_each(self.prog)}
        ops_map = self._const("BPF_MAP_TYPE_STRUCT_OPS")
        ops_prog = self._const("BPF_PROG_TYPE_STRUCT_OPS")
        btfs = {
            int(m.btf.value_())
            for m in maps.values()
            if int(m.map_type.value_()) == ops_map and int(m.btf.value_())
        }
        mine = {a for a, m in maps.items() if int(m.btf.value_()) in btfs}
        for p in bpf_prog_for_each(self.prog):
            if int(p.type.value_()) == ops_prog:
                mine.update(int(m.value_()) for m in bpf_prog_used_maps(p))
        return sorted((maps[a] for a in mine if a in maps), key=lambda m: int(m.id.value_()))

    def scheduler_maps_with_btf(self) -> list[tuple[Any, Btf | None]]:
        """The scheduler's maps, each with its BTF (parsed once per blob; a
        map without BTF of its own, an arena, gets its object's)."""
        maps = self.scheduler_maps()
        parsed: dict[int, Btf | None] = {}
        for m in maps:
            ptr = int(m.btf.value_())
            if ptr and ptr not in parsed:
                parsed[ptr] = self._btf(m.btf)
        ops = self._const("BPF_MAP_TYPE_STRUCT_OPS")
        own = next((int(m.btf.value_()) for m in maps if int(m.map_type.value_()) == ops), 0)
        return [(m, parsed.get(int(m.btf.value_())) or parsed.get(own)) for m in maps]

    def map_type(self, m: Any) -> str:
        kind = int(m.map_type.value_())
        return _enum_name(self.prog, "enum bpf_map_type", kind).removeprefix("BPF_MAP_TYPE_")

    def map_name(self, m: Any) -> str:
        return _cstr(m.name, 16)

    def maps(self) -> list[dict[str, Any]]:
        from ktstr.inspect.bpfmaps import Budget

        self.budget = Budget()
        return [self.map(m, btf) for m, btf in self.scheduler_maps_with_btf()]

    def _const(self, name: str) -> int:
        try:
            return int(self.prog.constant(name).value_())
        except LookupError:
            return -1

    def _btf(self, btf: Any) -> Btf | None:
        size = int(btf.data_size.value_())
        if size > MAX_BTF:
            return None
        try:
            return Btf(self.prog.read(int(btf.data.value_()), size))
        except (BtfError, Exception):  # a BTF we cannot read is shown as raw bytes
            return None

    def map(self, m: Any, btf: Btf | None, depth: int = 0) -> dict[str, Any]:
        from ktstr.inspect.bpfmaps import inner_maps, render_map

        out: dict[str, Any] = {
            "name": self.map_name(m),
            "type": self.map_type(m),
            "key_size": int(m.key_size.value_()),
            "value_size": int(m.value_size.value_()),
            "max_entries": int(m.max_entries.value_()),
        }
        if time.monotonic() > self.deadline:
            out["error"] = "not read: the snapshot's time budget was spent"
            return out
        try:
            out.update(render_map(self.prog, m, out["type"], btf, self.budget))
            if out["type"].endswith("_OF_MAPS") and depth == 0:
                out["entries"] = [
                    {"key": k, "map": self.map(inner, None, depth + 1)}
                    for k, inner in inner_maps(self.prog, m, out["type"])
                ]
        except Exception as exc:  # one unreadable map does not lose the snapshot
            out["error"] = f"{type(exc).__name__}: {exc}"[:300]
        return out
