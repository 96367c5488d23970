"""CPU sets as data: which CPUs a cgroup gets, resolved against a Topology. Pure."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from ktstr.errors import ConfigError
from ktstr.spec.topology import Topology


class CpusetMode(enum.Enum):
    LLC = "llc"  # the CPUs of LLC `index`
    DISJOINT = "disjoint"  # part `index` of `of` equal, disjoint, LLC-aligned when possible
    OVERLAP = "overlap"  # part `index` of `of`, widened to overlap its neighbours by `overlap`
    RANGE = "range"  # CPUs lo..hi inclusive
    EXACT = "exact"  # exactly `cpus`
    ACROSS_LLCS = "across_llcs"  # `of` CPUs, each from a different LLC where there are enough
    NODE = "node"  # the CPUs of NUMA node `index`
    SMT_PRIMARY = "smt_primary"  # the first hardware thread of every core
    SMT_SIBLING = "smt_sibling"  # the other hardware threads (none without SMT)


@dataclass(frozen=True, slots=True, kw_only=True)
class CpusetSpec:
    """A cgroup's cpuset, relative to the topology it runs on."""

    mode: CpusetMode
    index: int = 0
    of: int = 1
    overlap: float = 0.5
    lo: int = 0
    hi: int = 0
    cpus: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.mode in (CpusetMode.DISJOINT, CpusetMode.OVERLAP) and (
            self.of < 1 or not 0 <= self.index < self.of
        ):
            raise ConfigError(
                f"cpuset {self.mode.value}: index must be in 0..of-1 "
                f"(index={self.index}, of={self.of})"
            )
        if self.mode is CpusetMode.OVERLAP and not 0 < self.overlap < 1:  # NaN fails too
            raise ConfigError(f"cpuset overlap must be in (0, 1), got {self.overlap}")
        if self.mode is CpusetMode.RANGE and not 0 <= self.lo <= self.hi:
            raise ConfigError(f"cpuset range needs 0 <= lo <= hi, got {self.lo}..{self.hi}")
        if self.mode is CpusetMode.EXACT and not self.cpus:
            raise ConfigError("exact cpuset needs at least one CPU")
        if self.mode is CpusetMode.LLC and self.index < 0:
            raise ConfigError(f"cpuset llc index must be >= 0, got {self.index}")

    @classmethod
    def llc(cls, index: int) -> CpusetSpec:
        return cls(mode=CpusetMode.LLC, index=index)

    @classmethod
    def disjoint(cls, index: int, of: int) -> CpusetSpec:
        return cls(mode=CpusetMode.DISJOINT, index=index, of=of)

    @classmethod
    def overlapping(cls, index: int, of: int, overlap: float = 0.5) -> CpusetSpec:
        return cls(mode=CpusetMode.OVERLAP, index=index, of=of, overlap=overlap)

    @classmethod
    def across_llcs(cls, count: int = 2) -> CpusetSpec:
        """``count`` CPUs, the first of LLC 0, 1, ...: every wake-up between
        them crosses an LLC (with fewer LLCs, the rest come from LLC 0)."""
        return cls(mode=CpusetMode.ACROSS_LLCS, of=count)

    @classmethod
    def node(cls, index: int) -> CpusetSpec:
        return cls(mode=CpusetMode.NODE, index=index)

    @classmethod
    def smt_primary(cls) -> CpusetSpec:
        return cls(mode=CpusetMode.SMT_PRIMARY)

    @classmethod
    def smt_sibling(cls) -> CpusetSpec:
        return cls(mode=CpusetMode.SMT_SIBLING)

    @classmethod
    def range(cls, lo: int, hi: int) -> CpusetSpec:
        return cls(mode=CpusetMode.RANGE, lo=lo, hi=hi)

    @classmethod
    def exact(cls, *cpus: int) -> CpusetSpec:
        return cls(mode=CpusetMode.EXACT, cpus=tuple(cpus))

    def resolve(self, topo: Topology) -> tuple[int, ...]:
        n = topo.cpus
        if self.mode is CpusetMode.NODE:
            if self.index >= topo.numa_nodes:
                raise ConfigError(f"cpuset node {self.index} >= {topo.numa_nodes} nodes in {topo}")
            return topo.node_cpus(self.index)
        if self.mode in (CpusetMode.SMT_PRIMARY, CpusetMode.SMT_SIBLING):
            primaries = {topo.core_cpus(c)[0] for c in range(n)}
            want = self.mode is CpusetMode.SMT_PRIMARY
            picked = tuple(c for c in range(n) if (c in primaries) == want)
            if not picked:
                raise ConfigError(f"cpuset smt_sibling: {topo} has no SMT siblings")
            return picked
        if self.mode is CpusetMode.LLC:
            if self.index >= topo.llcs:
                raise ConfigError(f"cpuset llc index {self.index} >= {topo.llcs} LLCs in {topo}")
            return topo.llc_cpus(self.index)
        if self.mode is CpusetMode.RANGE:
            if self.hi >= n:
                raise ConfigError(
                    f"cpuset range {self.lo}..{self.hi} exceeds CPUs 0-{n - 1} of {topo}"
                )
            return tuple(range(self.lo, self.hi + 1))
        if self.mode is CpusetMode.EXACT:
            bad = sorted(c for c in self.cpus if not 0 <= c < n)
            if bad:
                raise ConfigError(
                    f"exact cpuset CPUs {bad} do not exist in {topo} (CPUs 0-{n - 1})"
                )
            return tuple(sorted(set(self.cpus)))
        if self.of > n:
            raise ConfigError(f"cpuset {self.mode.value}: cannot split {n} CPUs into {self.of}")
        if self.mode is CpusetMode.ACROSS_LLCS:
            firsts = [topo.llc_cpus(i)[0] for i in range(min(self.of, topo.llcs))]
            rest = [c for c in topo.llc_cpus(0) if c not in firsts]
            return tuple(sorted(firsts + rest[: self.of - len(firsts)]))
        lo, hi = _part(n, self.index, self.of, topo)
        if self.mode is CpusetMode.OVERLAP:
            widen = max(1, round((hi - lo) * self.overlap / 2))
            lo, hi = max(0, lo - widen), min(n, hi + widen)
        return tuple(range(lo, hi))


