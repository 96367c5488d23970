"""Boot a VM for a job and drive it: boot -> frames -> GuestRun.

Every frame goes through ``protocol.evidence.Collector`` (decoded once,
typed, bounded) and then the coordinator, whose actions (freeze and capture,
end the run, watchdog expiry) are carried out here. Text goes to capped
files in the VM's run directory, which become evidence when a run fails.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from ktstr.errors import (
    BootTimeoutError,
    GuestLostError,
    GuestPanicError,
    QemuAbortError,
    VmError,
)
from ktstr.host.capped import TEXT_CAP, CappedFile
from ktstr.host.coordinator import (
    Capture,
    Coordinator,
    Exited,
    Expired,
    Kill,
    Ready,
    Refuse,
    TimeoutKind,
    Write,
)
from ktstr.host.kernel import kernel_in_use
from ktstr.host.qemu import AccelChoice
from ktstr.host.qemu_argv import Accel
from ktstr.host.vm import Vm
from ktstr.protocol.frames import encode_frame
from ktstr.protocol.messages import (
    TEXT_KINDS,
    CaptureKind,
    HostReply,
    Lifecycle,
    MessageKind,
)
from ktstr.runner.boot import BootRequest, GuestRun, prepare, with_boot_budget
from ktstr.runner.monitoring import MonitorRun
from ktstr.runner.snapshots import SnapshotRun

log = logging.getLogger(__name__)

TextSink = Callable[[MessageKind, str], None]

#: QEMU 10's multi-threaded TCG very rarely aborts in early boot (an
#: iotlb_to_section assertion, ~1 in 100 boots here). Nothing of the job ran
#: yet, so such a launch is retried; any failure after SysReady never is.
BOOT_ABORT_ATTEMPTS = 3


def run_guest(
    req: BootRequest,
    on_text: TextSink | None = None,
    *,
    evidence_dir: Path | None = None,
    keep_if: Callable[[GuestRun], bool] | None = None,
) -> GuestRun:
    """Boot, drive, close. Evidence is kept (in ``evidence_dir``) when the run
    raises, or when ``keep_if(run)`` says the finished run failed. A VmError
    carries what was collected before it in ``partial``."""
    spec, accel, qemu, warnings = prepare(req)
    req = with_boot_budget(req, accel)
    log.info("accelerator: %s", accel.describe())
    for attempt in range(1, BOOT_ABORT_ATTEMPTS + 1):
        out = GuestRun(accel=accel, qemu=qemu, warnings=list(warnings))
        try:
            with (
                kernel_in_use(req.kernel),
                Vm(spec, req.job, name=req.name, evidence_dir=evidence_dir) as vm,
            ):
                try:
                    _drive(vm, req, out, on_text)
                finally:
                    out.warnings += vm.log_notes()
                if keep_if is not None and keep_if(out):
                    out.artifacts = vm.close(keep_evidence=True)
            if attempt > 1:
                out.warnings.append(
                    f"QEMU aborted or oopsed in int3 during boot {attempt - 1} time(s) before "
                    "the guest was ready and was relaunched (known QEMU TCG races)"
                )
            return out
        except QemuAbortError as exc:
            if attempt == BOOT_ABORT_ATTEMPTS:
                raise
            log.warning(
                "QEMU aborted before the guest was ready (%s); relaunching",
                exc.console_tail.strip().splitlines()[-1:] or "no output",
            )
        except GuestPanicError as exc:
            if attempt == BOOT_ABORT_ATTEMPTS or not tcg_boot_artifact(str(exc), accel, out):
                exc.partial = out
                raise
            log.warning("int3 oops before the guest was ready (multi-threaded TCG); relaunching")
        except VmError as exc:
            exc.partial = out
            raise
    raise AssertionError("unreachable")


def tcg_boot_artifact(panic: str, accel: AccelChoice, out: GuestRun) -> bool:
    """An ``Oops: int3`` before the agent was ready, under multi-threaded TCG:
    QEMU's race with the kernel's int3-based text patching (static keys flip
    while secondary vCPUs come up), before any of the run's own code ran.
    Relaunched like a QEMU abort; after ready, a panic stays a finding."""
    return (
        accel.accel is Accel.TCG
        and accel.tcg_multithread
        and out.timings.ready is None
        and "Oops: int3" in panic
    )


class _RunEnded(Exception):
    """The coordinator ended the run (scheduler death): stop the VM, no error."""


class _TextFiles:
    """The guest's text streams, each to a capped file in the run dir."""

    NAMES: ClassVar[dict[MessageKind, str]] = {
        MessageKind.STDOUT: "stdout.log",
        MessageKind.STDERR: "stderr.log",
        MessageKind.SCHED_LOG: "sched.log",
        MessageKind.DMESG: "dmesg.log",
    }

    def __init__(self, run_dir: Path, echo: TextSink | None) -> None:
        self._dir = run_dir
        self._echo = echo
        self.files: dict[MessageKind, CappedFile] = {}

    def write(self, kind: MessageKind, text: str) -> None:
        if kind not in self.files:
            self.files[kind] = CappedFile(self._dir / self.NAMES[kind], TEXT_CAP)
        self.files[kind].write(text.encode("utf-8", "replace"))
        if self._echo is not None:
            self._echo(kind, text)

    def close(self) -> list[str]:
        notes = [f.note() for f in self.files.values() if f.truncated]
        for f in self.files.values():
            f.close()
        return notes


