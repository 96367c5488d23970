"""Phases of one guest run: prepare -> boot -> drive frames -> result.

This is where host, protocol and coordinator meet. ``run_guest`` boots a VM
for a job (a JSON dict the guest agent reads), drives the coordinator over
the frame stream, performs its actions (QMP freeze/capture, kill), and
returns what came back, or raises a VmError subclass carrying the evidence.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ktstr
from ktstr.errors import (
    AgentCrashError,
    BootTimeoutError,
    ConfigError,
    GuestLostError,
    GuestPanicError,
    QemuAbortError,
    TopologyError,
    VmError,
)
from ktstr.evaluate.verdict import Outcome, RunData, Status, Verdict, evaluate
from ktstr.host.coordinator import Capture, Coordinator, Exited, Expired, Kill, Ready, TimeoutKind
from ktstr.host.kernel import Kernel, check_kernel
from ktstr.host.qemu import AccelChoice, QemuInfo, choose_accel, find_qemu
from ktstr.host.qemu_argv import Accel, VmSpec
from ktstr.host.vm import Vm
from ktstr.protocol.frames import DecoderStats, Frame, encode_frame
from ktstr.protocol.messages import (
    TEXT_KINDS,
    Crash,
    Lifecycle,
    MessageKind,
    PayloadError,
    SchedExit,
    SnapshotReply,
    Stimulus,
    TestResult,
    WorkerReports,
    decode_payload,
)
from ktstr.report import RunRecord, write_sidecar
from ktstr.spec.checks import Thresholds, timing_scale
from ktstr.spec.scenario import Plan
from ktstr.spec.serde import to_data
from ktstr.spec.topology import Topology

log = logging.getLogger(__name__)

TextSink = Callable[[MessageKind, str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class BootRequest:
    kernel: Kernel
    topology: Topology
    job: dict[str, Any]
    accel: str | None = None
    memory_mb: int = 0
    boot_timeout: float = 120.0
    idle_timeout: float = 300.0
    interactive: bool = False
    #: Extra kernel command line parameters (appended last, so they win).
    cmdline_extra: tuple[str, ...] = ()
    #: Periodic freeze-and-capture points within 10-90 % of the workload.
    num_snapshots: int = 0
    name: str = "vm"


@dataclass(slots=True)
class Timings:
    """Host monotonic seconds relative to QEMU launch."""

    kernel_start: float | None = None  # estimated from the guest's uptime at ready
    ready: float | None = None
    exit_frame: float | None = None
    qemu_exit: float | None = None


@dataclass(slots=True)
class GuestRun:
    accel: AccelChoice
    qemu: QemuInfo
    exit_code: int | None = None
    results: list[TestResult] = field(default_factory=list)
    lifecycle: list[Lifecycle] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    #: Set when the scheduler under test died: the run was ended early.
    sched_exit: SchedExit | None = None
    worker_reports: list[WorkerReports] = field(default_factory=list)
    stimuli: list[Stimulus] = field(default_factory=list)
    sched_log: list[str] = field(default_factory=list)
    #: The frame decoder's counters (crc_errors, truncated, ... > 0 = damage).
    decoder: DecoderStats = field(default_factory=DecoderStats)
    artifacts: Path | None = None
    timings: Timings = field(default_factory=Timings)
    warnings: list[str] = field(default_factory=list)

    def result(self, name: str) -> TestResult | None:
        return next((r for r in self.results if r.name == name), None)


_ACCEL_MEMO: dict[tuple[str, str, str | None], AccelChoice] = {}


def prepare(req: BootRequest) -> tuple[VmSpec, AccelChoice, QemuInfo, list[str]]:
    """Validate everything before anything is started."""
    warnings = check_kernel(req.kernel)
    nr = req.kernel.nr_cpus
    if nr is not None and req.topology.cpus > nr:
        raise TopologyError(
            f"topology {req.topology} needs {req.topology.cpus} CPUs but kernel "
            f"{req.kernel.version} was built with CONFIG_NR_CPUS={nr}",
            hint="pick a smaller topology or build a kernel with 'ktstr kernel build'",
        )
    qemu = find_qemu()
    key = (qemu.binary, str(req.kernel.image), req.accel)
    if key not in _ACCEL_MEMO:
        _ACCEL_MEMO[key] = choose_accel(qemu, req.kernel.image, req.accel)
    accel = _ACCEL_MEMO[key]
    if "scheduler" in req.job and accel.accel is Accel.TCG and accel.tcg_multithread:
        # sched_ext enable/disable flips static keys (int3-based text patching);
        # multi-threaded TCG still races with that on QEMU 10.0 ("Oops: int3"
        # in sched_tick seen here), so scheduler runs get one TCG thread.
        accel = dataclasses.replace(
            accel,
            tcg_multithread=False,
            reason=accel.reason + "; single-threaded: a sched_ext scheduler is loaded",
        )
    agent_init = _agent_init()
    spec = VmSpec(
        kernel=req.kernel.image,
        topology=req.topology,
        run_dir=Path("/nonexistent"),  # the Vm fills in its own run dir
        init=agent_init[0],
        qemu=qemu.binary,
        qemu_version=qemu.version,
        accel=accel.accel,
        tcg_multithread=accel.tcg_multithread,
        memory_mb=req.memory_mb,
        interactive=req.interactive,
        cmdline_extra=(*agent_init[1], *req.cmdline_extra),
    )
    return spec, accel, qemu, warnings


def _agent_init() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The guest's init argv and extra kernel parameters to start the agent.

    Unknown KEY=value kernel parameters reach init as environment variables.
    The agent needs only the stdlib and this package, so it skips ``site``
    (measurably faster under TCG) unless the path cannot travel on the
    kernel command line (whitespace).
    """
    pkg_parent = str(Path(ktstr.__file__).parent.parent)
    if any(c.isspace() for c in pkg_parent + sys.executable):
        return (sys.executable, "-m", "ktstr.guest.agent"), ()
    return (sys.executable, "-S", "-m", "ktstr.guest.agent"), (f"PYTHONPATH={pkg_parent}",)


