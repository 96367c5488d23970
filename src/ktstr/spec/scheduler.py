"""Scheduler definitions, their flags and flag profiles. Pure.

A Flag adds arguments to the scheduler's command line; ``requires`` and
``excludes`` name other flags. A profile is a valid set of flags: every
required flag present, no excluded pair. ``profiles()`` yields every valid
combination; ``pairwise()`` a smaller set that still covers every valid
pair of flag states (on/off x on/off), for schedulers with many flags.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ktstr.errors import ConfigError
from ktstr.spec.checks import Thresholds


@dataclass(frozen=True, slots=True)
class Flag:
    """A scheduler flag: its arguments and the flags it needs or excludes."""

    name: str
    args: tuple[str, ...] | list[str] = ()
    requires: tuple[str, ...] | list[str] = ()
    excludes: tuple[str, ...] | list[str] = ()

    def __post_init__(self) -> None:
        for attr in ("args", "requires", "excludes"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        if not self.name or "/" in self.name or "+" in self.name:
            raise ConfigError(f"flag name {self.name!r} must be non-empty, without '/' or '+'")


@dataclass(frozen=True, slots=True)
class Profile:
    """A valid set of flags, in definition order."""

    flags: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return "+".join(self.flags) if self.flags else "base"


@dataclass(frozen=True, slots=True)
class Scheduler:
    """A scheduler under test. ``binary`` is a path or a name to discover
    (next to the tests, on PATH, next to the kernel, or $KTSTR_SCHEDULER)."""

    name: str
    binary: str = ""
    args: tuple[str, ...] | list[str] = ()
    topology: str = ""
    flags: tuple[Flag, ...] | list[Flag] = ()
    thresholds: Thresholds = field(default_factory=Thresholds)
    #: Kernels it runs on, as version prefixes ("6.12", "7."); empty = any.
    kernels: tuple[str, ...] | list[str] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "flags", tuple(self.flags))
        object.__setattr__(self, "kernels", tuple(self.kernels))
        if not self.binary:
            object.__setattr__(self, "binary", self.name)
        names = [f.name for f in self.flags]
        if len(set(names)) != len(names):
            raise ConfigError(f"scheduler {self.name}: duplicate flag names in {names}")
        for f in self.flags:
            unknown = [n for n in (*f.requires, *f.excludes) if n not in names]
            if unknown:
                raise ConfigError(
                    f"scheduler {self.name}: flag {f.name} refers to unknown flag(s) {unknown}"
                )

    def runs_on(self, version: str) -> bool:
        """Whether this scheduler is meant for kernel ``version``."""
        return not self.kernels or any(
            version == k or version.startswith(k if k.endswith(".") else k + ".")
            for k in self.kernels
        )

    def flag(self, name: str) -> Flag:
        for f in self.flags:
            if f.name == name:
                return f
        raise ConfigError(f"scheduler {self.name} has no flag {name!r}")

    def valid(self, chosen: set[str] | frozenset[str]) -> bool:
        for name in chosen:
            f = self.flag(name)
            if any(r not in chosen for r in f.requires):
                return False
            if any(x in chosen for x in f.excludes):
                return False
        return True

    def profile(self, chosen: set[str] | frozenset[str]) -> Profile:
        return Profile(tuple(f.name for f in self.flags if f.name in chosen))

    def profiles(self) -> list[Profile]:
        """Every valid combination of flags (the power set, filtered)."""
        names = [f.name for f in self.flags]
        out = []
        for r in range(len(names) + 1):
            for combo in itertools.combinations(names, r):
                if self.valid(set(combo)):
                    out.append(self.profile(set(combo)))
        return out

    def pairwise(self) -> list[Profile]:
        """Valid profiles covering every valid (flag a state, flag b state)
        pair and every valid single flag state: a greedy covering array, far
        smaller than the power set."""
        names = [f.name for f in self.flags]
        valid = [frozenset(p.flags) for p in self.profiles()]

        def covers(chosen: frozenset[str]) -> set[tuple[str, bool, str, bool]]:
            out = {(a, a in chosen, b, b in chosen) for a, b in itertools.combinations(names, 2)}
            return out | {(n, n in chosen, n, n in chosen) for n in names}

        need = set().union(*(covers(v) for v in valid)) if valid else set()
        picked: list[frozenset[str]] = []
        while need:
            best = max(valid, key=lambda v: (len(covers(v) & need), -len(v)))
            need -= covers(best)
            picked.append(best)
        return [self.profile(set(c)) for c in picked] or [Profile()]

    def argv_for(self, profile: Profile) -> tuple[str, ...]:
        return (*self.args, *(a for name in profile.flags for a in self.flag(name).args))


def _where(exc: BaseException, path: str) -> str:
    """``file:line`` of the innermost frame of ``exc`` in ``path``."""
    import os
    import traceback

    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f"{exc.filename}:{exc.lineno}"
    tb = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in tb if os.path.abspath(f.filename) == os.path.abspath(path)]
    frames = mine or tb[-1:]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else path


def load_scheduler(ref: str) -> Scheduler:
    """``path/to/file.py:NAME`` or ``package.module:NAME`` -> that Scheduler.
    Any failure of the definition file is one ConfigError naming file and line."""
    import importlib
    import importlib.util
    import os

    where, _, name = ref.rpartition(":")
    if not where or not name:
        raise ConfigError(f"scheduler definition {ref!r}: expected FILE.py:NAME or module:NAME")
    if where.endswith(".py") and not os.path.isfile(where):
        raise ConfigError(f"scheduler definition {ref!r}: no file {where}")
    try:
        if where.endswith(".py"):
            spec = importlib.util.spec_from_file_location("ktstr_sched_def", where)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except Exception as exc:
        what = exc.message if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
        raise ConfigError(
            f"scheduler definition {_where(exc, where)}: {what}",
            hint="fix the definition file; it must define a ktstr Scheduler",
        ) from None
    found = getattr(module, name, None)
    if not isinstance(found, Scheduler):
        raise ConfigError(f"{ref!r} is not a ktstr Scheduler (got {type(found).__name__})")
    return found
