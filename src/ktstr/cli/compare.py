"""``ktstr compare A_RESULTS B_RESULTS``: did B change anything, and can we
trust that? (evaluate/compare.py has the statistics.)"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from ktstr.errors import ConfigError


def load(path: Path) -> list[dict[str, Any]]:
    """Every result.json under ``path`` (or ``path`` itself)."""
    if not path.exists():
        raise ConfigError(f"no results at {path}", hint="give a results directory or result.json")
    files = [path] if path.is_file() else sorted(path.rglob("result.json"))
    docs = []
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and str(doc.get("schema", "")).startswith("ktstr.result/"):
            docs.append(doc)
    return docs


def cmd_compare(args: argparse.Namespace) -> int:
    from ktstr.evaluate.compare import compare, gate_failures, side_label, table

    a, b = load(Path(args.a)), load(Path(args.b))
    for side, docs in (("A", a), ("B", b)):
        if len(docs) < 2:
            raise ConfigError(
                f"side {side} has {len(docs)} result(s); a comparison needs at least 2 runs "
                "of a case on each side",
                hint="ktstr run --repeat N",
            )
    for g in args.fail_on:
        if not re.fullmatch(r"[^:]+:\+?[0-9]+(\.[0-9]+)?%?", g):
            raise ConfigError(
                f"bad --fail-on {g!r}: expected METRIC_GLOB:+PERCENT% (*.max_gap_ms:+10%)"
            )
    changes = compare(a, b)
    failures = gate_failures(changes, args.fail_on)
    if args.json:
        print(
            json.dumps(
                {
                    "a": side_label(a),
                    "b": side_label(b),
                    "failures": failures,
                    "changes": [dataclasses.asdict(c) for c in changes],
                },
                indent=2,
            )
        )
    else:
        print(f"A: {side_label(a)} ({len(a)} runs)\nB: {side_label(b)} ({len(b)} runs)")
        print("\n".join(table(changes)) if changes else "no case with >= 2 runs on both sides")
        sig = [c for c in changes if c.verdict != "no significant change"]
        print(
            f"\n{len(changes)} metrics compared, {len(sig)} significant "
            f"({sum(c.verdict == 'worse' for c in sig)} worse)"
            + (f"; gates failed: {'; '.join(failures)}" if failures else "")
        )
    return 1 if failures else 0


def add_compare_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="A/B: compare two sets of results (result.json files)")
    p.add_argument("a", metavar="A_RESULTS")
    p.add_argument("b", metavar="B_RESULTS")
    p.add_argument(
        "--fail-on",
        action="append",
        default=[],
        metavar="METRIC:+PCT%",
        help="exit 1 on a significant change worse than PCT%% (metric glob)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)
