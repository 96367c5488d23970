"""Run a judged job in one VM: plan the watchdog, boot, judge, write result.json.

``execute`` runs one canned scenario (``ktstr run``); the pytest plugin calls
``execute_job`` for ``@ktstr_test`` bodies. Either way the verdict comes from
``evaluate`` over what the host planned and what the guest sent, and an
unexpected exception becomes an ``InternalError`` with its traceback kept,
never a bare traceback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from ktstr.errors import (
    ConfigError,
    GuestLostError,
    GuestPanicError,
    InternalError,
    KtstrError,
    VmError,
)
from ktstr.evaluate.account import Expectation, run_data
from ktstr.evaluate.monitor import MonitorJudge, explain
from ktstr.evaluate.placement import Placement, placed
from ktstr.evaluate.verdict import Finding, Outcome, RunData, Status, Verdict, evaluate
from ktstr.evaluate.verifier import programs
from ktstr.host import kconfig
from ktstr.host.kernel import Kernel
from ktstr.host.qemu_argv import Accel
from ktstr.host.results import remove_if_unfinished, write_private
from ktstr.inspect.sample import Sample
from ktstr.protocol.evidence import Evidence
from ktstr.report import RunRecord, write_sidecar
from ktstr.runner.boot import TEARDOWN_GRACE, WORKLOAD_GRACE, BootRequest, GuestRun, prepare
from ktstr.runner.guest import run_guest
from ktstr.runner.monitoring import plan_monitor
from ktstr.runner.snapshots import write_files
from ktstr.runner.timeline import explaining, phases, timeline
from ktstr.spec.checks import Thresholds, scaled, timing_scale
from ktstr.spec.payload import KERNEL_NEEDS
from ktstr.spec.plan import Plan
from ktstr.spec.scenario import OpKind
from ktstr.spec.serde import to_data

#: Longest a scheduler may take to attach, and the slack on top of it before
#: the first scenario must have started.
ATTACH_TIMEOUT = 60.0
READY_SLACK = 60.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerRun:
    """The scheduler under test as the guest starts it (a host path)."""

    binary: Path
    args: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.binary.name

    def info(self) -> dict[str, Any]:
        """How result.json names the scheduler under test (its hash tells two
        builds of one name apart when results are compared)."""
        return {"name": self.name, "binary": str(self.binary), "args": list(self.args),
                "sha256": file_sha256(self.binary)}  # fmt: skip


def host_info() -> dict[str, Any]:
    from ktstr import __version__

    return {"cpus": os.cpu_count() or 0, "ktstr": __version__}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return ""
    return h.hexdigest()


def kernel_info(kernel: Kernel) -> dict[str, str]:
    """How result.json names a kernel: its version, image and cache entry."""
    return {"version": kernel.version, "image": str(kernel.image), "dir": str(kernel.directory)}


def scheduler_binary(name_or_path: str, kernel: Kernel, near: Path | None = None) -> Path:
    """The scheduler's executable: ``name_or_path`` itself, else the name
    looked up next to ``near`` (the tests or definition file), in
    $KTSTR_SCHEDULER (a file or a directory), next to the kernel (built from
    the same tree, so its BTF matches), then on PATH."""
    candidates = [Path(name_or_path).expanduser()]
    if near is not None:
        candidates.append(near / name_or_path)
    env = os.environ.get("KTSTR_SCHEDULER")
    if env:
        candidates += [Path(env) / name_or_path] if Path(env).is_dir() else [Path(env)]
    if kernel.schedulers_dir is not None:
        candidates.append(kernel.schedulers_dir / name_or_path)
    which = shutil.which(name_or_path)
    if which:
        candidates.append(Path(which))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c.resolve()
    places = [str(near)] if near is not None else []
    places += (
        ["$KTSTR_SCHEDULER"]
        + ([str(kernel.schedulers_dir)] if kernel.schedulers_dir else [])
        + ["PATH"]
    )
    raise ConfigError(
        f"scheduler {name_or_path!r} not found (not an executable file; looked in "
        f"{', '.join(places)})",
        hint="pass a path to the scheduler binary, or set $KTSTR_SCHEDULER",
    )


def scenario_job(
    plan: Plan, scheduler: SchedulerRun | None, attach_timeout: float = ATTACH_TIMEOUT
) -> dict[str, Any]:
    job: dict[str, Any] = {
        "mode": "scenario",
        "plan": to_data(plan),
        "attach_timeout": attach_timeout,
        "host_paths": [],
    }
    return with_scheduler(job, scheduler)


def with_scheduler(job: dict[str, Any], scheduler: SchedulerRun | None) -> dict[str, Any]:
    if scheduler is not None:
        job["scheduler"] = {"binary": str(scheduler.binary), "args": list(scheduler.args)}
        job.setdefault("host_paths", []).append(str(scheduler.binary))
    return job


def planned_s(plan: Plan) -> float:
    return sum(s.hold_s for s in plan.steps)


def scenario_request(req: BootRequest, plan: Plan, scheduler: SchedulerRun | None) -> BootRequest:
    """The boot request of a ``ktstr run`` scenario, with the host's watchdog
    plan: the scenario's own length, and an absolute cap of boot + attach +
    workload + graces."""
    job = scenario_job(plan, scheduler)
    job["host_paths"] += list(req.job.get("host_paths", []))
    attach = ATTACH_TIMEOUT if scheduler is not None else 0.0
    total = planned_s(plan)
    return dataclasses.replace(
        req,
        job=job,
        scenario_s=total,
        ready_timeout=attach + READY_SLACK,
        hard_cap=req.boot_timeout + attach + total + WORKLOAD_GRACE + TEARDOWN_GRACE,
    )


def run_scenario(
    req: BootRequest, plan: Plan, scheduler: SchedulerRun | None = None, **kw: Any
) -> GuestRun:
    """Boot a VM, run ``plan`` under ``scheduler`` (None = EEVDF), return what
    came back (unjudged)."""
    return run_guest(scenario_request(req, plan, scheduler), **kw)


def monitor_findings(judge: MonitorJudge) -> tuple[Finding, ...]:
    return tuple(
        Finding(f.check, "fail", f"monitor: {f.message}", {"at_s": round(f.at_s, 3), **f.evidence})
        for f in judge.findings.values()
    )


def _monitor_view(run: GuestRun | None) -> tuple[str, ...]:
    """The monitor's last seconds before the run ended (or the scheduler died)."""
    if run is None or run.monitor is None or run.monitor.result is None:
        return ()
    recent = run.monitor.result.recent
    if not recent:
        return ()
    until = run.evidence.sched_exit_at or recent[-1].t
    return tuple(explain(recent, until))


