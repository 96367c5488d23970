"""``ktstr kselftest``: the kernel's sched_ext selftests, one result each."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ktstr.cli.args import add_output_args, add_vm_args, boot_request, finite
from ktstr.evaluate.verdict import Status
from ktstr.host.results import check_writable_dir, check_writable_file, results_root, write_private
from ktstr.report import to_junit, to_ktap


def cmd_kselftest(args: argparse.Namespace) -> int:
    from ktstr.runner.kselftest import run_kselftest, summary_line

    root = Path(args.results) if args.results else results_root()
    check_writable_dir(root, "--results" if args.results else "results directory")
    if args.junit:
        check_writable_file(Path(args.junit), "--junit")
    base = boot_request(args, {}, name="kselftest")
    records, out = run_kselftest(base, root, list(args.test), args.timeout)
    if args.ktap:
        sys.stdout.write(to_ktap(records))
    else:
        for r in records:
            mark = {Status.PASS: "ok  ", Status.SKIP: "SKIP", Status.FAIL: "FAIL"}[r.status]
            why = r.verdict.findings[0].message if r.status is not Status.PASS else ""
            took = r.durations.get("workload_s", 0.0)
            print(
                f"{mark} {r.test}"
                + (f" ({took:.1f}s)" if took else "")
                + (f": {why}" if why else "")
            )
        print(f"{summary_line(records)}; results: {out}")
    if args.junit:
        write_private(Path(args.junit), to_junit(records, suite="kselftest.sched_ext"))
    return 1 if any(r.status is Status.FAIL for r in records) else 0


def add_kselftest_parser(sub: Any) -> None:
    p = sub.add_parser(
        "kselftest",
        help="run the kernel's sched_ext selftests in a VM; one result per selftest",
    )
    add_vm_args(p, default_topology="1n1l4c1t")
    p.add_argument(
        "-t",
        "--test",
        action="append",
        default=[],
        metavar="NAME",
        help="only selftests whose name contains NAME (repeatable)",
    )
    p.add_argument(
        "--timeout",
        type=finite(),
        default=1200.0,
        metavar="S",
        help="longest the runner may take (default %(default)gs)",
    )
    add_output_args(p)
    p.set_defaults(func=cmd_kselftest)
