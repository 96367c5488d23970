"""``ktstr snapshot show FILE``: print a snapshot (or a run's snapshots)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ktstr.cli.args import count
from ktstr.errors import ConfigError
from ktstr.evaluate.snapshots import Snapshot, SnapshotError
from ktstr.snapshot_report import render


def cmd_snapshot_show(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if path.is_dir():
        path = _pick(path)
    try:
        snap = Snapshot.load(path)
        print(render(snap, map_name=args.map, cpu=args.cpu))
    except SnapshotError as exc:
        raise ConfigError(str(exc), hint="ktstr snapshot show FILE lists the maps it has") from None
    return 0


def _pick(run_dir: Path) -> Path:
    """A results directory: the snapshot that explains its failure, else its last."""
    try:
        doc = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{run_dir} has no readable result.json") from None
    taken = [m for m in doc.get("snapshots") or [] if m.get("file")]
    name = doc.get("explained_by") or (taken[-1]["file"] if taken else None)
    if not name:
        raise ConfigError(f"the run in {run_dir} kept no snapshot")
    return run_dir / str(name)


def add_snapshot_parser(sub: Any) -> None:
    p = sub.add_parser("snapshot", help="read snapshots of a run")
    ssub = p.add_subparsers(dest="snapshot_cmd", required=True)
    show = ssub.add_parser(
        "show",
        help="a snapshot's queues and tasks per CPU and its BPF maps",
        description="FILE is a snapshot-*.json, or a results directory (its explaining "
        "snapshot, else its last)",
    )
    show.add_argument("file", metavar="FILE")
    show.add_argument("--map", metavar="NAME", help="print this BPF map as a table")
    show.add_argument("--cpu", type=count(), metavar="N", help="only this CPU")
    show.set_defaults(func=cmd_snapshot_show)
