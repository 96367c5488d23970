"""``ktstr run`` and ``ktstr show-thresholds``: canned scenarios, judged."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from ktstr.cli.args import add_output_args, add_vm_args, boot_request, count, finite, fraction
from ktstr.errors import ConfigError, VmError
from ktstr.evaluate.verdict import Status
from ktstr.host import kernel as kern
from ktstr.host.results import (
    check_writable_dir,
    check_writable_file,
    measured_costs,
    new_run_dir,
    results_root,
    write_private,
)
from ktstr.report import (
    RunRecord,
    Trial,
    over_flake_rate,
    pass_rate_line,
    phase_spent,
    phase_totals,
    to_junit,
    to_ktap,
    to_text,
)
from ktstr.runner import (
    BootRequest,
    SchedulerRun,
    check_payload_tools,
    execute,
    scheduler_binary,
)
from ktstr.spec.catalog import SCENARIOS
from ktstr.spec.checks import Thresholds, defaults_for, merge, scaled, timing_scale
from ktstr.spec.plan import Plan, resolve
from ktstr.spec.scenario import Scenario
from ktstr.spec.scheduler import Scheduler, load_scheduler
from ktstr.spec.topology import PRESET_LIST, Topology


def _scheduler_def(args: argparse.Namespace) -> Scheduler | None:
    """``--scheduler FILE.py:NAME`` names a Scheduler definition."""
    value = getattr(args, "scheduler", None)
    if not value or ":" not in value:
        return None
    return load_scheduler(value)


def _chain(
    scenario: Scenario | None, args: argparse.Namespace, *, sched_ext: bool | None = None
) -> Thresholds:
    """defaults (EEVDF's or sched_ext's) -> scheduler definition -> scenario
    -> --threshold."""
    sdef = _scheduler_def(args)
    if sched_ext is None:
        sched_ext = bool(getattr(args, "scheduler", None))
    return merge(
        defaults_for(sched_ext),
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


def topologies(text: str, nr_cpus: int | None, max_vcpus: int | None) -> list[Topology]:
    """``--topology`` of ``ktstr run``: one shape or preset, several
    (comma-separated), or ``presets``: every preset the kernel's NR_CPUS and
    ``--max-vcpus`` allow, small to large."""
    if text == "presets":
        return [p.topology for p in PRESET_LIST
                if p.topology.cpus <= min(nr_cpus or 8192, max_vcpus or 8192)]  # fmt: skip
    return [Topology.parse(t.strip()) for t in text.split(",") if t.strip()]


def cmd_run(args: argparse.Namespace) -> int:
    if args.all and args.scenarios:
        raise ConfigError("--all runs every canned scenario: name none, or drop --all")
    names = list(SCENARIOS) if args.all else args.scenarios or ["steady"]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ConfigError(
            f"unknown scenario(s): {', '.join(unknown)}", hint="'ktstr list' shows the catalog"
        )
    for n in names:
        _chain(SCENARIOS[n], args)  # bad --threshold fails before any boot
    root = _check_outputs(args)
    kernels = [kern.resolve_kernel(k) for k in (args.kernel or [None])]
    topos = topologies(args.topology, min((k.nr_cpus or 8192) for k in kernels), args.max_vcpus)
    if not topos:
        raise ConfigError(f"no topology in {args.topology!r} fits", hint="'ktstr topologies'")
    one = argparse.Namespace(**{**vars(args), "topology": str(topos[0])})
    bases = [
        dataclasses.replace(
            boot_request(one, {}, kernel=k, name="run"), num_snapshots=args.snapshots
        )
        for k in kernels
    ]
    plans = {t: [resolve(SCENARIOS[n], t, args.duration) for n in names] for t in topos}
    for plan in plans[topos[0]]:
        check_payload_tools(plan)
    scheds = [_scheduler_run(args, b.kernel) for b in bases]  # each kernel's own build
    jobs = [
        _Job(dataclasses.replace(base, topology=t), sched, plan, len(kernels) > 1)
        for base, sched in zip(bases, scheds, strict=True)
        for t in topos
        for plan in plans[t]
        for _ in range(args.repeat)
    ]
    records, lost = _run_all(args, jobs, root)
    if args.ktap:
        sys.stdout.write(to_ktap(records))
    if args.junit:
        write_private(Path(args.junit), to_junit(records))
    failed = [r for r in records if r.status is Status.FAIL]
    if len(records) > 1 and not args.ktap and any(r.phases for r in records):
        print(phase_totals([phase_spent(r.phases) for r in records if r.phases]))
    if args.repeat > 1 and not args.ktap:
        print("\n".join(pass_rates(records)))
    if failed and not args.ktap:
        print(
            f"{len(failed)} of {len(records)} failed; re-run one with: "
            + _rerun_command(
                args, failed[0].scenario, failed[0].kernel, len(kernels) > 1, failed[0].topology
            )
        )
    for line in lost:
        print(f"ktstr: no result: {line}", file=sys.stderr)
    if lost:
        return 2  # the host could not carry a run through: not a verdict
    if failed and args.repeat > 1 and args.accept_flake_rate > 0:
        over = over_flake_rate(_trials(records), args.accept_flake_rate)
        print(
            f"over the accepted flake rate {args.accept_flake_rate:.0%}: {'; '.join(over)}"
            if over
            else f"every failure is within the accepted flake rate {args.accept_flake_rate:.0%}"
        )
        return 1 if over else 0
    return 1 if failed else 0


def _trials(records: list[RunRecord]) -> dict[str, list[Trial]]:
    """Runs grouped by case (scenario, topology, kernel)."""
    out: dict[str, list[Trial]] = {}
    for r in records:
        name = f"{r.scenario} [{r.topology}, Linux {r.kernel.get('version', '')}]"
        out.setdefault(name, []).append(Trial.of(r))
    return out


def pass_rates(records: list[RunRecord]) -> list[str]:
    """Per repeated case, its pass rate (report.pass_rate_line)."""
    return ["pass rates (95% Wilson interval):"] + [
        "  " + pass_rate_line(name, runs) for name, runs in _trials(records).items()
    ]


@dataclasses.dataclass(frozen=True)
class _Job:
    base: BootRequest
    sched: SchedulerRun | None
    plan: Plan
    matrix: bool  # several kernels: name the kernel

    def describe(self) -> str:
        s = self.sched
        label = f"{s.name} {' '.join(s.args)}".strip() if s else "EEVDF (no scheduler)"
        t = self.base.topology
        return (f"{self.plan.scenario}: {t} ({t.cpus} vCPUs), {self.plan.duration_s:g}s, {label}"
                + (f", kernel {self.base.kernel.version}" if self.matrix else ""))  # fmt: skip


def _run_all(
    args: argparse.Namespace, jobs: list[_Job], root: Path
) -> tuple[list[RunRecord], list[str]]:
    """Every job, one VM each, ``-j`` at a time, with progress lines."""
    from ktstr.cli.jobs import Hooks, Lost, run_jobs, terminal

    out = sys.stderr if args.ktap else sys.stdout
    measured = measured_costs(root)  # scenario -> seconds its last run took here

    def one(job: _Job) -> RunRecord | Lost:
        tag = f"-{job.base.kernel.version}" if job.matrix else ""
        out_dir = new_run_dir(root, f"{job.plan.scenario}-{job.base.topology}{tag}")
        try:
            return execute(
                dataclasses.replace(job.base, name=job.plan.scenario),
                job.plan,
                job.sched,
                _chain(SCENARIOS[job.plan.scenario], args),
                out_dir,
                monitor_hz=None if args.no_monitor else args.monitor_hz,
            )
        except VmError as exc:
            return Lost.of(job.describe(), exc)

    def done(job: _Job, rec: RunRecord | Lost) -> None:
        if isinstance(rec, Lost):
            print(f"NO RESULT {rec.line()}", file=out)
        elif not args.ktap:
            print(to_text(rec), file=out)
            print(f"result: {Path(rec.artifacts_dir or root) / 'result.json'}", file=out)
        out.flush()

    def estimate(job: _Job) -> float:
        return measured.get(job.plan.scenario, job.plan.duration_s + 10.0)

    hooks = Hooks(
        cpus=lambda j: j.base.topology.cpus,
        describe=_Job.describe,
        estimate=estimate,
        on_start=lambda line: print(f"== {line}", file=out, flush=True),
        on_done=done,
        live=terminal(out),
    )
    results, died = run_jobs(jobs, one, hooks, parallel=args.jobs)
    lost = [r.line() for r in results if isinstance(r, Lost)]
    return [r for r in results if isinstance(r, RunRecord)], lost + died


def _rerun_command(
    args: argparse.Namespace, scenario: str, kernel: dict[str, str], matrix: bool, topology: str
) -> str:
    argv = ["ktstr", "run", scenario, "--topology", topology]
    if matrix:
        argv += ["--kernel", kernel["dir"]]
    elif args.kernel:
        argv += ["--kernel", args.kernel[0]]
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
        if f.name == "payload":
            continue
        value = getattr(chain, f.name)
        shown = "off" if value in (None, False) else "on" if value is True else value
        extra = ""
        if f.name == "max_runnable_wait_ms" and value is True:
            extra = "   (half the sched_ext watchdog timeout)"
        if value not in (None, False, True) and getattr(scaled_chain, f.name) != value:
            extra = f"   (under TCG here: {getattr(scaled_chain, f.name):g}; {tcg.reason})"
        print(f"  {f.name:20} {shown}{extra}")
    for g, sg in zip(chain.payload, scaled_chain.payload, strict=True):
        if g.op != "off":
            under = f"   (under TCG here: {sg.value:g}; {tcg.reason})" if sg != g else ""
            print(f"  {g.describe()}{under}")
    return 0


def add_run_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="run scenarios in VMs (one VM each); -- ARGS go to the scheduler"
    )
    add_vm_args(p, many_kernels=True)
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="default: steady")
    p.add_argument("--all", action="store_true", help="every canned scenario ('ktstr list')")
    p.add_argument(
        "--max-vcpus",
        type=count(1, 8192),
        default=None,
        metavar="N",
        help="--topology takes A,B,... or 'presets' (every preset the kernel fits); "
        "with presets, only those of at most N vCPUs",
    )
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
    add_output_args(p)
    p.add_argument(
        "--repeat",
        type=count(1, 1000),
        default=1,
        metavar="N",
        help="run each scenario N times (N VMs): pass rates instead of retries",
    )
    p.add_argument(
        "-j",
        "--jobs",
        type=count(1, 64),
        default=1,
        metavar="N",
        help="run N VMs at once (scenarios, repeats, kernels), within the shared vCPU budget",
    )
    p.add_argument(
        "--accept-flake-rate",
        type=fraction,
        default=0.0,
        metavar="R",
        help="with --repeat: exit 0 if no case failed more often than R (0..1)",
    )
    p.add_argument(
        "--no-monitor",
        action="store_true",
        help="do not watch the guest kernel from the host (run queues, sched_ext state)",
    )
    p.add_argument(
        "--monitor-hz",
        type=finite(),
        default=10.0,
        metavar="HZ",
        help="monitor samples per second (default %(default)g)",
    )
    p.add_argument(
        "--snapshots",
        type=count(0, 64),
        default=0,
        metavar="N",
        help="freeze the guest N times (10-90%% of the workload) and keep a snapshot "
        "of the scheduler's state each time (snapshot-NN-periodic-K.json)",
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