def _failure_outcome(exc: VmError) -> Outcome:
    if isinstance(exc, GuestPanicError):
        return Outcome(guest_crash=exc.message.removeprefix("guest kernel crashed: "))
    kind = exc.message.split(":", 1)[0] if ":" in exc.message else "guest_lost"
    if " " in kind:
        kind = "guest_lost"
    return Outcome(timeout=(kind, exc.message))


def _internal(exc: BaseException, results_dir: Path) -> InternalError:
    path = results_dir / "internal-error.txt"
    try:
        results_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(path, "".join(traceback.format_exception(exc)))
    except OSError:
        return InternalError(f"internal error: {type(exc).__name__}: {exc}")
    return InternalError(f"internal error: {type(exc).__name__}: {exc}", evidence=path)


def execute_job(
    req: BootRequest,
    *,
    expect: Expectation,
    scheduler: SchedulerRun | None,
    thresholds: Thresholds,
    results_dir: Path,
    test: str,
    scenario: str,
    monitor_hz: float | None = 10.0,
) -> RunRecord:
    """Boot ``req.job`` in one VM and judge it: writes ``results_dir/result.json``
    (and the monitor's samples, ``monitor.json.gz``, unless ``monitor_hz`` is None).

    Infrastructure errors (QEMU cannot start, the guest never boots) raise;
    everything that happens to the guest once it ran is a finding."""
    try:
        return _execute_job(
            req,
            expect,
            scheduler,
            thresholds,
            results_dir,
            names=(test, scenario),
            monitor_hz=monitor_hz,
        )
    except KeyboardInterrupt:
        remove_if_unfinished(results_dir)
        raise
    except KtstrError:
        raise
    except Exception as exc:
        raise _internal(exc, results_dir) from exc


