"""Where things are in the guest kernel, resolved once through drgn.

The sampler reads raw bytes at physical addresses (cheap enough for 10 Hz on
hundreds of CPUs); everything it needs - addresses of globals, each CPU's
run queue, field offsets - comes from here, found by trying members and
symbols as drgn's own helpers do, never by parsing ``uname -r``:

* sched_ext's state moved in 7.x from globals (``scx_ops``,
  ``scx_ops_enable_state_var``, ``scx_watchdog_timeout``, ``dsq_hash``,
  ``global_dsqs``) into ``struct scx_sched`` behind ``scx_root``
  (``ops``, ``watchdog_timeout``, ``dsq_hash``, per-node ``pnode``, event
  counters per CPU in ``pcpu``), with ``scx_enable_state_var``;
* ``struct scx_dispatch_q`` and ``struct sched_ext_entity`` reordered.

A ``Layout`` is plain data (saved with captured memory images, so the
sampler is unit-tested without drgn or a vmlinux).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

KIMAGE_BASE = 0xFFFFFFFF80000000

#: (key, type, member path): offsets the sampler reads; a missing one
#: disables what needs it.
OFFSETS: tuple[tuple[str, str, str], ...] = (
    ("rq.nr_running", "struct rq", "nr_running"),
    ("rq.curr", "struct rq", "curr"),
    ("rq.idle", "struct rq", "idle"),
    ("rq.clock", "struct rq", "clock"),
    ("rq.scx_nr_running", "struct rq", "scx.nr_running"),
    ("rq.scx_flags", "struct rq", "scx.flags"),
    ("rq.local_dsq_nr", "struct rq", "scx.local_dsq.nr"),
    ("rq.runnable_list", "struct rq", "scx.runnable_list"),
    ("task.pid", "struct task_struct", "pid"),
    ("task.comm", "struct task_struct", "comm"),
    ("task.policy", "struct task_struct", "policy"),
    ("task.sched_class", "struct task_struct", "sched_class"),
    ("task.cpus_ptr", "struct task_struct", "cpus_ptr"),
    ("task.runnable_node", "struct task_struct", "scx.runnable_node"),
    ("task.runnable_at", "struct task_struct", "scx.runnable_at"),
    ("task.scx_dsq", "struct task_struct", "scx.dsq"),
    ("task.scx_weight", "struct task_struct", "scx.weight"),
    ("task.scx_slice", "struct task_struct", "scx.slice"),
    ("task.dsq_vtime", "struct task_struct", "scx.dsq_vtime"),
    ("dsq.nr", "struct scx_dispatch_q", "nr"),
    ("dsq.seq", "struct scx_dispatch_q", "seq"),
    ("dsq.id", "struct scx_dispatch_q", "id"),
    ("dsq.hash_node", "struct scx_dispatch_q", "hash_node"),
    ("dsq.list", "struct scx_dispatch_q", "list"),
    ("rht.tbl", "struct rhashtable", "tbl"),
    ("bucket.size", "struct bucket_table", "size"),
    ("bucket.buckets", "struct bucket_table", "buckets"),
    # 7.x: the root scheduler
    ("sch.ops_name", "struct scx_sched", "ops.name"),
    ("sch.bypass_depth", "struct scx_sched", "bypass_depth"),
    ("sch.exit_kind", "struct scx_sched", "exit_kind"),
    ("sch.exit_info", "struct scx_sched", "exit_info"),
    ("sch.watchdog_timeout", "struct scx_sched", "watchdog_timeout"),
    ("sch.dsq_hash", "struct scx_sched", "dsq_hash"),
    ("sch.pnode", "struct scx_sched", "pnode"),
    ("sch.pcpu", "struct scx_sched", "pcpu"),
    ("pnode.global_dsq", "struct scx_sched_pnode", "global_dsq"),
    ("pcpu.event_stats", "struct scx_sched_pcpu", "event_stats"),
    ("ops.name", "struct sched_ext_ops", "name"),
    ("exit_info.reason", "struct scx_exit_info", "reason"),
    ("exit_info.msg", "struct scx_exit_info", "msg"),
)

#: (key, candidate symbols in order): globals the sampler reads or writes.
SYMBOLS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("jiffies", ("jiffies_64", "jiffies")),
    ("runqueues", ("runqueues",)),
    ("per_cpu_offset", ("__per_cpu_offset",)),
    ("scx_root", ("scx_root",)),  # 7.x
    ("enable_state", ("scx_enable_state_var", "scx_ops_enable_state_var")),
    ("watchdog_timestamp", ("scx_watchdog_timestamp",)),
    # 6.12: sched_ext state in globals
    ("ops", ("scx_ops",)),
    ("bypass_depth", ("scx_ops_bypass_depth", "scx_bypass_depth")),
    ("exit_kind", ("scx_exit_kind",)),
    ("exit_info", ("scx_exit_info",)),
    ("watchdog_timeout", ("scx_watchdog_timeout",)),
    ("dsq_hash", ("dsq_hash",)),
    ("global_dsqs", ("global_dsqs",)),
)

CLASSES = ("stop", "dl", "rt", "fair", "ext", "idle")


@dataclass(frozen=True, slots=True)
class Layout:
    """Plain data: addresses (virtual, as the kernel sees them), offsets and
    enum names the raw readers need."""

    release: str
    hz: int
    nr_cpus: int
    nr_nodes: int
    page_offset: int
    phys_base: int
    pgd_phys: int
    level5: bool
    kaslr_offset: int
    rqs: tuple[int, ...]  # virtual address of each CPU's struct rq
    per_cpu_offsets: tuple[int, ...]
    offsets: dict[str, int] = field(default_factory=dict)
    symbols: dict[str, int] = field(default_factory=dict)  # virtual addresses
    classes: dict[int, str] = field(default_factory=dict)  # sched_class address -> name
    #: 7.x event counters: name -> offset in struct scx_event_stats.
    events: dict[str, int] = field(default_factory=dict)
    enable_states: dict[int, str] = field(default_factory=dict)
    exit_kinds: dict[int, str] = field(default_factory=dict)
    cpumask_bytes: int = 8
    #: End of guest RAM in physical space: the direct map covers no more
    #: (with RANDOMIZE_MEMORY, vmalloc space may start right after it).
    phys_end: int = 1 << 46

    def has(self, *keys: str) -> bool:
        return all(k in self.offsets or k in self.symbols for k in keys)

    def to_data(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("classes", "enable_states", "exit_kinds"):
            d[key] = {str(k): v for k, v in d[key].items()}
        return d

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Layout:
        d = dict(d)
        for key in ("classes", "enable_states", "exit_kinds"):
            d[key] = {int(k): v for k, v in d[key].items()}
        d["rqs"] = tuple(d["rqs"])
        d["per_cpu_offsets"] = tuple(d["per_cpu_offsets"])
        return cls(**d)


def _enum(prog: Any, name: str) -> dict[int, str]:
    try:
        return {e.value: e.name for e in prog.type(name).enumerators}
    except LookupError:
        return {}


def resolve(prog: Any, vmcoreinfo: Any, hz: int, phys_end: int = 1 << 46) -> Layout:
    """Resolve a ``Layout`` from a drgn Program of the running kernel;
    ``hz`` is the kernel's CONFIG_HZ (from its config, which the host has)."""
    import drgn
    from drgn.helpers.linux.cpumask import for_each_possible_cpu

    offsets: dict[str, int] = {}
    for key, typename, member in OFFSETS:
        try:
            offsets[key] = drgn.offsetof(prog.type(typename), member)
        except (LookupError, ValueError):
            continue
    symbols: dict[str, int] = {}
    for key, names in SYMBOLS:
        for name in names:
            try:
                symbols[key] = int(prog[name].address_)
                break
            except (LookupError, TypeError):
                continue
    classes = {}
    for c in CLASSES:
        try:
            classes[int(prog[f"{c}_sched_class"].address_)] = c
        except LookupError:
            continue
    cpus = list(for_each_possible_cpu(prog))
    pco = prog["__per_cpu_offset"]
    per_cpu = tuple(int(pco[c].value_()) for c in range(max(cpus) + 1))
    rq_sym = symbols["runqueues"]
    try:
        nodes = int(prog["nr_node_ids"].value_())
    except LookupError:
        nodes = 1
    return Layout(
        release=vmcoreinfo.release,
        hz=hz,
        nr_cpus=len(cpus),
        nr_nodes=nodes,
        page_offset=int(prog["page_offset_base"].value_()),
        phys_base=vmcoreinfo.number("phys_base") or 0,
        pgd_phys=_pgd_phys(prog, vmcoreinfo),
        level5=bool(vmcoreinfo.number("pgtable_l5_enabled")),
        kaslr_offset=vmcoreinfo.kaslr_offset,
        rqs=tuple((rq_sym + per_cpu[c]) & ((1 << 64) - 1) for c in range(len(per_cpu))),
        per_cpu_offsets=per_cpu,
        offsets=offsets,
        symbols=symbols,
        classes=classes,
        enable_states=_enum(prog, "enum scx_enable_state")
        or _enum(prog, "enum scx_ops_enable_state"),
        exit_kinds=_enum(prog, "enum scx_exit_kind"),
        events=_members(prog, "struct scx_event_stats"),
        cpumask_bytes=max(8, (int(prog["nr_cpu_ids"].value_()) + 7) // 8),
        phys_end=phys_end,
    )


def _members(prog: Any, typename: str) -> dict[str, int]:
    try:
        return {m.name: m.bit_offset // 8 for m in prog.type(typename).members if m.name}
    except LookupError:
        return {}


def _pgd_phys(prog: Any, info: Any) -> int:
    virt = info.symbol("swapper_pg_dir") or int(prog["swapper_pg_dir"].address_)
    return int(virt - KIMAGE_BASE + (info.number("phys_base") or 0))
