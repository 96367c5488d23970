"""``ktstr kernel``: build, import, check and cache kernels."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ktstr.cli.args import count
from ktstr.errors import KtstrError
from ktstr.host import kernel as kern
from ktstr.host.kernel_build import BuildRequest, build_kernel


def cmd_kernel(args: argparse.Namespace) -> int:
    action = args.kernel_cmd
    if action == "list":
        entries = kern.cached_kernels()
        if not entries:
            print(f"no kernels cached in {kern.cache_root()}")
        for e in entries:
            print(_describe(e))
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


def _describe(entry: Path) -> str:
    """One cache entry: version, where it came from, sched_ext, what check says."""
    import json

    try:
        k = kern.load_kernel(entry)
    except KtstrError as exc:
        return f"{entry.name:40} unusable: {exc}"
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError):
        meta = {}
    source = f"{meta.get('kind', '?')} from {meta.get('source', '?')}"
    try:
        notes = kern.check_kernel(k)
        check = "ok" if not notes else f"ok, lacks {len(notes)} fragment option(s)"
        scx = "sched_ext"
    except KtstrError as exc:
        check = f"unusable: {str(exc)[:80]}"
        scx = "no sched_ext" if "SCHED_CLASS_EXT" in str(exc) else "sched_ext?"
    extras = [x for x in ("schedulers", "selftests") if (entry / x).is_dir()]
    return (
        f"{entry.name:40} {k.version:10} {scx:10} {check}; "
        f"{' + '.join(extras) or 'no schedulers'}; {source}"
    )


def add_kernel_parser(sub: Any) -> None:
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
