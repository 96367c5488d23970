"""Arguments shared by the commands: one-line errors, finite numbers, the
VM options."""

from __future__ import annotations

import argparse
import math
from typing import Any, NoReturn

from ktstr.host import kernel as kern
from ktstr.runner import BootRequest
from ktstr.spec.topology import Topology


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


def fraction(text: str) -> float:
    """argparse type: a number in 0..1 (a rate)."""
    value = float(finite(0.0, strict=False)(text))
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a rate in 0..1 (0.05 = 5 %)")
    return value


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


def add_vm_args(
    p: argparse.ArgumentParser, default_topology: str = "1n2l2c1t", *, many_kernels: bool = False
) -> None:
    if many_kernels:
        p.add_argument(
            "--kernel",
            action="append",
            default=[],
            help="kernel dir, image, or cache entry; repeat for a kernel matrix "
            "(default: $KTSTR_KERNEL, then the newest cached)",
        )
    else:
        p.add_argument(
            "--kernel",
            help="kernel dir, image, or cache entry (default: $KTSTR_KERNEL, then the newest "
            "cached)",
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
    p.add_argument(
        "--boot-timeout",
        type=finite(),
        default=0.0,
        metavar="S",
        help="QEMU start to agent ready (default: scaled with vCPUs and accelerator)",
    )
    p.add_argument(
        "--kaslr",
        action="store_true",
        help="boot the bzImage so the kernel's address is randomized (default: vmlinux, fixed)",
    )
    p.add_argument(
        "--append",
        action="append",
        default=[],
        metavar="PARAM",
        help="extra kernel command line parameter (repeatable)",
    )


def boot_request(
    args: argparse.Namespace,
    job: dict[str, object],
    kernel: kern.Kernel | None = None,
    **kw: object,
) -> BootRequest:
    topology = Topology.parse(args.topology)  # cheap input first
    return BootRequest(
        kernel=kernel or kern.resolve_kernel(args.kernel),
        topology=topology,
        job=job,
        accel=None if args.accel == "auto" else args.accel,
        memory_mb=args.memory,
        boot_timeout=args.boot_timeout,
        kaslr=args.kaslr,
        cmdline_extra=tuple(args.append),
        **kw,  # type: ignore[arg-type]
    )


def add_output_args(p: argparse.ArgumentParser) -> None:
    """Where results go, and the machine-readable forms."""
    p.add_argument(
        "--results",
        metavar="DIR",
        help="results directory (default: $KTSTR_RESULTS or ~/.local/state/ktstr/results)",
    )
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML here")
    p.add_argument("--ktap", action="store_true", help="print KTAP v1 instead of text")
