"""Command line. The only module that exits; a thin adapter over the library.

Each subcommand lives with its handlers: ``vm`` (probe, shell), ``run`` (run,
show-thresholds), ``kernel``; the rest is here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ktstr.cli.args import Parser, count, finite, fraction
from ktstr.cli.compare import add_compare_parser
from ktstr.cli.kernel import add_kernel_parser
from ktstr.cli.kselftest import add_kselftest_parser
from ktstr.cli.run import add_run_parsers
from ktstr.cli.snapshot import add_snapshot_parser
from ktstr.cli.verifier import add_verifier_parser
from ktstr.cli.vm import add_vm_parsers
from ktstr.errors import Interrupted, KtstrError, Terminated
from ktstr.host.signals import terminate_like_interrupt
from ktstr.spec.catalog import CATALOG
from ktstr.spec.scenario import Scenario
from ktstr.spec.topology import PRESET_LIST

log = logging.getLogger("ktstr")


def cmd_list(args: argparse.Namespace) -> int:
    """The catalog by group: each scenario, what it exposes, and the
    thresholds it sets over ktstr's defaults."""
    groups: dict[str, list[Scenario]] = {}
    for sc in CATALOG:
        groups.setdefault(sc.group or "other", []).append(sc)
    for group, scenarios in groups.items():
        print(f"{group}:")
        for sc in scenarios:
            own = ", ".join(f"{k}={'off' if v is False else v}" for k, v in
                            sc.thresholds.active().items())  # fmt: skip
            print(f"  {sc.name:22} {sc.description}" + (f" [{own}]" if own else ""))
    print(f"{len(CATALOG)} scenarios; thresholds: ktstr show-thresholds SCENARIO")
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
    for k in args.kernel:
        argv += ["--ktstr-kernel", k]
    if args.repeat > 1:
        argv += ["--ktstr-repeat", str(args.repeat)]
    if args.accept_flake_rate:
        argv += ["--ktstr-accept-flake-rate", repr(args.accept_flake_rate)]
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


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ktstr", description="test Linux schedulers in VMs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every subprocess")
    parser.add_argument("--debug", action="store_true", help="tracebacks on errors")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_vm_parsers(sub)
    add_run_parsers(sub)
    add_kselftest_parser(sub)
    add_verifier_parser(sub)
    add_compare_parser(sub)
    p = sub.add_parser(
        "gauntlet",
        help="expand @ktstr_test files across presets x flag "
        "profiles (--list shows what would run)",
    )
    p.add_argument("paths", nargs="*", default=["."], metavar="PATH")
    p.add_argument("--list", action="store_true", help="only list the test ids")
    p.add_argument("--budget", type=finite(), metavar="SECONDS")
    p.add_argument("--pairwise", action="store_true")
    p.add_argument(
        "--kernel", action="append", default=[], metavar="KERNEL",
        help="a kernel of the matrix (repeatable; default: the newest cached)",
    )  # fmt: skip
    p.add_argument("--repeat", type=count(1, 1000), default=1, metavar="N",
                   help="run every case N times: pass rates, not retries")  # fmt: skip
    p.add_argument(
        "--accept-flake-rate", type=fraction, default=0.0, metavar="R",
        help="with --repeat: exit 0 if no case failed more than R (0..1) of its runs",
    )  # fmt: skip
    p.set_defaults(func=cmd_gauntlet)

    p = sub.add_parser("list", help="list the canned scenarios")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("topologies", help="list topology presets")
    p.set_defaults(func=cmd_topologies)

    add_kernel_parser(sub)
    add_snapshot_parser(sub)
    return parser


def _ignore_further_signals() -> None:
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    interactive = argv is None
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
        if interactive:  # the real command: cleanup is done, another Ctrl-C changes nothing
            _ignore_further_signals()
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