def run_guest(
    req: BootRequest,
    on_text: TextSink | None = None,
    *,
    evidence_dir: Path | None = None,
    keep_if: Callable[[GuestRun], bool] | None = None,
) -> GuestRun:
    """Boot, drive, close. Evidence is kept (in ``evidence_dir``) when the run
    raises, or when ``keep_if(run)`` says the finished run failed."""
    spec, accel, qemu, warnings = prepare(req)
    log.info("accelerator: %s", accel.describe())
    for attempt in range(1, BOOT_ABORT_ATTEMPTS + 1):
        out = GuestRun(accel=accel, qemu=qemu, warnings=list(warnings))
        try:
            with Vm(spec, req.job, name=req.name, evidence_dir=evidence_dir) as vm:
                _drive(vm, req, out, on_text)
                if keep_if is not None and keep_if(out):
                    out.artifacts = vm.close(keep_evidence=True)
            if attempt > 1:
                out.warnings.append(
                    f"QEMU aborted during boot {attempt - 1} time(s) before the "
                    "guest was ready and was relaunched (a known QEMU TCG race)"
                )
            return out
        except QemuAbortError as exc:
            if attempt == BOOT_ABORT_ATTEMPTS:
                raise
            log.warning(
                "QEMU aborted before the guest was ready (%s); relaunching",
                exc.console_tail.strip().splitlines()[-1:] or "no output",
            )
    raise AssertionError("unreachable")


#: QEMU 10's multi-threaded TCG very rarely aborts in early boot (an
#: iotlb_to_section assertion, ~1 in 100 boots here). Nothing of the job ran
#: yet, so such a launch is retried; any failure after SysReady never is.
BOOT_ABORT_ATTEMPTS = 3


class _RunEnded(Exception):
    """The coordinator ended the run (scheduler death): stop the VM, no error."""


def _drive(vm: Vm, req: BootRequest, out: GuestRun, on_text: TextSink | None) -> None:
    try:
        _pump_frames(vm, req, out, on_text)
    except _RunEnded:
        vm.shutdown(hard=True)
        out.timings.qemu_exit = time.monotonic() - vm.launched_at
        return


