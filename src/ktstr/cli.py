"""Command line. The only module that exits; a thin adapter over the library."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ktstr.errors import ConfigError, Interrupted, KtstrError, Terminated
from ktstr.evaluate.topology import topology_mismatches
from ktstr.evaluate.verdict import Status
from ktstr.host import kernel as kern
from ktstr.host.kernel_build import BuildRequest, build_kernel
from ktstr.host.results import (
    check_writable_dir,
    check_writable_file,
    new_run_dir,
    results_root,
    write_private,
)
from ktstr.host.signals import terminate_like_interrupt
from ktstr.protocol.messages import MessageKind
from ktstr.report import to_junit, to_ktap, to_text
from ktstr.runner import BootRequest, SchedulerRun, execute, run_guest, scheduler_binary
from ktstr.spec.catalog import CATALOG, SCENARIOS
from ktstr.spec.checks import DEFAULTS, Thresholds, merge, scaled, timing_scale
from ktstr.spec.scenario import Scenario, resolve
from ktstr.spec.scheduler import Scheduler, load_scheduler
from ktstr.spec.topology import PRESET_LIST, Topology

log = logging.getLogger("ktstr")


class Parser(argparse.ArgumentParser):
    """Bad input: one line naming what was wrong and where help is, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def finite(lo: float = 0.0, *, strict: bool = True) -> Any:
    """argparse type: a finite number > lo (>= lo unless strict)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < lo or (strict and value == lo):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be a finite number {'>' if strict else '>='} {lo:g}"
            )
        return value

    return parse


def count(lo: int = 0, hi: int = 1 << 20) -> Any:
    """argparse type: an integer in lo..hi."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text!r} must be in {lo}..{hi}")
        return value

    return parse


def _add_vm_args(p: argparse.ArgumentParser, default_topology: str = "1n2l2c1t") -> None:
    p.add_argument(
        "--kernel",
        help="kernel dir, image, or cache entry (default: $KTSTR_KERNEL, then the newest cached)",
    )
    p.add_argument(
        "--topology",
        default=default_topology,
        help="NnNlNcNt shape or preset name (default %(default)s)",
    )
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    p.add_argument(
        "--memory",
        type=count(0, 1 << 22),
        default=0,
        metavar="MB",
        help="guest RAM (default: auto)",
    )
    p.add_argument("--boot-timeout", type=finite(), default=120.0, metavar="S")
    p.add_argument(
        "--append",
        action="append",
        default=[],
        metavar="PARAM",
        help="extra kernel command line parameter (repeatable)",
    )


def _boot_request(args: argparse.Namespace, job: dict[str, object], **kw: object) -> BootRequest:
    topology = Topology.parse(args.topology)  # cheap input first
    return BootRequest(
        kernel=kern.resolve_kernel(args.kernel),
        topology=topology,
        job=job,
        accel=None if args.accel == "auto" else args.accel,
        memory_mb=args.memory,
        boot_timeout=args.boot_timeout,
        cmdline_extra=tuple(args.append),
        **kw,  # type: ignore[arg-type]
    )


def cmd_probe(args: argparse.Namespace) -> int:
    req = _boot_request(args, {"mode": "probe"}, name="probe")
    print(
        f"booting {req.kernel.version} at {req.topology} ({req.topology.cpus} vCPUs)...", flush=True
    )
    run = run_guest(req)
    run.raise_for_crash()
    print(f"accelerator: {run.accel.describe()}; QEMU {run.qemu.version_str}")
    for w in run.warnings:
        print(f"note: {w}")
    t = run.timings
    print(
        f"kernel start +{t.kernel_start or 0:.2f}s, agent ready +{t.ready or 0:.2f}s, "
        f"QEMU exit +{t.qemu_exit or 0:.2f}s"
    )
    seen = run.result("topology")
    if seen is None:
        print("FAIL: the guest sent no topology report", file=sys.stderr)
        return 1
    problems = topology_mismatches(req.topology, seen.data)
    for p in problems:
        print(f"  mismatch: {p}")
    verdict = "PASS" if not problems else "FAIL"
    print(
        f"{verdict}: guest sees {req.topology.numa_nodes} NUMA node(s), {req.topology.llcs} "
        f"LLC(s), {req.topology.cores} core(s), {req.topology.cpus} CPU(s)"
        + ("" if not problems else " -- NOT as declared")
    )
    return 0 if not problems else 1


