"""``ktstr compare A_RESULTS B_RESULTS``: did B change anything, and can we
trust that? (evaluate/compare.py has the statistics.)"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from ktstr.cli.args import add_vm_args, count, finite
from ktstr.errors import ConfigError, VmError
from ktstr.host import kernel as kern
from ktstr.host.results import check_writable_dir, new_run_dir, results_root, write_private


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


def _side(args: argparse.Namespace, which: str) -> tuple[Any, Any]:
    """(BootRequest, SchedulerRun | None) of side ``which`` ("a" or "b")."""
    from ktstr.cli.args import boot_request
    from ktstr.runner import SchedulerRun, scheduler_binary

    kernel = kern.resolve_kernel(getattr(args, f"{which}_kernel") or args.kernel)
    base = boot_request(args, {}, kernel=kernel, name=f"compare-{which}")
    name = getattr(args, f"{which}_scheduler")
    if name in (None, "", "eevdf", "EEVDF"):
        return base, None
    extra = tuple(shlex.split(getattr(args, f"{which}_args") or ""))
    return base, SchedulerRun(binary=scheduler_binary(name, kernel), args=extra)


def run_trials(args: argparse.Namespace, root: Path) -> tuple[Path, Path]:
    """N trials of every scenario on both sides, interleaved (A, B, A, B,
    ...) so that whatever drifts on the host hits both alike; ``-j N`` runs
    N at once (A and B of a trial side by side) within the vCPU budget."""
    from ktstr.cli.jobs import Hooks, Lost, run_jobs, terminal
    from ktstr.cli.run import _chain
    from ktstr.host.results import measured_costs, new_run_dir
    from ktstr.runner import check_payload_tools, execute
    from ktstr.spec.catalog import SCENARIOS
    from ktstr.spec.plan import resolve

    unknown = [n for n in args.items if n not in SCENARIOS]
    if unknown:
        raise ConfigError(f"unknown scenario(s): {', '.join(unknown)}", hint="'ktstr list'")
    sides = {w: _side(args, w) for w in ("a", "b")}
    plans = [resolve(SCENARIOS[n], sides["a"][0].topology, args.duration) for n in args.items]
    for plan in plans:
        check_payload_tools(plan)
    dirs = {w: root / w for w in sides}
    jobs = [(t, plan, w) for t in range(1, args.trials + 1) for plan in plans for w in sides]
    measured = measured_costs(results_root())

    def one(job: tuple[int, Any, str]) -> Any:
        _, plan, w = job
        base, sched = sides[w]
        out = new_run_dir(dirs[w], f"{plan.scenario}-{base.topology}")
        chain = _chain(SCENARIOS[plan.scenario], args, sched_ext=sched is not None)
        try:
            return execute(dataclasses.replace(base, name=plan.scenario), plan, sched, chain, out)
        except VmError as exc:
            return Lost.of(describe(job), exc)

    def describe(job: tuple[int, Any, str]) -> str:
        t, plan, w = job
        sched = sides[w][1]
        label = sched.name if sched else "EEVDF"
        return f"trial {t}/{args.trials} {plan.scenario} {w.upper()}: {label}"

    hooks: Hooks[tuple[int, Any, str], Any] = Hooks(
        cpus=lambda j: sides[j[2]][0].topology.cpus,
        describe=describe,
        estimate=lambda j: measured.get(j[1].scenario, j[1].duration_s + 10.0),
        on_start=lambda line: print(f"== {line}", file=sys.stderr, flush=True),
        on_done=lambda j, rec: None,
        live=terminal(sys.stderr),
    )
    results, died = run_jobs(jobs, one, hooks, parallel=args.jobs)
    lost = [r.line() for r in results if isinstance(r, Lost)] + died
    if lost:
        raise ConfigError(
            f"{len(lost)} trial(s) left no result: {lost[0]}",
            hint="a comparison needs every trial; see the evidence named",
        )
    return dirs["a"], dirs["b"]


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def calibration_file(args: argparse.Namespace) -> Path:
    if args.calibration:
        return Path(args.calibration)
    return results_root() / "calibration.json"


def cmd_calibrate(args: argparse.Namespace) -> int:
    """A against A, interleaved: store each metric's noise for later comparisons."""
    if args.trials < 2:
        raise ConfigError("--calibrate needs --trials N (N >= 2; 5 or more is better)")
    calibrate_side_a(args, args.items)
    return 0


def calibrate_side_a(args: argparse.Namespace, scenarios: list[str]) -> None:
    """Run side A against itself on ``scenarios`` and merge each metric's
    noise into the calibration file, printing the figures."""
    from ktstr.evaluate.compare import calibrate

    a_only = argparse.Namespace(**vars(args))
    a_only.items = scenarios
    a_only.b_scheduler, a_only.b_args, a_only.b_kernel = (
        args.a_scheduler,
        args.a_args,
        args.a_kernel,
    )
    root = Path(args.results) if args.results else results_root()
    check_writable_dir(root, "--results" if args.results else "results directory")
    pa, pb = run_trials(a_only, new_run_dir(root, "calibrate"))
    cal = calibrate(load(pa), load(pb))
    path = calibration_file(args)
    old = _read_calibration(path)
    old.update(cal)
    write_private(path, json.dumps(old, indent=2, sort_keys=True) + "\n")
    for case, per in cal.items():
        print(f"\n{case}: A/A noise (run-to-run CV) and the smallest change detected")
        print(f"  {'metric':30} {'noise':>9} {'A/A change':>11} {'N=5':>9} {'N=10':>9}")
        for m, v in sorted(per.items()):
            f = "{:.1%}" if v["relative"] else "{:.3g}"
            cells = [f.format(v[k] or 0.0) for k in ("noise", "aa_change", "mde_n5", "mde_n10")]
            print(f"  {m[:30]:30} {cells[0]:>9} {cells[1]:>11} {cells[2]:>9} {cells[3]:>9}")
    print(f"\ncalibration: {path}\n")


