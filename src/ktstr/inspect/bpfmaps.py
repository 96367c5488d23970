"""The contents of one BPF map, read through drgn, rendered through its BTF.

Each map type keeps its data in its own kernel structure: ``struct
bpf_array`` (values inline, or per-CPU pointers), ``struct bpf_htab``
(buckets of ``htab_elem``: key, then the value 8-byte aligned),
``struct bpf_queue_stack`` (a ring between tail and head), ``struct
bpf_local_storage_map`` (task and cgroup storage: buckets of elements with
their owner), ``struct bpf_arena`` (globals in the arena's pages). Keys and
values render by field name through the program's BTF; without one they
show as hex.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ktstr.inspect.btf import DATASEC, Btf, BtfError

MAX_ENTRIES = 512
#: Bytes of one key or value read (larger ones are cut, and say so), and of
#: all maps of one snapshot.
MAX_VALUE = 64 << 10
MAX_BYTES = 64 << 20
PAGE = 4096
#: An arena's kernel mapping starts this far into its vm area (GUARD_SZ / 2).
ARENA_GUARD = 1 << 15
#: Hash buckets scanned per map (entries are capped at MAX_ENTRIES anyway).
MAX_BUCKETS = 1 << 20


def _u(obj: Any) -> int:
    return int(obj.value_())


class OverBudget(Exception):
    """A snapshot read its byte budget: the remaining maps are not read."""


class Budget:
    def __init__(self, limit: int = MAX_BYTES) -> None:
        self.left = limit

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise OverBudget(f"the snapshot read {MAX_BYTES >> 20} MiB of maps")


class _Render:
    def __init__(self, prog: Any, m: Any, btf: Btf | None, budget: Budget) -> None:
        self.prog = prog
        self.m = m
        self.btf = btf
        self.budget = budget
        self.key_size = min(_u(m.key_size), MAX_VALUE)
        self.value_size = min(_u(m.value_size), MAX_VALUE)
        self.key_type = _u(m.btf_key_type_id)
        self.value_type = _u(m.btf_value_type_id)

    def value(self, raw: bytes) -> Any:
        return self._as(self.value_type, raw)

    def key(self, raw: bytes) -> Any:
        return self._as(self.key_type, raw)

    def _as(self, type_id: int, raw: bytes) -> Any:
        if self.btf is None or not type_id:
            # no type: up to 8 bytes as an unsigned little-endian number, else hex
            return int.from_bytes(raw, "little") if len(raw) in (1, 2, 4, 8) else raw.hex()
        try:
            return self.btf.render(type_id, raw)
        except BtfError as exc:
            return {"raw": raw[:256].hex(), "error": str(exc)[:200]}

    def read(self, addr: int, size: int) -> bytes:
        self.budget.take(size)
        return bytes(self.prog.read(addr, size))

    def per_cpu(self, pptr: int) -> list[Any]:
        from drgn.helpers.linux.cpumask import for_each_possible_cpu

        offsets = self.prog["__per_cpu_offset"]
        return [
            self.value(self.read((pptr + _u(offsets[c])) % (1 << 64), self.value_size))
            for c in for_each_possible_cpu(self.prog)
        ]


def _container(prog: Any, m: Any, struct: str) -> Any:
    """The map type's own structure around ``struct bpf_map *m``."""
    from drgn import container_of

    return container_of(m, struct, "map")


def render_map(prog: Any, m: Any, kind: str, btf: Btf | None, budget: Budget) -> dict[str, Any]:
    r = _Render(prog, m, btf, budget)
    reader = _READERS.get(kind)
    if reader is None:
        return {}
    return reader(prog, m, r)


def _array(prog: Any, m: Any, r: _Render) -> dict[str, Any]:
    arr = _container(prog, m, "struct bpf_array")
    elem = _u(arr.elem_size)
    base = int(arr.value.address_)
    n = min(_u(m.max_entries), MAX_ENTRIES)
    if (
        r.btf is not None
        and r.value_type
        and r.btf.type(r.btf.resolve(r.value_type)).kind == DATASEC
    ):
        sec = r.btf.type(r.btf.resolve(r.value_type))
        return {"section": sec.name, "vars": r.value(r.read(base, r.value_size))}
    entries = [
        {"key": i, "value": r.value(r.read(base + i * elem, r.value_size))} for i in range(n)
    ]
    return {"entries": entries, "truncated": _u(m.max_entries) > n}


def _percpu_array(prog: Any, m: Any, r: _Render) -> dict[str, Any]:
    arr = _container(prog, m, "struct bpf_array")
    n = min(_u(m.max_entries), MAX_ENTRIES)
    entries = [{"key": i, "cpus": r.per_cpu(_u(arr.pptrs[i]))} for i in range(n)]
    return {"entries": entries, "truncated": _u(m.max_entries) > n}


def _htab_elems(prog: Any, m: Any) -> Iterator[int]:
    from drgn import Object

    htab = _container(prog, m, "struct bpf_htab")
    count = 0
    for i in range(min(_u(htab.n_buckets), MAX_BUCKETS)):
        node = _u(htab.buckets[i].head.first)
        while node and not node & 1:  # hlist_nulls: an odd pointer ends the chain
            yield node  # the hash_node is the element's first member
            count += 1
            if count >= MAX_ENTRIES:
                return
            node = _u(Object(prog, "struct hlist_nulls_node", address=node).next)


