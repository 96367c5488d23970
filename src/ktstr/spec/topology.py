"""CPU topology: NUMA nodes > LLCs > cores > SMT threads. Pure data.

CPU numbering follows QEMU's (and Linux's) enumeration for ``-smp
sockets=N,dies=L,cores=C,threads=T``: thread is the fastest-moving index, so
the CPUs of one LLC are contiguous and the LLCs of one NUMA node are
contiguous. A NUMA node is one socket, an LLC is one die.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ktstr.errors import TopologyError

#: Hard ceiling of the product's own kernel fragment (CONFIG_NR_CPUS).
MAX_CPUS = 256

_NAME_RE = re.compile(r"^(\d+)n(\d+)l(\d+)c(\d+)t$")


def format_cpus(cpus: list[int] | tuple[int, ...]) -> str:
    """Render CPU ids as a kernel cpulist (``0-3,8,10-11``)."""
    out: list[str] = []
    ids = sorted(set(cpus))
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(out)


def parse_cpus(text: str) -> tuple[int, ...]:
    """Parse a kernel cpulist (``0-3,8``); empty text is no CPUs."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"bad cpulist element {part!r} in {text!r}") from None
        cpus.extend(range(first, last + 1))
    return tuple(cpus)


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """A CPU shape. ``llcs`` is the total across all NUMA nodes."""

    numa_nodes: int = 1
    llcs: int = 1
    cores_per_llc: int = 2
    threads_per_core: int = 1

    def __post_init__(self) -> None:
        for field in ("numa_nodes", "llcs", "cores_per_llc", "threads_per_core"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise TopologyError(f"topology {field} must be a positive integer, got {value!r}")
        if self.llcs % self.numa_nodes:
            raise TopologyError(
                f"topology {self.name}: llcs ({self.llcs}) must be a multiple of "
                f"numa_nodes ({self.numa_nodes}) so every node has the same LLCs",
                hint="pick llcs = k * numa_nodes, e.g. "
                f"{self.numa_nodes}n{self.numa_nodes * max(1, self.llcs // self.numa_nodes)}l"
                f"{self.cores_per_llc}c{self.threads_per_core}t",
            )
        if self.threads_per_core > 8:
            raise TopologyError(
                f"topology threads_per_core={self.threads_per_core} is not a real SMT width (1-8)"
            )
        if self.cpus > MAX_CPUS:
            raise TopologyError(
                f"topology {self.name} has {self.cpus} CPUs; ktstr supports at most {MAX_CPUS}"
            )

    # -- derived sizes -------------------------------------------------------
    @property
    def name(self) -> str:
        return f"{self.numa_nodes}n{self.llcs}l{self.cores_per_llc}c{self.threads_per_core}t"

    @property
    def llcs_per_node(self) -> int:
        return self.llcs // self.numa_nodes

    @property
    def cpus_per_llc(self) -> int:
        return self.cores_per_llc * self.threads_per_core

    @property
    def cpus_per_node(self) -> int:
        return self.llcs_per_node * self.cpus_per_llc

    @property
    def cores(self) -> int:
        return self.llcs * self.cores_per_llc

    @property
    def cpus(self) -> int:
        return self.llcs * self.cpus_per_llc

    @property
    def smt(self) -> bool:
        return self.threads_per_core > 1

    # -- CPU maps ------------------------------------------------------------
    def llc_cpus(self, llc: int) -> tuple[int, ...]:
        """CPUs sharing LLC number ``llc`` (0-based, global)."""
        if not 0 <= llc < self.llcs:
            raise IndexError(f"llc {llc} out of range 0..{self.llcs - 1}")
        base = llc * self.cpus_per_llc
        return tuple(range(base, base + self.cpus_per_llc))

    def node_cpus(self, node: int) -> tuple[int, ...]:
        if not 0 <= node < self.numa_nodes:
            raise IndexError(f"numa node {node} out of range 0..{self.numa_nodes - 1}")
        base = node * self.cpus_per_node
        return tuple(range(base, base + self.cpus_per_node))

    def core_cpus(self, cpu: int) -> tuple[int, ...]:
        """SMT siblings of ``cpu`` including itself."""
        base = cpu - cpu % self.threads_per_core
        return tuple(range(base, base + self.threads_per_core))

    def llc_of(self, cpu: int) -> int:
        return cpu // self.cpus_per_llc

    def node_of(self, cpu: int) -> int:
        return cpu // self.cpus_per_node

    @classmethod
    def parse(cls, text: str) -> Topology:
        """Parse ``NnNlNcNt`` (e.g. ``2n4l4c2t``) or a preset name."""
        text = text.strip()
        preset = PRESETS.get(text)
        if preset is not None:
            return preset.topology
        m = _NAME_RE.match(text)
        if not m:
            raise TopologyError(
                f"bad topology {text!r}: expected NUMA/LLC/core/thread counts like '1n2l4c2t' "
                "(1 node, 2 LLCs, 4 cores per LLC, 2 threads per core) or a preset name",
                hint="run 'ktstr topologies' to list the presets",
            )
        n, lc, c, t = (int(g) for g in m.groups())
        return cls(numa_nodes=n, llcs=lc, cores_per_llc=c, threads_per_core=t)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True, kw_only=True)