def _execute_job(
    req: BootRequest,
    expect: Expectation,
    scheduler: SchedulerRun | None,
    thresholds: Thresholds,
    results_dir: Path,
    *,
    names: tuple[str, str],
    monitor_hz: float | None,
) -> RunRecord:
    test, scenario = names
    _, accel, qemu, _ = prepare(req)
    # One TCG thread runs every vCPU: the VM effectively has one host CPU.
    host_cpus = 1 if accel.accel is Accel.TCG and not accel.tcg_multithread else os.cpu_count()
    scale = timing_scale(accel.accel is Accel.TCG, req.topology.cpus, host_cpus or 1)
    # Shared RAM even without the monitor: snapshots (and the exit one) read it.
    req = dataclasses.replace(req, share_memory=True)
    if monitor_hz:
        req = dataclasses.replace(req, monitor=plan_monitor(scaled(thresholds, scale), monitor_hz))

    def judge(run: GuestRun | None, host: Outcome) -> Verdict:
        data = run_data(run.evidence if run else Evidence(), expect, host)
        samples: tuple[Sample, ...] = ()
        if run is not None and run.monitor is not None and run.monitor.judge is not None:
            windows = [
                (sc.started_at, sc.ended_at or sc.started_at) for sc in run.evidence.scenarios
            ]
            samples = run.monitor.workload_samples(windows)
            data = dataclasses.replace(data, monitor=monitor_findings(run.monitor.judge))
        # Without the monitor too: wake-ups the workers counted place pairs.
        placement = Placement(req.topology, placed(data.groups), samples)
        return evaluate(dataclasses.replace(data, placement=placement), thresholds, scale)

    verdicts: list[Verdict] = []

    def failed(run: GuestRun) -> bool:
        verdicts.append(judge(run, Outcome()))
        return verdicts[-1].status is Status.FAIL

    t0, started = time.monotonic(), time.time()
    run: GuestRun | None = None
    try:
        run = run_guest(req, evidence_dir=results_dir, keep_if=failed)
        verdict, artifacts = verdicts[-1], run.artifacts
    except (GuestPanicError, GuestLostError) as exc:
        run = exc.partial if isinstance(exc.partial, GuestRun) else None
        verdict = judge(run, _failure_outcome(exc))
        artifacts = exc.artifacts
    rec = RunRecord(
        test=test,
        scenario=scenario,
        topology=str(req.topology),
        kernel=kernel_info(req.kernel),
        scheduler=scheduler.info() if scheduler is not None else None,
        accel=accel.describe(),
        qemu=qemu.version_str,
        durations={
            "boot_s": round(run.timings.ready or 0.0, 3) if run else 0.0,
            "workload_s": req.scenario_s,
            "total_s": round(time.monotonic() - t0, 3),
            "started_at": round(started, 3),
        },
        verdict=verdict,
        artifacts=str(artifacts) if artifacts else None,
        sched_log_tail=run.sched_log[-4000:] if run else "",
        notes=tuple(run.warnings) if run else (),
        monitor=run.monitor.summary() if run and run.monitor else None,
        monitor_view=_monitor_view(run),
        artifacts_dir=str(results_dir),
        verifier=programs(run.evidence) if run else (),
        host=host_info(),
    )
    results_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if run is not None and run.monitor is not None and run.monitor.series:
        run.monitor.write_series(results_dir / "monitor.json.gz")
    if run is not None and run.snapshots is not None:
        write_files(run.snapshots.taken, results_dir)
        rec = dataclasses.replace(
            rec,
            snapshots=tuple(t.meta for t in run.snapshots.taken),
            explained_by=explaining(run, verdict),
            bpf_writes=tuple(run.snapshots.writes),
            timeline=tuple(timeline(run)),
        )
    if run is not None:
        rec = dataclasses.replace(rec, phases=phases(run, time.monotonic() - run.timings.launched))
    write_sidecar(rec, results_dir)
    return rec