def _read_calibration(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"unreadable calibration {path}: {exc}",
                          hint="delete it and run ktstr compare --calibrate") from None  # fmt: skip
    return doc if isinstance(doc, dict) else {}


def uncalibrated(args: argparse.Namespace) -> list[str]:
    """The scenarios of a --trials comparison with no stored A/A noise on
    this machine (for side A's topology)."""
    from ktstr.spec.topology import Topology

    topology = Topology.parse(args.topology)
    cal = _read_calibration(calibration_file(args))
    return [n for n in args.items if f"{n} [{topology}]" not in cal]


def cmd_compare(args: argparse.Namespace) -> int:
    from ktstr.evaluate.compare import compare, gate_failures, side_label, table

    if args.calibrate:
        return cmd_calibrate(args)
    if args.trials:
        if args.trials < 2:
            raise ConfigError("--trials must be >= 2: one run a side says nothing about noise")
        first = [] if args.no_calibrate else uncalibrated(args)
        if first:  # first use on this machine: measure A against A once
            print(f"== no A/A noise stored for {', '.join(first)} on this machine: calibrating "
                  f"first ({args.trials} trials a side; --no-calibrate skips)", file=sys.stderr,
                  flush=True)  # fmt: skip
            calibrate_side_a(args, first)
        root = Path(args.results) if args.results else results_root()
        check_writable_dir(root, "--results" if args.results else "results directory")
        pa, pb = run_trials(args, new_run_dir(root, "compare"))
    elif len(args.items) == 2:
        pa, pb = Path(args.items[0]), Path(args.items[1])
    else:
        raise ConfigError(
            "compare needs A_RESULTS B_RESULTS, or SCENARIO... with --trials N",
            hint="ktstr compare a/ b/, or ktstr compare steady --b-scheduler scx_simple --trials 5",
        )
    a, b = load(pa), load(pb)
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
    noise = {
        # A percentage's noise stored as a CV predates comparing it in points.
        case: {
            m: v["noise"]
            for m, v in per.items()
            if _finite(v.get("noise")) and not (m.endswith("_pct") and v.get("relative"))
        }
        for case, per in _read_calibration(calibration_file(args)).items()
        if isinstance(per, dict)
    }
    changes = compare(a, b, noise)
    bare = sorted({c.case for c in changes if c.case not in noise})
    failures = gate_failures(changes, args.fail_on)
    if args.html:
        from ktstr.compare_html import render

        page = render(changes, a, b, (side_label(a), side_label(b)))
        write_private(Path(args.html), page)
    if args.json:
        print(
            json.dumps(
                {
                    "a": side_label(a),
                    "b": side_label(b),
                    "failures": failures,
                    "uncalibrated": bare,
                    "changes": [dataclasses.asdict(c) for c in changes],
                },
                indent=2,
            )
        )
    else:
        print(f"A: {side_label(a)} ({len(a)} runs)\nB: {side_label(b)} ({len(b)} runs)")
        if bare:
            print(f"uncalibrated (p-values alone, no A/A noise floor): {', '.join(bare)}; "
                  "ktstr compare --calibrate SCENARIO --trials N measures it")  # fmt: skip
        print("\n".join(table(changes)) if changes else "no case with >= 2 runs on both sides")
        sig = [c for c in changes if c.verdict != "no significant change"]
        print(
            f"\n{len(changes)} metrics compared, {len(sig)} significant "
            f"({sum(c.verdict == 'worse' for c in sig)} worse)"
            + (f"; gates failed: {'; '.join(failures)}" if failures else "")
        )
    return 1 if failures else 0


def add_compare_parser(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="A/B: compare two sets of results, or run both sides (--trials N) and compare",
    )
    p.add_argument("items", nargs="*", metavar="A_RESULTS B_RESULTS | SCENARIO",
                   help="two results directories, or scenarios to run with --trials")  # fmt: skip
    add_vm_args(p)
    p.add_argument("--trials", type=count(0, 1000), default=0, metavar="N",
                   help="run N trials of each side, interleaved, then compare")  # fmt: skip
    p.add_argument("-j", "--jobs", type=count(1, 64), default=1, metavar="N",
                   help="trials at once (VMs), within the vCPU budget")  # fmt: skip
    p.add_argument("--duration", type=finite(), default=None, metavar="S")
    p.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--results", metavar="DIR", help="where the trials' results go")
    for w in ("a", "b"):
        p.add_argument(f"--{w}-scheduler", metavar="NAME|PATH", help=f"side {w.upper()}'s "
                       "scheduler (default EEVDF)")  # fmt: skip
        p.add_argument(f"--{w}-args", metavar="'ARGS'", help=f"side {w.upper()}'s scheduler args")
        p.add_argument(f"--{w}-kernel", metavar="KERNEL", help=f"side {w.upper()}'s kernel")
    p.add_argument(
        "--fail-on",
        action="append",
        default=[],
        metavar="METRIC:+PCT%",
        help="exit 1 on a significant change worse than PCT%% (metric glob)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="run side A against itself (--trials N) and store each metric's noise",
    )
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="with --trials: do not calibrate scenarios with no stored noise first",
    )
    p.add_argument("--calibration", metavar="FILE",
                   help="noise file (default: RESULTS_ROOT/calibration.json); changes inside "
                   "the noise are never significant")  # fmt: skip
    p.set_defaults(func=cmd_compare)