def _part(n: int, index: int, of: int, topo: Topology) -> tuple[int, int]:
    """[lo, hi) of part ``index`` of ``of``; on LLC boundaries when they divide."""
    if topo.llcs % of == 0:
        per = topo.llcs // of * topo.cpus_per_llc
        return index * per, (index + 1) * per
    return index * n // of, (index + 1) * n // of


class Per(enum.Enum):
    CPU = "cpu"
    CORE = "core"
    LLC = "llc"
    NODE = "node"
    PCT = "pct"  # percent of the CPUs


@dataclass(frozen=True, slots=True)
class Size:
    """A worker count relative to the CPUs a cgroup may use, so that one
    scenario fits every topology: ``Size.per_cpu(2)``, ``Size.pct(50)``."""

    per: Per
    factor: float

    def __post_init__(self) -> None:
        if not (isinstance(self.factor, int | float) and 0 < self.factor <= 1000):
            raise ConfigError(f"worker size per {self.per.value} must be in (0, 1000]")

    @classmethod
    def per_cpu(cls, factor: float = 1.0) -> Size:
        return cls(Per.CPU, factor)

    @classmethod
    def per_core(cls, factor: float = 1.0) -> Size:
        return cls(Per.CORE, factor)

    @classmethod
    def per_llc(cls, factor: float = 1.0) -> Size:
        return cls(Per.LLC, factor)

    @classmethod
    def per_node(cls, factor: float = 1.0) -> Size:
        return cls(Per.NODE, factor)

    @classmethod
    def pct(cls, percent: float) -> Size:
        return cls(Per.PCT, percent)

    def count(self, topo: Topology, cpus: tuple[int, ...], *, even: bool = False) -> int:
        """Workers for ``cpus`` of ``topo``: at least 1 (rounded up; even for
        paired work)."""
        if self.per is Per.PCT:
            units: float = len(cpus) / 100
        elif self.per is Per.CPU:
            units = len(cpus)
        elif self.per is Per.CORE:
            units = len({topo.core_cpus(c)[0] for c in cpus})
        elif self.per is Per.LLC:
            units = len({topo.llc_of(c) for c in cpus})
        else:
            units = len({topo.node_of(c) for c in cpus})
        n = max(1, math.ceil(units * self.factor - 1e-9))
        return n + (n % 2) if even else n
