"""``ktstr verifier``: the BPF verifier's cost of every program a scheduler
loads, per kernel (one VM per scheduler x kernel)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from ktstr.cli.args import add_vm_args, boot_request
from ktstr.host import kernel as kern


def cmd_verifier(args: argparse.Namespace) -> int:
    from ktstr.evaluate.verifier import as_json, programs, table
    from ktstr.runner import SchedulerRun, run_guest, scheduler_binary, with_scheduler
    from ktstr.runner.judge import ATTACH_TIMEOUT

    kernels = [kern.resolve_kernel(k) for k in (args.kernel or [None])]
    bases = [boot_request(args, {}, kernel=k, name="verifier") for k in kernels]
    cells: dict[str, dict[str, Any]] = {}
    failed = False
    for name in args.schedulers:
        row: dict[str, Any] = {}
        for base in bases:
            sched = SchedulerRun(binary=scheduler_binary(name, base.kernel))
            job = with_scheduler({"mode": "attach", "attach_timeout": ATTACH_TIMEOUT}, sched)
            req = dataclasses.replace(
                base, job=job, ready_timeout=ATTACH_TIMEOUT + 60.0,
                hard_cap=base.boot_timeout + ATTACH_TIMEOUT + 120.0,
            )  # fmt: skip
            print(f"== {name} on Linux {base.kernel.version}", file=sys.stderr, flush=True)
            run = run_guest(req)
            progs = programs(run.evidence)
            se = run.evidence.sched_exit
            if se is not None and se.exit_kind == "not_attached":
                failed = True
                row[base.kernel.version] = {"error": f"not attached: {se.reason}"[:500]}
            else:
                row[base.kernel.version] = progs
        cells[name] = row
    if args.json:
        doc = {s: {k: v if isinstance(v, dict) else as_json(v) for k, v in row.items()}
               for s, row in cells.items()}  # fmt: skip
        print(json.dumps(doc, indent=2))
        return 1 if failed else 0
    for name, row in cells.items():
        print(f"\n{name}: verified instructions (and load time) per program")
        ok = {k: v for k, v in row.items() if not isinstance(v, dict)}
        for k, v in row.items():
            if isinstance(v, dict):
                print(f"  Linux {k}: {v['error']}")
        if ok:
            print("\n".join("  " + ln for ln in table(ok)))
    return 1 if failed else 0


def add_verifier_parser(sub: Any) -> None:
    p = sub.add_parser(
        "verifier",
        help="the BPF verifier's cost of each program of SCHEDULER, per kernel (--kernel repeated)",
    )
    add_vm_args(p, default_topology="1n1l2c1t", many_kernels=True)
    p.add_argument("schedulers", nargs="+", metavar="SCHEDULER", help="name or path")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_verifier)