def _drive(vm: Vm, req: BootRequest, out: GuestRun, on_text: TextSink | None) -> None:
    assert vm.run_dir is not None
    texts = _TextFiles(vm.run_dir, on_text)
    if req.monitor is not None:
        out.monitor = MonitorRun(req.monitor)
    out.snapshots = SnapshotRun(req.kernel, out.monitor)
    try:
        _pump_frames(vm, req, out, texts)
    except _RunEnded:
        _drain(vm, out, texts)
        vm.shutdown(hard=True)
        out.timings.qemu_exit = time.monotonic() - vm.launched_at
    finally:
        _kernel_start(vm, out)
        out.warnings += texts.close()
        out.snapshots.close()
        out.warnings += out.snapshots.notes
        if out.monitor is not None:  # before the VM's RAM files go
            out.monitor.stop()
            if out.monitor.note:
                out.warnings.append(out.monitor.note)


def _kernel_start(vm: Vm, out: GuestRun) -> None:
    """The guest's uptime at ready dates its kernel's start, but a guest
    clock runs slow when TCG emulates many vCPUs on few host CPUs; its first
    console output is then the closer (and never early) bound."""
    first = vm.console.first_output_at if vm.console is not None else None
    if first is not None:
        seen = first - vm.launched_at
        est = out.timings.kernel_start
        out.timings.kernel_start = seen if est is None else min(est, seen)


def _accept(out: GuestRun, texts: _TextFiles, frame: Any, rel: float) -> Any:
    item = out.collector.add(frame, rel)
    if item is not None and item[0] in TEXT_KINDS:
        texts.write(item[0], item[1])
    elif item is not None and item[0] is MessageKind.LIFECYCLE:
        lc: Lifecycle = item[1]
        uptime = lc.detail.get("uptime_s") if isinstance(lc.detail, dict) else None
        if lc.phase == "ready" and isinstance(uptime, int | float) and not isinstance(uptime, bool):
            out.timings.kernel_start = rel - float(uptime)
        if lc.phase == "scheduler_attached" and out.monitor is not None:
            out.monitor.scheduler_attached()
    return item


def _inspect(vm: Vm, req: BootRequest, out: GuestRun, item: Any) -> None:
    """The guest said where its kernel is: start watching it; a scheduler
    attached: stop the guest on its exit path; a scenario started: tell the
    monitor its cpusets."""
    if item is None:
        return
    kind, msg = item
    if kind is MessageKind.KERN_ADDRS:
        if out.monitor is not None:
            out.monitor.start(req.kernel, vm.memory_dir, msg, vm.launched_at)
        if out.snapshots is not None:
            out.snapshots.kern_addrs(vm, msg)
    elif kind is MessageKind.LIFECYCLE and msg.phase == "scheduler_attached":
        if out.snapshots is not None:
            out.snapshots.arm_exit(vm)
    elif kind is MessageKind.SCENARIO_START and out.monitor is not None:
        out.monitor.scenario(msg.plan, tuple(range(req.topology.cpus)))


def _drain(vm: Vm, out: GuestRun, texts: _TextFiles, limit: int = 10_000) -> None:
    """Frames that already arrived when the run ended still count."""
    assert vm.channel is not None
    for _ in range(limit):
        try:
            frame = vm.channel.frames.get_nowait()
        except queue.Empty:
            return
        if frame is None:
            return
        _accept(out, texts, frame, time.monotonic() - vm.launched_at)


