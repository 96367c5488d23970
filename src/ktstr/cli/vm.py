"""``ktstr probe`` and ``ktstr shell``: a VM without a verdict."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ktstr.cli.args import add_vm_args, boot_request
from ktstr.errors import KtstrError
from ktstr.evaluate.topology import topology_mismatches
from ktstr.protocol.messages import MessageKind
from ktstr.runner import run_guest


def cmd_probe(args: argparse.Namespace) -> int:
    req = boot_request(args, {"mode": "probe"}, name="probe")
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
        req = boot_request(
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
    req = boot_request(args, {"mode": "shell"}, name="shell", interactive=True)
    print("booting; the shell runs as root in the guest; 'exit' powers it off", flush=True)
    run = run_guest(req)
    run.raise_for_crash()
    return run.exit_code or 0


def add_vm_parsers(sub: Any) -> None:
    p = sub.add_parser("probe", help="boot a VM and verify the guest sees the declared topology")
    add_vm_args(p)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("shell", help="interactive shell in a VM, or --exec CMD")
    add_vm_args(p, "1n1l2c1t")
    p.add_argument("--exec", metavar="CMD", help="run CMD in the guest; exit with its status")
    p.set_defaults(func=cmd_shell)