def kernel_lacks(plan: Plan, kernel: Kernel) -> str:
    """Why this kernel cannot run the plan meaningfully ("" if it can): its
    payloads' kernel needs, cpu.max without CFS bandwidth control."""
    config = kernel.config
    for step in plan.steps:
        for op in step.ops:
            limits = op.kind is OpKind.SET_CPU_MAX or any(pc.cpu_max for pc in op.cgroups)
            if limits and kconfig.lacks(config, ("CONFIG_CFS_BANDWIDTH",)):
                return f"kernel {kernel.version} lacks CONFIG_CFS_BANDWIDTH (cgroup cpu.max)"
            for pc in op.cgroups:
                needs = dict(KERNEL_NEEDS.get(pc.payload.kind, ()) if pc.payload else ())
                for option in kconfig.lacks(config, tuple(needs)):
                    return f"kernel {kernel.version} lacks {option} ({needs[option]})"
    return ""


def skipped(
    req: BootRequest,
    scheduler: SchedulerRun | None,
    thresholds: Thresholds,
    results_dir: Path,
    *,
    test: str,
    reason: str,
) -> RunRecord:
    """A SKIP record for a run that would measure nothing meaningful here."""
    verdict = evaluate(RunData(outcome=Outcome(skip_reason=reason)), thresholds)
    rec = RunRecord(
        test=test,
        scenario=test,
        topology=str(req.topology),
        kernel=kernel_info(req.kernel),
        scheduler=scheduler.info() if scheduler is not None else None,
        accel="not started",
        qemu="",
        durations={"boot_s": 0.0, "workload_s": 0.0, "total_s": 0.0},
        verdict=verdict,
        artifacts_dir=str(results_dir),
    )
    write_sidecar(rec, results_dir)
    return rec


def check_payload_tools(plan: Plan) -> None:
    """Every program the plan's payloads run exists on the host (the guest
    runs the host's binaries), or one clear line before any boot."""
    for step in plan.steps:
        for op in step.ops:
            for pc in op.cgroups:
                p = pc.payload
                if p is None or shutil.which(p.program):
                    continue
                how = f"apt-get install {p.package}" if p.package else "install it"
                raise ConfigError(
                    f"payload {p.name} needs {p.program!r}, which is not on this host's PATH "
                    "(the guest runs the host's programs)",
                    hint=f"{how} (./scripts/setup installs the payload tools)",
                )


def execute(
    req: BootRequest,
    plan: Plan,
    scheduler: SchedulerRun | None,
    thresholds: Thresholds,
    results_dir: Path,
    *,
    test: str | None = None,
    monitor_hz: float | None = 10.0,
) -> RunRecord:
    """One canned scenario in one VM, judged against the host's own plan."""
    check_payload_tools(plan)
    lacks = kernel_lacks(plan, req.kernel)
    if lacks:
        return skipped(
            req, scheduler, thresholds, results_dir, test=test or plan.scenario, reason=lacks
        )
    expect = Expectation(
        name=plan.scenario,
        topology=req.topology,
        plans=(plan,),
        scheduler=scheduler is not None,
    )
    return execute_job(
        scenario_request(req, plan, scheduler),
        expect=expect,
        scheduler=scheduler,
        thresholds=thresholds,
        results_dir=results_dir,
        test=test or plan.scenario,
        scenario=plan.scenario,
        monitor_hz=monitor_hz,
    )