def _pump_frames(vm: Vm, req: BootRequest, out: GuestRun, on_text: TextSink | None) -> None:
    t0 = vm.launched_at
    coord = Coordinator(
        started=t0,
        boot_timeout=req.boot_timeout,
        idle_timeout=float("inf") if req.interactive else req.idle_timeout,
        num_snapshots=req.num_snapshots,
    )
    assert vm.channel is not None
    frames = vm.channel.frames
    while True:
        now = time.monotonic()
        if vm.console is not None and vm.console.panic.is_set():
            raise GuestPanicError(
                f"guest kernel crashed: {vm.console.panic_line}",
                argv=vm.argv,
                console_tail=_settle_tail(vm),
                hint="the console log has the full trace",
            )
        for action in coord.tick(now):
            _act(vm, out, action, t0, now=now, wl=coord.workload_time(now))
        try:
            frame = frames.get(timeout=min(0.25, coord.next_wakeup(now) + 0.01))
        except queue.Empty:
            if vm.exited():
                break
            continue
        if frame is None:  # channel EOF: QEMU closed the port (it exited)
            break
        now = time.monotonic()
        _observe(frame, out, on_text, now - t0)
        for action in coord.handle(frame, now):
            _act(vm, out, action, t0, now=now, wl=coord.workload_time(now))
        if coord.state.exit_code is not None:
            break
    _finish(vm, out, coord, t0)


def _settle_tail(vm: Vm) -> str:
    time.sleep(0.3)  # let the rest of the panic message arrive
    return vm.console_tail()


def _observe(frame: Frame, out: GuestRun, on_text: TextSink | None, rel: float) -> None:
    if not frame.crc_ok:
        return
    try:
        msg = decode_payload(frame.kind, frame.payload)
    except PayloadError as exc:
        out.warnings.append(f"undecodable frame: {exc}")
        return
    if frame.kind == MessageKind.SCHED_LOG and isinstance(msg, str):
        out.sched_log.append(msg)
    if frame.kind in TEXT_KINDS and isinstance(msg, str) and on_text is not None:
        on_text(MessageKind(frame.kind), msg)
    elif isinstance(msg, WorkerReports):
        out.worker_reports.append(msg)
    elif isinstance(msg, Stimulus):
        out.stimuli.append(msg)
    elif isinstance(msg, TestResult):
        out.results.append(msg)
    elif isinstance(msg, Lifecycle):
        out.lifecycle.append(msg)
        if msg.phase == "ready" and isinstance(msg.detail.get("uptime_s"), int | float):
            out.timings.kernel_start = rel - float(msg.detail["uptime_s"])
    elif isinstance(msg, Crash):
        raise AgentCrashError(f"guest agent crashed: {msg.error}", traceback_text=msg.traceback)


def _act(vm: Vm, out: GuestRun, action: object, t0: float, *, now: float, wl: float) -> None:
    if isinstance(action, Ready):
        out.timings.ready = now - t0
    elif isinstance(action, Exited):
        out.exit_code = action.code
        out.timings.exit_frame = now - t0
    elif isinstance(action, Kill):
        log.info("scheduler exited: %s", action.sched_exit.reason)
        out.sched_exit = action.sched_exit
    elif isinstance(action, Capture):
        out.snapshots.append({**_capture(vm, action, now - t0), "workload_s": wl})
    elif isinstance(action, Expired):
        if action.kind is TimeoutKind.KILL_GRACE:
            raise _RunEnded
        cls = BootTimeoutError if action.kind is TimeoutKind.BOOT_TIMEOUT else GuestLostError
        raise cls(
            f"{action.kind.value}: {action.message}",
            argv=vm.argv,
            console_tail=vm.console_tail(),
            hint="raise --boot-timeout if the host is slow (TCG), else see the console log",
        )