def cmd_shell(args: argparse.Namespace) -> int:
    if args.exec:
        # A command may run as long as it likes (Ctrl-C ends it): no idle limit.
        req = _boot_request(
            args, {"mode": "exec", "command": args.exec}, name="exec", ready_timeout=float("inf")
        )

        def echo(kind: MessageKind, text: str) -> None:
            stream = sys.stdout if kind is MessageKind.STDOUT else sys.stderr
            stream.write(text)
            stream.flush()

        run = run_guest(req, on_text=echo)
        run.raise_for_crash()
        if run.evidence.malformed_count or run.exit_code is None:
            raise KtstrError("the guest did not report a valid exit status for the command")
        return run.exit_code
    if not sys.stdin.isatty():
        raise KtstrError(
            "ktstr shell needs a terminal",
            hint="use 'ktstr shell --exec CMD' to run a command without one",
        )
    req = _boot_request(args, {"mode": "shell"}, name="shell", interactive=True)
    print("booting; the shell runs as root in the guest; 'exit' powers it off", flush=True)
    run = run_guest(req)
    run.raise_for_crash()
    return run.exit_code or 0


def cmd_list(args: argparse.Namespace) -> int:
    for sc in CATALOG:
        print(f"{sc.name:18} {sc.description}")
    return 0


def _scheduler_def(args: argparse.Namespace) -> Scheduler | None:
    """``--scheduler FILE.py:NAME`` names a Scheduler definition."""
    value = getattr(args, "scheduler", None)
    if not value or ":" not in value:
        return None
    return load_scheduler(value)


def _chain(scenario: Scenario | None, args: argparse.Namespace) -> Thresholds:
    """defaults -> scheduler definition -> scenario -> --threshold."""
    sdef = _scheduler_def(args)
    return merge(
        DEFAULTS,
        sdef.thresholds if sdef else None,
        scenario.thresholds if scenario else None,
        Thresholds.parse(args.threshold),
    )


def _check_outputs(args: argparse.Namespace) -> Path:
    """Where results go, checked before any VM boots."""
    root = Path(args.results) if args.results else results_root()
    check_writable_dir(root, "--results" if args.results else "results directory")
    if args.junit:
        check_writable_file(Path(args.junit), "--junit")
    return root


def _scheduler_run(args: argparse.Namespace, kernel: kern.Kernel) -> SchedulerRun | None:
    sdef = _scheduler_def(args)
    if sdef is not None:
        near = Path(args.scheduler.rsplit(":", 1)[0]).parent
        return SchedulerRun(
            binary=scheduler_binary(sdef.binary, kernel, near=near),
            args=(*sdef.args, *args.sched_args),
        )
    if args.scheduler:
        return SchedulerRun(
            binary=scheduler_binary(args.scheduler, kernel), args=tuple(args.sched_args)
        )
    return None


def cmd_run(args: argparse.Namespace) -> int:
    names = args.scenarios or ["steady"]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ConfigError(
            f"unknown scenario(s): {', '.join(unknown)}", hint="'ktstr list' shows the catalog"
        )
    for n in names:
        _chain(SCENARIOS[n], args)  # bad --threshold fails before any boot
    root = _check_outputs(args)
    base = dataclasses.replace(_boot_request(args, {}, name="run"), num_snapshots=args.snapshots)
    plans = [resolve(SCENARIOS[n], base.topology, args.duration) for n in names]
    sched = _scheduler_run(args, base.kernel)
    label = f"{sched.name} {' '.join(sched.args)}".strip() if sched else "EEVDF (no scheduler)"
    records = []
    for plan in plans:
        print(
            f"== {plan.scenario}: {base.topology} ({base.topology.cpus} vCPUs), "
            f"{plan.duration_s:g}s, {label}",
            flush=True,
            file=sys.stderr if args.ktap else sys.stdout,
        )
        out_dir = new_run_dir(root, f"{plan.scenario}-{base.topology}")
        rec = execute(
            dataclasses.replace(base, name=plan.scenario),
            plan,
            sched,
            _chain(SCENARIOS[plan.scenario], args),
            out_dir,
        )
        records.append(rec)
        if not args.ktap:
            print(to_text(rec))
            print(f"result: {out_dir / 'result.json'}", flush=True)
    if args.ktap:
        sys.stdout.write(to_ktap(records))
    if args.junit:
        write_private(Path(args.junit), to_junit(records))
    failed = [r.test for r in records if r.status is Status.FAIL]
    if failed and not args.ktap:
        print(
            f"{len(failed)} of {len(records)} failed; re-run one with: "
            f"{_rerun_command(args, failed[0])}"
        )
    return 1 if failed else 0


