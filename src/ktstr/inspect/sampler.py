"""One monitor tick of the guest kernel's scheduler state, by raw reads.

Per CPU: ``rq->nr_running``, ``rq->scx.nr_running``, the local DSQ's depth,
``rq->clock`` and the current task (pid, comm, class; idle or not). sched_ext:
enable state, the root scheduler's ops name, bypass depth and exit kind,
global and user DSQ depths (a walk of the DSQ hash table), event counters
where the kernel has them (7.x), and the runnable tasks that have waited
longest: the heads of each CPU's ``scx.runnable_list`` (sched_ext appends at
the tail when a task becomes runnable, so the head waited longest), with
``jiffies - runnable_at``, the DSQ they sit in and the CPUs they may use.
"""

from __future__ import annotations

from collections.abc import Iterator

from ktstr.inspect.layout import Layout
from ktstr.inspect.memory import FaultError
from ktstr.inspect.reader import Reader
from ktstr.inspect.sample import CpuState, Sample, ScxState, Task

#: Runnable-list entries read per CPU per tick, and DSQs per hash walk.
MAX_WAITING_PER_CPU = 4
MAX_DSQS = 4096
_NULLS = 1  # rhashtable chains end in an odd "nulls" marker


class Sampler:
    def __init__(self, reader: Reader, layout: Layout) -> None:
        self.r = reader
        self.lay = layout
        self.off = layout.offsets
        self.sym = layout.symbols
        self._ticks = 0
        self._events: dict[str, int] = {}
        self.can_wait = layout.has("rq.runnable_list", "task.runnable_node", "task.runnable_at")

    # -- per CPU ------------------------------------------------------------------
    def cpu(self, rq: int) -> CpuState:
        r, o = self.r, self.off
        curr = r.u64(rq + o["rq.curr"])
        klass = self.lay.classes.get(r.u64(curr + o["task.sched_class"]), "?")
        return CpuState(
            nr_running=r.u32(rq + o["rq.nr_running"]),
            scx_nr_running=r.u32(rq + o["rq.scx_nr_running"]) if "rq.scx_nr_running" in o else 0,
            local_dsq=r.u32(rq + o["rq.local_dsq_nr"]) if "rq.local_dsq_nr" in o else 0,
            clock=r.u64(rq + o["rq.clock"]),
            curr_pid=r.i32(curr + o["task.pid"]),
            curr_comm=r.cstr(curr + o["task.comm"], 16),
            curr_class=klass,
            idle=curr == r.u64(rq + o["rq.idle"]),
        )

    def cpumask(self, task: int) -> frozenset[int]:
        if "task.cpus_ptr" not in self.off:
            return frozenset()
        raw = self.r.read(self.r.u64(task + self.off["task.cpus_ptr"]), self.lay.cpumask_bytes)
        bits = int.from_bytes(raw, "little")
        return frozenset(c for c in range(min(self.lay.nr_cpus, len(raw) * 8)) if bits >> c & 1)

    def waiting(self, cpu: int, rq: int, jiffies: int) -> Iterator[Task]:
        """The heads of ``cpu``'s runnable list: runnable, not running."""
        r, o = self.r, self.off
        head = rq + o["rq.runnable_list"]
        node = r.u64(head)
        for _ in range(MAX_WAITING_PER_CPU):
            if node in (head, 0):
                return
            task = node - o["task.runnable_node"]
            waited = (jiffies - r.u64(task + o["task.runnable_at"])) & ((1 << 64) - 1)
            dsq = r.u64(task + o["task.scx_dsq"]) if "task.scx_dsq" in o else 0
            yield Task(
                pid=r.i32(task + o["task.pid"]),
                comm=r.cstr(task + o["task.comm"], 16),
                cpu=cpu,
                wait_ms=waited * 1000.0 / self.lay.hz if waited < 1 << 40 else 0.0,
                dsq=r.u64(dsq + o["dsq.id"]) if dsq else None,
                allowed=self.cpumask(task),
            )
            node = r.u64(node)

    # -- sched_ext -------------------------------------------------------------
    def root(self) -> int:
        """The root scheduler (7.x ``scx_root``), 0 if none or a 6.12 kernel."""
        return self.r.u64(self.sym["scx_root"]) if "scx_root" in self.sym else 0

    def scx(self, root: int) -> ScxState:
        r, o, s, lay = self.r, self.off, self.sym, self.lay
        state = lay.enable_states.get(r.u32(s["enable_state"]), "?") if "enable_state" in s else ""
        if root:
            ops = r.cstr(root + o["sch.ops_name"], 128)
            bypass = r.i32(root + o["sch.bypass_depth"]) if "sch.bypass_depth" in o else 0
            kind = r.u32(root + o["sch.exit_kind"]) if "sch.exit_kind" in o else 0
            hashtable = root + o["sch.dsq_hash"] if "sch.dsq_hash" in o else 0
        else:
            ops = r.cstr(s["ops"] + o["ops.name"], 128) if "ops" in s else ""
            bypass = r.i32(s["bypass_depth"]) if "bypass_depth" in s else 0
            kind = r.u32(s["exit_kind"]) if "exit_kind" in s else 0
            hashtable = s.get("dsq_hash", 0)
        enabled = state.endswith("ENABLED") or state.endswith("ENABLING")
        dsqs = self.dsqs(root, hashtable) if enabled else {}
        return ScxState(
            enable_state=state,
            ops=ops if enabled else "",
            bypass_depth=bypass,
            exit_kind=lay.exit_kinds.get(kind, str(kind)) if kind else "",
            dsqs=dsqs,
            events=self.events(root) if enabled else {},
        )

    def dsqs(self, root: int, hashtable: int) -> dict[int, int]:
        """Depth of every global and user DSQ: id -> nr."""
        r, o = self.r, self.off
        out = {}
        for dsq in self._global_dsqs(root):
            out[r.u64(dsq + o["dsq.id"])] = r.u32(dsq + o["dsq.nr"])
        if not hashtable or not self.lay.has("rht.tbl", "bucket.buckets", "dsq.hash_node"):
            return out
        tbl = r.u64(hashtable + o["rht.tbl"])
        if not tbl:
            return out
        size = min(r.u32(tbl + o["bucket.size"]), 1 << 16)
        for i in range(size):
            node = r.u64(tbl + o["bucket.buckets"] + 8 * i) & ~1  # the bucket's lock bit
            while node and not node & _NULLS and len(out) < MAX_DSQS:
                dsq = node - o["dsq.hash_node"]
                out[r.u64(dsq + o["dsq.id"])] = r.u32(dsq + o["dsq.nr"])
                node = r.u64(node)
        return out

    def _global_dsqs(self, root: int) -> list[int]:
        r, o, nodes = self.r, self.off, self.lay.nr_nodes
        if root and "sch.pnode" in o:
            base = r.u64(root + o["sch.pnode"])
            ptrs = [r.u64(base + 8 * n) for n in range(nodes)] if base else []
            return [p + o.get("pnode.global_dsq", 0) for p in ptrs if p]
        if "global_dsqs" in self.sym:
            base = r.u64(self.sym["global_dsqs"])
            return [p for p in (r.u64(base + 8 * n) for n in range(nodes)) if p] if base else []
        return []

    def events(self, root: int) -> dict[str, int]:
        """7.x event counters summed over CPUs, refreshed once a second."""
        o, lay = self.off, self.lay
        if not root or not lay.events or "sch.pcpu" not in o or (self._ticks - 1) % 10:
            return self._events
        pcpu = self.r.u64(root + o["sch.pcpu"])
        size = max(lay.events.values()) + 8
        totals = dict.fromkeys(lay.events, 0)
        for c in range(lay.nr_cpus):
            raw = self.r.read(
                (pcpu + lay.per_cpu_offsets[c] + o["pcpu.event_stats"]) % (1 << 64), size
            )
            for name, off in lay.events.items():
                totals[name] += int.from_bytes(raw[off : off + 8], "little", signed=True)
        self._events = totals
        return totals

    # -- one tick --------------------------------------------------------------
    def sample(self, t: float) -> Sample:
        self._ticks += 1
        jiffies = self.r.u64(self.sym["jiffies"])
        rqs = self.lay.rqs[: self.lay.nr_cpus]
        cpus = tuple(self.cpu(rq) for rq in rqs)
        root = self.root()
        scx = self.scx(root)
        waiting: list[Task] = []
        if self.can_wait and scx.enable_state.endswith("ENABLED"):
            for cpu, rq in enumerate(rqs):
                try:
                    waiting += self.waiting(cpu, rq, jiffies)
                except FaultError:  # a list changing under us: next tick
                    continue
        return Sample(t=t, jiffies=jiffies, cpus=cpus, scx=scx, waiting=tuple(waiting))