def _capture(vm: Vm, action: Capture, rel: float) -> dict[str, Any]:
    """Freeze the guest, capture vCPU registers, resume, reply if asked."""
    assert vm.qmp is not None
    snap: dict[str, Any] = {"at_s": rel, "periodic": action.periodic}
    vm.qmp.stop()
    try:
        snap["registers"] = vm.qmp.registers()
    finally:
        vm.qmp.cont()
    if action.request is not None and vm.channel is not None:
        snap["request_id"] = action.request.request_id
        reply = SnapshotReply(request_id=action.request.request_id, status=0)
        vm.channel.send(encode_frame(reply.KIND, reply.to_bytes()))
    return snap


def _finish(vm: Vm, out: GuestRun, coord: Coordinator, t0: float) -> None:
    try:
        vm.wait(timeout=15.0)
    except Exception:
        log.warning("guest did not power off after Exit; stopping QEMU")
        vm.shutdown()
    out.timings.qemu_exit = time.monotonic() - t0
    if vm.channel is not None:
        out.decoder = dataclasses.replace(vm.channel.decoder.stats)
    if vm.channel is not None and vm.channel.error is not None:
        raise GuestLostError(
            f"channel reader failed: {vm.channel.error}",
            argv=vm.argv,
            console_tail=vm.console_tail(),
        ) from vm.channel.error
    if vm.console is not None and vm.console.panic.is_set():
        raise GuestPanicError(
            f"guest kernel crashed: {vm.console.panic_line}",
            argv=vm.argv,
            console_tail=vm.console_tail(),
        )
    if coord.state.ready_at is None:
        code = vm.proc.returncode if vm.proc is not None else None
        cls = QemuAbortError if code == -signal.SIGABRT else VmError
        raise cls(
            "QEMU exited before the guest agent was ready"
            + (" (QEMU aborted)" if cls is QemuAbortError else ""),
            argv=vm.argv,
            console_tail=vm.console_tail() or vm.qemu_stderr(),
        )
    if out.exit_code is None:
        raise GuestLostError(
            "guest went away without reporting an exit code",
            argv=vm.argv,
            console_tail=vm.console_tail(),
        )


# -- scenarios --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerRun:
    """The scheduler under test as the guest starts it (a host path)."""

    binary: Path
    args: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.binary.name


def scheduler_binary(name_or_path: str, kernel: Kernel, near: Path | None = None) -> Path:
    """The scheduler's executable: ``name_or_path`` itself, else the name
    looked up next to ``near`` (the tests or definition file), in
    $KTSTR_SCHEDULER (a file or a directory), next to the kernel (built from
    the same tree, so its BTF matches), then on PATH."""
    import shutil

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


# -- verdicts -------------------------------------------------------------------------


def run_data(run: GuestRun, name: str, workload_s: float) -> RunData:
    """What the verdict needs from a finished run (host types -> pure types);
    ``name`` is the TestResult the guest sends at the end."""
    se = run.sched_exit
    result = next((r for r in run.results if r.name == name), None)
    outcome = Outcome(
        sched_not_attached=se.reason if se is not None and se.exit_kind == "not_attached" else "",
        sched_died=(se.exit_kind, se.reason)
        if se is not None and se.exit_kind != "not_attached"
        else None,
        sched_dump=se.dump if se is not None else "",
        sched_log_tail="".join(run.sched_log)[-4000:],
        reports_sent=int(result.data.get("workers", 0)) if result is not None else None,
    )
    groups = tuple(
        (w.cgroup, tuple(w.reports), tuple(w.cpus) if w.cpus is not None else None)
        for w in run.worker_reports
    )
    return RunData(duration_s=workload_s, groups=groups, outcome=outcome)


def _failure_outcome(exc: VmError) -> Outcome:
    if isinstance(exc, GuestPanicError):
        return Outcome(guest_crash=exc.message.removeprefix("guest kernel crashed: "))
    if isinstance(exc, AgentCrashError):
        return Outcome(agent_crash=exc.message.removeprefix("guest agent crashed: "))
    kind = exc.message.split(":", 1)[0] if ":" in exc.message else "guest_lost"
    return Outcome(timeout=(kind, exc.message))