def _rerun_command(args: argparse.Namespace, scenario: str) -> str:
    argv = ["ktstr", "run", scenario, "--topology", args.topology]
    if args.kernel:
        argv += ["--kernel", args.kernel]
    if args.duration is not None:
        argv += ["--duration", f"{args.duration:g}"]
    for t in args.threshold:
        argv += ["--threshold", t]
    if args.scheduler:
        argv += ["--scheduler", args.scheduler]
        if args.sched_args:
            argv += ["--", *args.sched_args]
    return shlex.join(argv)


def cmd_show_thresholds(args: argparse.Namespace) -> int:
    scenario = None
    if args.scenario:
        scenario = SCENARIOS.get(args.scenario)
        if scenario is None:
            raise ConfigError(
                f"unknown scenario {args.scenario!r}", hint="'ktstr list' shows the catalog"
            )
    chain = _chain(scenario, args)
    tcg = timing_scale(True, Topology.parse(args.topology).cpus, os.cpu_count() or 1)
    print(
        f"thresholds for {args.scenario or 'any scenario'} (defaults -> scheduler -> "
        "scenario -> --threshold):"
    )
    scaled_chain = scaled(chain, tcg)
    for f in dataclasses.fields(Thresholds):
        value = getattr(chain, f.name)
        shown = "off" if value in (None, False) else value
        extra = ""
        if value not in (None, False, True) and getattr(scaled_chain, f.name) != value:
            extra = f"   (under TCG here: {getattr(scaled_chain, f.name):g}; {tcg.reason})"
        print(f"  {f.name:20} {shown}{extra}")
    return 0


def cmd_gauntlet(args: argparse.Namespace) -> int:
    """The gauntlet is pytest's: collect (--list) or run the expansion."""
    import pytest

    argv = [
        *args.paths,
        "--gauntlet",
        "-p",
        "no:cacheprovider",
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
    ]
    if args.list:
        argv += ["--collect-only", "-q"]
    if args.budget is not None:
        argv += ["--budget", f"{args.budget:g}"]
    if args.pairwise:
        argv.append("--pairwise")
    code = int(pytest.main(argv))
    return 0 if code == 0 else 1 if code == 1 else 2


def cmd_topologies(args: argparse.Namespace) -> int:
    for p in PRESET_LIST:
        t = p.topology
        print(
            f"{p.name:18} {t.name:11} {t.cpus:4} cpus  {t.llcs:2} llcs  {t.numa_nodes} nodes"
            f"  {'smt' if t.smt else '   '}  {p.description}"
        )
    return 0


def cmd_kernel(args: argparse.Namespace) -> int:
    action = args.kernel_cmd
    if action == "list":
        entries = kern.cached_kernels()
        if not entries:
            print(f"no kernels cached in {kern.cache_root()}")
        for e in entries:
            k = kern.load_kernel(e)
            print(f"{e.name:48} {k.version:12} {k.image.name}")
        return 0
    if action == "path":
        print(kern.resolve_kernel(args.kernel).directory)
        return 0
    if action == "clean":
        removed, busy = kern.clean_cache(args.keep)
        for e in removed:
            print(f"removed {e}")
        for e in busy:
            print(f"kept {e}: a running VM uses it")
        return 0
    if action == "import":
        dest = kern.import_kernel(Path(args.dir))
        k = kern.load_kernel(dest)
        for w in kern.check_kernel(k):
            print(f"note: lacks fragment option {w}")
        print(dest)
        return 0
    if action == "check":
        k = kern.resolve_kernel(args.kernel_path)
        warnings = kern.check_kernel(k, strict=args.strict)
        print(f"{k.image}: Linux {k.version}, usable by ktstr (sched_ext, BPF, BTF present)")
        for w in warnings:
            print(f"  note: lacks fragment option {w}")
        return 0
    if action == "build":
        req = BuildRequest(
            source=args.source,
            ref=args.ref,
            jobs=args.jobs,
            schedulers=args.schedulers,
            config_only=args.config_only,
            force=args.force,
        )
        print(build_kernel(req))
        return 0
    raise AssertionError(action)