def _pump_frames(vm: Vm, req: BootRequest, out: GuestRun, texts: _TextFiles) -> None:
    t0 = out.timings.launched = vm.launched_at
    coord = Coordinator(started=t0, watch=req.watch(), num_snapshots=req.num_snapshots)
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
            _act(vm, out, action, now=now, wl=coord.workload_time(now))
        if out.snapshots is not None:
            out.snapshots.poll(vm, coord.workload_time(now))
        try:
            frame = frames.get(timeout=min(0.1, coord.next_wakeup(now) + 0.01))
        except queue.Empty:
            if vm.exited():
                break
            continue
        if frame is None:  # channel EOF: QEMU closed the port (it exited)
            break
        now = time.monotonic()
        item = _accept(out, texts, frame, now - t0)
        _inspect(vm, req, out, item)
        for action in coord.handle(item, now):
            _act(vm, out, action, now=now, wl=coord.workload_time(now))
        if coord.state.exit_code is not None:
            break
    _finish(vm, out, coord)


def _settle_tail(vm: Vm) -> str:
    time.sleep(0.3)  # let the rest of the panic message arrive
    return vm.console_tail()


def _act(vm: Vm, out: GuestRun, action: object, *, now: float, wl: float) -> None:
    rel = now - vm.launched_at
    if isinstance(action, Ready):
        out.timings.ready = rel
    elif isinstance(action, Exited):
        out.exit_code = action.code
        out.timings.exit_frame = rel
    elif isinstance(action, Kill):
        log.info("scheduler exited: %s", action.sched_exit.reason)
        if out.snapshots is not None:
            out.snapshots.sched_exit_frame(vm, wl)
        raise _RunEnded
    elif isinstance(action, Capture):
        _capture(vm, out, action, wl)
    elif isinstance(action, Write):
        assert out.snapshots is not None
        status, why = out.snapshots.write(vm, action.request)
        if status:
            out.warnings.append(f"BPF write {action.request.var} refused: {why}")
        _reply(vm, out, action.request.request_id, status)
    elif isinstance(action, Refuse):
        _reply(vm, out, action.request.request_id, action.status)
    elif isinstance(action, Expired):
        _keep_registers(vm)
        cls = BootTimeoutError if action.kind is TimeoutKind.BOOT_TIMEOUT else GuestLostError
        raise cls(
            f"{action.kind.value}: {action.message}",
            argv=vm.argv,
            console_tail=vm.console_tail(),
            hint="raise --boot-timeout if the host is slow (TCG), else see the console log",
        )


def _keep_registers(vm: Vm) -> None:
    """Where every vCPU is when the guest went silent: a boot that hangs
    before the console prints (loglevel 4) leaves no other clue. Kept with
    the evidence as ``registers.txt``."""
    if vm.qmp is None or vm.run_dir is None:
        return
    try:
        (vm.run_dir / "registers.txt").write_text(vm.qmp.registers())
    except (VmError, OSError) as exc:
        log.warning("could not read the vCPUs' registers: %s", exc)


def _reply(vm: Vm, out: GuestRun, request_id: int, status: int) -> None:
    reply = HostReply(request_id=request_id, status=status)
    if vm.channel is not None and not vm.channel.send(encode_frame(reply.KIND, reply.to_bytes())):
        out.warnings.append(f"snapshot reply {request_id} not delivered: the guest port is full")


def _capture(vm: Vm, out: GuestRun, action: Capture, wl: float) -> None:
    """Freeze the guest, capture, resume, reply if asked."""
    assert out.snapshots is not None
    req = action.request
    if req is None:
        out.snapshots.take(vm, "periodic", name=f"periodic-{action.periodic}", workload_s=wl)
        return
    out.snapshots.take(
        vm,
        "request",
        name=req.name,
        workload_s=wl,
        request_id=req.request_id,
        memory=req.capture == CaptureKind.MEMORY,
    )
    _reply(vm, out, req.request_id, 0)


def _finish(vm: Vm, out: GuestRun, coord: Coordinator) -> None:
    try:
        vm.wait(timeout=15.0)
    except Exception:
        log.warning("guest did not power off after Exit; stopping QEMU")
        vm.shutdown()
    out.timings.qemu_exit = time.monotonic() - vm.launched_at
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