def scenario_job(
    plan: Plan, scheduler: SchedulerRun | None, attach_timeout: float = 60.0
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


def run_scenario(
    req: BootRequest,
    plan: Plan,
    scheduler: SchedulerRun | None = None,
    on_text: TextSink | None = None,
    attach_timeout: float = 60.0,
    *,
    evidence_dir: Path | None = None,
    keep_if: Callable[[GuestRun], bool] | None = None,
) -> GuestRun:
    """Boot a VM, run ``plan`` under ``scheduler`` (None = EEVDF), return what
    came back (worker reports, stimuli, scheduler exit and output)."""
    job = scenario_job(plan, scheduler, attach_timeout)
    job["host_paths"] += list(req.job.get("host_paths", []))
    return run_guest(
        dataclasses.replace(req, job=job),
        on_text=on_text,
        evidence_dir=evidence_dir,
        keep_if=keep_if,
    )


def execute_job(
    req: BootRequest,
    *,
    name: str,
    workload_s: float,
    scheduler: SchedulerRun | None,
    thresholds: Thresholds,
    results_dir: Path,
    test: str,
    scenario: str,
) -> RunRecord:
    """Boot ``req.job`` in one VM and judge it: writes ``results_dir/result.json``.

    Infrastructure errors (QEMU cannot start, the guest never boots) raise;
    everything that happens to the guest once it ran is a finding."""
    _, accel, qemu, _ = prepare(req)
    # One TCG thread runs every vCPU: the VM effectively has one host CPU.
    host_cpus = 1 if accel.accel is Accel.TCG and not accel.tcg_multithread else os.cpu_count()
    scale = timing_scale(accel.accel is Accel.TCG, req.topology.cpus, host_cpus or 1)
    verdicts: list[Verdict] = []

    def judge(run: GuestRun) -> bool:
        verdicts.append(evaluate(run_data(run, name, workload_s), thresholds, scale))
        return verdicts[-1].status is Status.FAIL

    t0, started = time.monotonic(), time.time()
    run: GuestRun | None = None
    try:
        run = run_guest(req, evidence_dir=results_dir, keep_if=judge)
        verdict, artifacts = verdicts[-1], run.artifacts
    except (GuestPanicError, AgentCrashError, GuestLostError) as exc:
        data = RunData(duration_s=workload_s, outcome=_failure_outcome(exc))
        verdict, artifacts = evaluate(data, thresholds, scale), exc.artifacts
    rec = RunRecord(
        test=test,
        scenario=scenario,
        topology=str(req.topology),
        kernel={"version": req.kernel.version, "image": str(req.kernel.image)},
        scheduler=None
        if scheduler is None
        else {
            "name": scheduler.name,
            "binary": str(scheduler.binary),
            "args": list(scheduler.args),
        },
        accel=accel.describe(),
        qemu=qemu.version_str,
        durations={
            "boot_s": round(run.timings.ready or 0.0, 3) if run else 0.0,
            "workload_s": workload_s,
            "total_s": round(time.monotonic() - t0, 3),
            "started_at": round(started, 3),
        },
        verdict=verdict,
        artifacts=str(artifacts) if artifacts else None,
        sched_log_tail="".join(run.sched_log)[-4000:] if run else "",
        notes=tuple(run.warnings) if run else (),
    )
    if artifacts and run is not None and run.sched_log:
        (Path(artifacts) / "sched.log").write_text("".join(run.sched_log))
    if run is not None and run.snapshots:
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / "snapshots.json").write_text(json.dumps(run.snapshots, indent=1))
    write_sidecar(rec, results_dir)
    return rec


def execute(
    req: BootRequest,
    plan: Plan,
    scheduler: SchedulerRun | None,
    thresholds: Thresholds,
    results_dir: Path,
    *,
    test: str | None = None,
) -> RunRecord:
    """One canned scenario in one VM, judged."""
    job = scenario_job(plan, scheduler)
    return execute_job(
        dataclasses.replace(req, job=job),
        name=plan.scenario,
        workload_s=sum(s.hold_s for s in plan.steps),
        scheduler=scheduler,
        thresholds=thresholds,
        results_dir=results_dir,
        test=test or plan.scenario,
        scenario=plan.scenario,
    )
