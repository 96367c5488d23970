"""Payloads: real programs (stress-ng, hackbench, cyclictest, perf bench, any
command) run in a cgroup beside ktstr's own workers. Pure data.

A payload belongs to a ``CgroupDef`` and shares its cpuset. The guest starts
it when the cgroup is added and sends back what it printed; the host parses
that into metrics (``evaluate/payloads.py``), so the raw output is evidence
and every parser runs on the trusted side. Two ways to end:

* ``Until.STOPPED``: runs until its cgroup stops (removed, stopped, or the
  scenario ends); the agent then sends SIGINT, on which stress-ng and
  cyclictest write their summaries.
* ``Until.EXIT``: runs to its own end (hackbench, perf bench); one still
  running when its cgroup stops did not complete, and that is a finding.
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass
from typing import Any

from ktstr.errors import ConfigError

#: Payload names become metric keys (``payload.NAME.METRIC``).
NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
#: A custom parser: ``package.module:function`` or ``/path/file.py:function``
#: (the file is the same path on host and guest, whatever the module is named).
PARSER_RE = re.compile(r"([A-Za-z_][\w.]*|/[^:\0]{1,4000}\.py):[A-Za-z_][\w.]*")
MAX_ARGS, MAX_ARG = 64, 256


class PayloadKind(enum.Enum):
    STRESS_NG = "stress-ng"
    HACKBENCH = "hackbench"
    CYCLICTEST = "cyclictest"
    PERF_MESSAGING = "perf-messaging"
    PERF_PIPE = "perf-pipe"
    COMMAND = "command"


class Until(enum.Enum):
    STOPPED = "stopped"  # until its cgroup stops, then SIGINT
    EXIT = "exit"  # to its own end, before its cgroup stops


#: The program each kind runs, and where a Debian host gets it.
PROGRAMS: dict[PayloadKind, tuple[str, str]] = {
    PayloadKind.STRESS_NG: ("stress-ng", "stress-ng"),
    PayloadKind.HACKBENCH: ("hackbench", "rt-tests"),
    PayloadKind.CYCLICTEST: ("cyclictest", "rt-tests"),
    PayloadKind.PERF_MESSAGING: ("perf", "linux-perf"),
    PayloadKind.PERF_PIPE: ("perf", "linux-perf"),
}
#: Kernel options a payload cannot measure without (it would not fail: it
#: would measure something else). A kernel that lacks one skips the run.
KERNEL_NEEDS: dict[PayloadKind, tuple[tuple[str, str], ...]] = {
    PayloadKind.CYCLICTEST: (
        ("CONFIG_HIGH_RES_TIMERS", "without it cyclictest measures the 1 ms tick"),
    ),
}
#: Options the agent adds itself (its report file); a user may not.
RESERVED = {
    PayloadKind.STRESS_NG: ("--yaml", "-Y", "--timeout", "-t"),
    PayloadKind.CYCLICTEST: ("--json", "-D", "--duration"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Payload:
    """What to run. Build one with the constructors, e.g.
    ``Payload.hackbench(groups=4, loops=200)``."""

    kind: PayloadKind
    name: str
    #: Arguments after the program (for COMMAND: the whole command).
    args: tuple[str, ...] = ()
    until: Until = Until.EXIT
    #: COMMAND only: ``module:function`` taking (stdout, stderr) and
    #: returning ``{metric: number}``; without one, only the exit code counts.
    parser: str = ""

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise ConfigError(
                f"payload name {self.name!r} must be 1-32 of a-z 0-9 _ - (starting with a letter)"
            )
        if len(self.args) > MAX_ARGS or any(
            not isinstance(a, str) or len(a) > MAX_ARG or "\0" in a for a in self.args
        ):
            raise ConfigError(
                f"payload {self.name}: at most {MAX_ARGS} arguments of at most {MAX_ARG} "
                "characters, no NUL"
            )
        if self.kind is PayloadKind.COMMAND and not self.args:
            raise ConfigError(f"payload {self.name}: a command needs at least its program")
        if self.parser and (
            self.kind is not PayloadKind.COMMAND or not PARSER_RE.fullmatch(self.parser)
        ):
            raise ConfigError(
                f"payload {self.name}: parser {self.parser!r} must be 'module:function' "
                "and is for commands only"
            )
        bad = [a for a in self.args if a.split("=", 1)[0] in RESERVED.get(self.kind, ())]
        if bad:
            raise ConfigError(
                f"payload {self.name}: ktstr sets {', '.join(bad)} itself (its report file "
                "and run length); remove them"
            )

    @property
    def program(self) -> str:
        return self.args[0] if self.kind is PayloadKind.COMMAND else PROGRAMS[self.kind][0]

    @property
    def package(self) -> str:
        """The Debian package that provides the program ("" for commands)."""
        return PROGRAMS[self.kind][1] if self.kind in PROGRAMS else ""

    # -- constructors ----------------------------------------------------------
    @classmethod
    def stress_ng(cls, *args: str, name: str = "stress-ng") -> Payload:
        """stress-ng with stressors and options as given (``"--cpu", "0"``:
        one instance per CPU); metrics per stressor from its YAML report."""
        if not any(a.startswith("--") and a not in ("--metrics", "--metrics-brief") for a in args):
            raise ConfigError(f"payload {name}: stress-ng needs at least one stressor (--cpu 1)")
        return cls(kind=PayloadKind.STRESS_NG, name=name, args=tuple(args), until=Until.STOPPED)

    @classmethod
    def hackbench(
        cls,
        *,
        groups: int = 4,
        loops: int = 100,
        fds: int = 20,
        pipe: bool = False,
        threads: bool = False,
        name: str = "hackbench",
    ) -> Payload:
        """rt-tests' hackbench, once, to completion; metric ``time_s``."""
        _positive(name, groups=groups, loops=loops, fds=fds)
        args = ["-g", str(groups), "-l", str(loops), "-f", str(fds)]
        args += ["-p"] if pipe else []
        args += ["-T"] if threads else []
        return cls(kind=PayloadKind.HACKBENCH, name=name, args=tuple(args))

    @classmethod
    def cyclictest(
        cls,
        *,
        threads: int = 1,
        interval_us: int = 1000,
        priority: int = 0,
        name: str = "cyclictest",
    ) -> Payload:
        """rt-tests' cyclictest until its cgroup stops: per-thread and overall
        min/avg/max wake-up latency from its JSON report. ``priority`` 0 runs
        SCHED_OTHER (the scheduler under test places it); 1-99 SCHED_FIFO."""
        _positive(name, threads=threads, interval_us=interval_us)
        if not 0 <= priority <= 99:
            raise ConfigError(f"payload {name}: priority must be 0..99, got {priority}")
        args = ["-t", str(threads), "-i", str(interval_us), "-d", "0", "-p", str(priority)]
        return cls(
            kind=PayloadKind.CYCLICTEST, name=name, args=(*args, "-m", "-q"), until=Until.STOPPED
        )

    @classmethod
    def perf_messaging(
        cls,
        *,
        groups: int = 4,
        loops: int = 100,
        threads: bool = False,
        pipe: bool = False,
        name: str = "perf-messaging",
    ) -> Payload:
        """``perf bench sched messaging`` to completion; metric ``time_s``."""
        _positive(name, groups=groups, loops=loops)
        args = ["bench", "sched", "messaging", "-g", str(groups), "-l", str(loops)]
        args += ["-t"] if threads else []
        args += ["-p"] if pipe else []
        return cls(kind=PayloadKind.PERF_MESSAGING, name=name, args=tuple(args))

    @classmethod
    def perf_pipe(
        cls, *, loops: int = 100_000, threads: bool = False, name: str = "perf-pipe"
    ) -> Payload:
        """``perf bench sched pipe`` to completion: ``time_s``,
        ``usecs_per_op``, ``ops_per_s``."""
        _positive(name, loops=loops)
        args = ["bench", "sched", "pipe", "-l", str(loops)] + (["-T"] if threads else [])
        return cls(kind=PayloadKind.PERF_PIPE, name=name, args=tuple(args))

    @classmethod
    def command(cls, *argv: str, name: str, parser: Any = "", until: Until = Until.EXIT) -> Payload:
        """Any command. ``parser`` is a module-level function (or its
        ``module:function`` name) called on the host with (stdout, stderr)."""
        return cls(
            kind=PayloadKind.COMMAND,
            name=name,
            args=tuple(argv),
            until=until,
            parser=parser_ref(parser, name),
        )


def parser_ref(parser: Any, name: str = "") -> str:
    """A function -> ``/its/file.py:qualname``: a test module has another
    name in the guest than on the host, its file the same path. Lambdas and
    nested functions have no such name and are refused."""
    if isinstance(parser, str):
        return parser
    qual = getattr(parser, "__qualname__", "")
    code = getattr(parser, "__code__", None)
    if not callable(parser) or code is None or not qual or "<" in qual:
        raise ConfigError(
            f"payload {name}: parser must be a module-level function (or 'module:function'), "
            f"got {parser!r}"
        )
    return f"{os.path.realpath(code.co_filename)}:{qual}"


def _positive(name: str, **values: int) -> None:
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"payload {name}: {k} must be an integer >= 1, got {v!r}")