def _add_kernel_parser(sub: Any) -> None:
    k = sub.add_parser("kernel", help="build, import, check and cache kernels")
    ks = k.add_subparsers(dest="kernel_cmd", required=True)
    ks.add_parser("list", help="cached kernels, newest first")
    kp = ks.add_parser("path", help="print the resolved kernel directory")
    kp.add_argument("--kernel")
    kc = ks.add_parser("clean", help="remove all but the newest N cached kernels")
    kc.add_argument("--keep", type=count(0), default=1)
    ki = ks.add_parser("import", help="adopt a prebuilt kernel directory into the cache")
    ki.add_argument("dir")
    kk = ks.add_parser("check", help="is this kernel usable by ktstr?")
    kk.add_argument("kernel_path", nargs="?", metavar="KERNEL")
    kk.add_argument("--strict", action="store_true", help="also require every fragment option")
    kb = ks.add_parser("build", help="configure and build a kernel into the cache")
    kb.add_argument("source", help="source tree, tarball (.tar.xz/.tar.gz/...), or git URL")
    kb.add_argument("--ref", help="git ref to check out (with a git URL)")
    kb.add_argument(
        "-j", "--jobs", type=count(0, 4096), default=0, help="parallel jobs (default: nproc)"
    )
    kb.add_argument(
        "--schedulers", action="store_true", help="also build tools/sched_ext example schedulers"
    )
    kb.add_argument(
        "--config-only", action="store_true", help="stop after configuring and verifying .config"
    )
    kb.add_argument("--force", action="store_true", help="rebuild even if cached")
    k.set_defaults(func=cmd_kernel)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ktstr", description="test Linux schedulers in VMs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every subprocess")
    parser.add_argument("--debug", action="store_true", help="tracebacks on errors")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("probe", help="boot a VM and verify the guest sees the declared topology")
    _add_vm_args(p)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("shell", help="interactive shell in a VM, or --exec CMD")
    _add_vm_args(p, "1n1l2c1t")
    p.add_argument("--exec", metavar="CMD", help="run CMD in the guest; exit with its status")
    p.set_defaults(func=cmd_shell)

    p = sub.add_parser(
        "run", help="run scenarios in VMs (one VM each); -- ARGS go to the scheduler"
    )
    _add_vm_args(p)
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="default: steady")
    p.add_argument(
        "--duration",
        type=finite(),
        default=None,
        metavar="S",
        help="workload seconds (default: the scenario's)",
    )
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a check threshold (or NAME=off); repeatable",
    )
    p.add_argument(
        "--results",
        metavar="DIR",
        help="results directory (default: $KTSTR_RESULTS or ~/.local/state/ktstr/results)",
    )
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML here")
    p.add_argument("--ktap", action="store_true", help="print KTAP v1 instead of text")
    p.add_argument(
        "--snapshots",
        type=count(0, 64),
        default=0,
        metavar="N",
        help="freeze the guest N times (10-90%% of the workload) and capture its "
        "vCPU registers into snapshots.json",
    )
    p.add_argument(
        "--scheduler",
        metavar="PATH|NAME|FILE.py:DEF",
        help="scheduler binary (a path, or a name next to the kernel or on PATH), or a "
        "Scheduler definition in a Python file; default: none (EEVDF)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("show-thresholds", help="print the resolved check thresholds")
    p.add_argument("scenario", nargs="?", metavar="SCENARIO")
    p.add_argument("--topology", default="1n2l2c1t", help="for the TCG scaling shown")
    p.add_argument(
        "--scheduler",
        metavar="FILE.py:NAME",
        help="include this Scheduler definition's threshold layer",
    )
    p.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE")
    p.set_defaults(func=cmd_show_thresholds)

    p = sub.add_parser(
        "gauntlet",
        help="expand @ktstr_test files across presets x flag "
        "profiles (--list shows what would run)",
    )
    p.add_argument("paths", nargs="*", default=["."], metavar="PATH")
    p.add_argument("--list", action="store_true", help="only list the test ids")
    p.add_argument("--budget", type=finite(), metavar="SECONDS")
    p.add_argument("--pairwise", action="store_true")
    p.set_defaults(func=cmd_gauntlet)

    p = sub.add_parser("list", help="list the canned scenarios")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("topologies", help="list topology presets")
    p.set_defaults(func=cmd_topologies)

    _add_kernel_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    sched_args: list[str] = []
    if "--" in argv:  # everything after -- belongs to the scheduler
        cut = argv.index("--")
        argv, sched_args = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    args.sched_args = sched_args
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    terminate_like_interrupt()
    try:
        return int(args.func(args))
    except BrokenPipeError:  # e.g. `ktstr list | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        err: KtstrError = Interrupted(f"{what}; VMs stopped and temporary files removed")
        print(f"ktstr: {err}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else err.exit_code
    except KtstrError as err:
        if args.debug:
            log.exception("error")
        print(f"ktstr: error: {err}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return err.exit_code
    except Exception as exc:  # a bug: one line, the traceback only with --debug
        if args.debug:
            log.exception("internal error")
        print(f"ktstr: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hint: this is a ktstr bug; --debug shows the traceback", file=sys.stderr)
        return 2
