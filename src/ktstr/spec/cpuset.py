"""CPU sets as data: which CPUs a cgroup gets, resolved against a Topology. Pure."""

from __future__ import annotations

import enum
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


@dataclass(frozen=True, slots=True, kw_only=True)
class CpusetSpec:
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
    def range(cls, lo: int, hi: int) -> CpusetSpec:
        return cls(mode=CpusetMode.RANGE, lo=lo, hi=hi)

    @classmethod
    def exact(cls, *cpus: int) -> CpusetSpec:
        return cls(mode=CpusetMode.EXACT, cpus=tuple(cpus))

    def resolve(self, topo: Topology) -> tuple[int, ...]:
        n = topo.cpus
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
