"""The gauntlet: one test expanded across topology presets x flag profiles,
filtered by the test's constraints, optionally cut to a time budget. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ktstr.errors import ConfigError
from ktstr.spec.scheduler import Profile, Scheduler
from ktstr.spec.topology import PRESET_LIST, Preset, Topology


@dataclass(frozen=True, slots=True, kw_only=True)
class Constraints:
    """Which topologies a test can run on."""

    min_llcs: int = 1
    max_llcs: int | None = None
    min_cpus: int = 1
    max_cpus: int | None = None
    min_numa: int = 1
    max_numa: int | None = None
    requires_smt: bool = False
    required_flags: tuple[str, ...] = ()
    excluded_flags: tuple[str, ...] = ()
    #: Kernel options the test needs (``CONFIG_CFS_BANDWIDTH``): a kernel
    #: without one skips it, saying which.
    kernel_config: tuple[str, ...] = ()

    def admits(self, t: Topology) -> bool:
        return (
            self.min_llcs <= t.llcs <= (self.max_llcs or t.llcs)
            and self.min_cpus <= t.cpus <= (self.max_cpus or t.cpus)
            and self.min_numa <= t.numa_nodes <= (self.max_numa or t.numa_nodes)
            and (t.smt or not self.requires_smt)
        )

    def admits_profile(self, p: Profile) -> bool:
        return all(f in p.flags for f in self.required_flags) and not any(
            f in p.flags for f in self.excluded_flags
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """One gauntlet run: a test at a preset under a flag profile."""

    test: str
    preset: str
    topology: Topology
    profile: Profile
    #: The kernel's label (its version; its cache entry if two share one).
    kernel: str = ""
    #: Which of ``--ktstr-repeat N`` runs this is (0: not repeated).
    trial: int = 0

    @property
    def id(self) -> str:
        kernel = f"{self.kernel}/" if self.kernel else ""
        trial = f"#{self.trial}" if self.trial else ""
        return f"gauntlet/{self.test}/{kernel}{self.preset}/{self.profile.name}{trial}"


def expand(
    test: str,
    constraints: Constraints,
    scheduler: Scheduler | None,
    *,
    presets: Iterable[Preset] = PRESET_LIST,
    pairwise: bool = False,
    max_cpus: int | None = None,
    kernel: str = "",
) -> list[Case]:
    """Every (preset, profile) the test admits; ``max_cpus`` is what the
    kernel can boot (CONFIG_NR_CPUS)."""
    if scheduler is None:
        profiles = [Profile()]
    else:
        profiles = scheduler.pairwise() if pairwise else scheduler.profiles()
        known = {f.name for f in scheduler.flags}
        unknown = [
            f for f in (*constraints.required_flags, *constraints.excluded_flags) if f not in known
        ]
        if unknown:
            raise ConfigError(
                f"test {test}: constraint names unknown flag(s) {unknown} of "
                f"scheduler {scheduler.name}"
            )
    profiles = [p for p in profiles if constraints.admits_profile(p)]
    return [
        Case(test=test, preset=pr.name, topology=pr.topology, profile=p, kernel=kernel)
        for pr in presets
        if constraints.admits(pr.topology) and (max_cpus is None or pr.topology.cpus <= max_cpus)
        for p in profiles
    ]


def static_estimate(
    case: Case, duration_s: float, *, boot_s: float = 6.0, per_cpu_s: float = 0.25
) -> float:
    """Seconds a case takes when nothing was measured yet: boot (which grows
    with vCPUs under emulation), the workload, and teardown."""
    return boot_s + per_cpu_s * case.topology.cpus + duration_s + 2.0


def _gain(
    c: Case, presets: set[tuple[str, str]], flags: set[tuple[str, str]], cost: Mapping[str, float]
) -> tuple[int, int, float]:
    new_preset = int((c.test, c.preset) not in presets)
    new_flags = len({(c.test, f) for f in c.profile.flags} - flags)
    return (new_preset, new_flags, -cost[c.id])


def select_for_budget(cases: list[Case], budget_s: float, cost: Mapping[str, float]) -> list[Case]:
    """Greedy: the cases that cover the most not-yet-covered presets first,
    then flags, cheapest first among equals, never exceeding ``budget_s``.
    ``cost`` maps case ids to seconds (measured or estimated)."""
    if budget_s <= 0:
        raise ConfigError(f"--budget must be > 0 seconds, got {budget_s}")
    chosen: list[Case] = []
    presets: set[tuple[str, str]] = set()
    flags: set[tuple[str, str]] = set()
    left = budget_s
    remaining = list(cases)
    while remaining:
        fitting = [c for c in remaining if cost[c.id] <= left]
        if not fitting:
            break
        best = max(fitting, key=lambda c: _gain(c, presets, flags, cost))
        if _gain(best, presets, flags, cost)[:2] == (0, 0):
            break  # everything that still fits is already covered
        chosen.append(best)
        remaining.remove(best)
        left -= cost[best.id]
        presets.add((best.test, best.preset))
        flags.update((best.test, f) for f in best.profile.flags)
    return chosen