def _hash(prog: Any, m: Any, r: _Render, percpu: bool = False) -> dict[str, Any]:
    from drgn import offsetof

    key_off = offsetof(prog.type("struct htab_elem"), "key")
    val_off = key_off + (r.key_size + 7) // 8 * 8
    entries = []
    for elem in _htab_elems(prog, m):
        key = r.key(r.read(elem + key_off, r.key_size))
        if percpu:
            pptr = int.from_bytes(r.read(elem + val_off, 8), "little")
            entries.append({"key": key, "cpus": r.per_cpu(pptr)})
        else:
            entries.append({"key": key, "value": r.value(r.read(elem + val_off, r.value_size))})
    return {"entries": entries, "truncated": len(entries) >= MAX_ENTRIES}


def _percpu_hash(prog: Any, m: Any, r: _Render) -> dict[str, Any]:
    return _hash(prog, m, r, percpu=True)


def _queue(prog: Any, m: Any, r: _Render) -> dict[str, Any]:
    qs = _container(prog, m, "struct bpf_queue_stack")
    head, tail, size = _u(qs.head), _u(qs.tail), _u(qs.size)
    base = int(qs.elements.address_)
    entries: list[Any] = []
    i = tail
    while i != head and len(entries) < MAX_ENTRIES and size:
        entries.append(r.value(r.read(base + i * r.value_size, r.value_size)))
        i = (i + 1) % size
    return {"entries": entries, "depth": (head - tail) % size if size else 0}


def _storage(prog: Any, m: Any, r: _Render) -> dict[str, Any]:
    from drgn import cast
    from drgn.helpers.linux.list import hlist_for_each_entry

    smap = _container(prog, m, "struct bpf_local_storage_map")
    entries = []
    for b in range(min(1 << min(_u(smap.bucket_log), 31), MAX_BUCKETS)):
        bucket = smap.buckets[b]
        for selem in hlist_for_each_entry(
            "struct bpf_local_storage_elem", bucket.list.address_of_(), "map_node"
        ):
            owner = selem.local_storage.owner
            key: dict[str, Any] = {"owner": f"{_u(owner):#x}"}
            if "TASK" in r.m.map_type.format_():
                key["pid"] = _u(cast("struct task_struct *", owner).pid)
            value = r.value(r.read(int(selem.sdata.data.address_), r.value_size))
            entries.append({"key": key, "value": value})
            if len(entries) >= MAX_ENTRIES:
                return {"entries": entries, "truncated": True}
    return {"entries": entries, "truncated": False}


def arena_globals(prog: Any, m: Any, btf: Btf) -> tuple[int, int] | None:
    """(kernel address, DATASEC type id) of an arena's globals (the BTF's
    ``.addr_space.1``), or None. libbpf has placed them at the end of the
    arena, 16 pages in, or at its start, depending on its version: the first
    placement whose pages are all mapped is the one."""
    from drgn import FaultError

    sec_id = btf.by_name(".addr_space.1")
    if sec_id is None:
        return None
    size = btf.type(sec_id).size
    arena = _container(prog, m, "struct bpf_arena")
    start = _u(arena.kern_vm.addr) + ARENA_GUARD
    span = _u(m.max_entries) * PAGE
    alloc = (size + PAGE - 1) // PAGE * PAGE
    for off in (span - alloc, 16 * PAGE, 0):
        if off < 0:
            continue
        try:
            for page in range(0, max(size, 1), PAGE):
                prog.read(start + off + page, 1)
            prog.read(start + off + max(size, 1) - 1, 1)
        except FaultError:
            continue
        return start + off, sec_id
    return None


def _arena(prog: Any, m: Any, r: _Render) -> dict[str, Any]:
    if r.btf is None:
        return {}
    where = arena_globals(prog, m, r.btf)
    if where is None:
        return {"globals": None, "error": "no arena globals mapped where libbpf puts them"}
    addr, sec_id = where
    raw = r.read(addr, min(r.btf.type(sec_id).size, MAX_BYTES))
    try:
        return {"globals": r.btf.render(sec_id, raw), "globals_at": f"{addr:#x}"}
    except BtfError as exc:
        return {"globals": None, "error": str(exc)[:200]}


def inner_maps(prog: Any, m: Any, kind: str) -> list[tuple[Any, Any]]:
    """(key, struct bpf_map *) of each map held by a map of maps."""
    from drgn import Object

    out: list[tuple[Any, Any]] = []
    if kind == "ARRAY_OF_MAPS":
        arr = _container(prog, m, "struct bpf_array")
        for i in range(min(_u(m.max_entries), MAX_ENTRIES)):
            ptr = _u(arr.ptrs[i])
            if ptr:
                out.append((i, Object(prog, "struct bpf_map *", value=ptr)))
    elif kind == "HASH_OF_MAPS":
        from drgn import offsetof

        key_off = offsetof(prog.type("struct htab_elem"), "key")
        key_size = min(_u(m.key_size), MAX_VALUE)
        val_off = key_off + (key_size + 7) // 8 * 8
        for elem in _htab_elems(prog, m):
            key = int.from_bytes(bytes(prog.read(elem + key_off, key_size)), "little")
            ptr = int.from_bytes(bytes(prog.read(elem + val_off, 8)), "little")
            if ptr:
                out.append((key, Object(prog, "struct bpf_map *", value=ptr)))
    return out


_READERS = {
    "ARRAY": _array,
    "PERCPU_ARRAY": _percpu_array,
    "HASH": _hash,
    "LRU_HASH": _hash,
    "PERCPU_HASH": _percpu_hash,
    "LRU_PERCPU_HASH": _percpu_hash,
    "QUEUE": _queue,
    "STACK": _queue,
    "TASK_STORAGE": _storage,
    "CGRP_STORAGE": _storage,
    "INODE_STORAGE": _storage,
    "SK_STORAGE": _storage,
    "ARENA": _arena,
}