class Preset:
    """A named topology."""

    name: str
    topology: Topology
    description: str


def _p(name: str, shape: str, description: str) -> Preset:
    n, lc, c, t = (int(g) for g in _NAME_RE.match(shape).groups())  # type: ignore[union-attr]
    return Preset(
        name=name,
        topology=Topology(numa_nodes=n, llcs=lc, cores_per_llc=c, threads_per_core=t),
        description=description,
    )


#: x86 shapes a scheduler should survive, small to large. The gauntlet expands
#: over these; tests filter them by constraints (min LLCs, SMT, NUMA, ...).
PRESET_LIST: tuple[Preset, ...] = (
    _p("tiny-1llc", "1n1l4c1t", "4 CPUs, one shared LLC"),
    _p("tiny-2llc", "1n2l2c1t", "4 CPUs split over two LLCs"),
    _p("smt-1llc", "1n1l4c2t", "4 SMT cores, one LLC"),
    _p("small-2llc", "1n2l4c1t", "two 4-core LLCs"),
    _p("smt-2llc", "1n2l2c2t", "two LLCs of 2 SMT cores"),
    _p("small-4llc", "1n4l2c1t", "four 2-core LLCs (chiplet-like)"),
    _p("numa2-2llc", "2n2l2c1t", "two nodes, one LLC each"),
    _p("odd-3llc", "1n3l4c1t", "three LLCs: non-power-of-two domain counts"),
    _p("wide-1llc", "1n1l16c1t", "16 cores behind one LLC (monolithic die)"),
    _p("medium-4llc", "1n4l4c1t", "four 4-core LLCs"),
    _p("smt-medium-2llc", "1n2l4c2t", "two LLCs of 4 SMT cores"),
    _p("numa2-4llc", "2n4l2c1t", "two nodes with two LLCs each"),
    _p("numa2-smt-4llc", "2n4l2c2t", "two nodes, two SMT LLCs each"),
    _p("numa4-4llc", "4n4l4c1t", "four nodes, one LLC each"),
    _p("numa3-6llc", "3n6l4c1t", "three nodes (odd node count)"),
    _p("large-8llc", "1n8l4c1t", "eight 4-core LLCs, 32 CPUs"),
    _p("smt-large-4llc", "1n4l4c2t", "four LLCs of 4 SMT cores, 32 CPUs"),
    _p("numa2-smt-8llc", "2n8l4c1t", "two nodes of four 4-core LLCs"),
    _p("odd-5llc-smt", "1n5l6c2t", "five 6-core SMT LLCs, 60 CPUs"),
    _p("many-15llc", "1n15l4c1t", "fifteen LLCs: the LLC-count ceiling"),
    _p("numa4-smt-8llc", "4n8l4c2t", "four nodes, 64 CPUs with SMT"),
    _p("numa2-smt-12llc", "2n12l4c2t", "two nodes, 96 CPUs"),
    _p("numa4-smt-12llc", "4n12l8c2t", "four nodes, 192 CPUs"),
    _p("huge-14llc", "2n14l9c2t", "two nodes, 252 CPUs: the size ceiling"),
)

PRESETS: dict[str, Preset] = {p.name: p for p in PRESET_LIST}
