"""What a VM run is asked and what it returns: the boot request, the run's
result, and ``prepare`` (everything checked before anything starts)."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ktstr
from ktstr.errors import AgentCrashError, ConfigError, TopologyError
from ktstr.host.coordinator import Watch
from ktstr.host.kernel import Kernel, check_kernel
from ktstr.host.qemu import AccelChoice, QemuInfo, choose_accel, find_qemu, tcg_lpj
from ktstr.host.qemu_argv import Accel, VmSpec
from ktstr.protocol.evidence import Collector, Evidence
from ktstr.protocol.frames import DecoderStats
from ktstr.protocol.messages import Lifecycle, SchedExit, Stimulus, TestResult, WorkerReport
from ktstr.runner.guest_python import guest_python
from ktstr.runner.monitoring import MonitorPlan, MonitorRun
from ktstr.runner.snapshots import SnapshotRun
from ktstr.spec.topology import Topology

#: Slack after a scenario's planned length before the host calls it a stall,
#: and the time the guest has after ScenarioEnd (stop workers, send reports).
WORKLOAD_GRACE = 30.0
TEARDOWN_GRACE = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BootRequest:
    kernel: Kernel
    topology: Topology
    job: dict[str, Any]
    accel: str | None = None
    memory_mb: int = 0
    #: QEMU start -> SysReady; 0 = ``AccelChoice.boot_budget`` for the
    #: topology. A ``hard_cap`` computed as ``boot_timeout + X`` before the
    #: budget is known grows with it (``with_boot_budget``).
    boot_timeout: float = 0.0
    #: SysReady -> the first scenario (scheduler attach) or -> Exit.
    ready_timeout: float = 300.0
    #: The host's planned length of one scenario (the watchdog's, not the guest's).
    scenario_s: float = 0.0
    #: Launch -> end of run, absolute; no frame extends it.
    hard_cap: float = float("inf")
    interactive: bool = False
    #: Extra kernel command line parameters (appended last, so they win).
    cmdline_extra: tuple[str, ...] = ()
    #: Periodic freeze-and-capture points within 10-90 % of the workload.
    num_snapshots: int = 0
    #: Guest RAM in shared files the host can read (the monitor, snapshots).
    share_memory: bool = False
    #: Watch the guest kernel from the host while it runs (implies shared RAM).
    monitor: MonitorPlan | None = None
    #: Boot the bzImage, whose decompressor randomizes the kernel's address
    #: (a PVH boot of vmlinux, the default and faster under TCG, does not).
    kaslr: bool = False
    name: str = "vm"

    def watch(self) -> Watch:
        return Watch(
            boot_timeout=self.boot_timeout,
            # a shell lasts as long as the person typing in it
            ready_timeout=float("inf") if self.interactive else self.ready_timeout,
            scenario_s=self.scenario_s,
            workload_grace=WORKLOAD_GRACE,
            teardown_grace=TEARDOWN_GRACE,
            hard_cap=self.hard_cap,
        )


@dataclass(slots=True)
class Timings:
    """Host monotonic seconds relative to QEMU launch."""

    launched: float = 0.0  # host monotonic clock at QEMU launch (absolute)
    kernel_start: float | None = None  # estimated from the guest's uptime at ready
    ready: float | None = None
    exit_frame: float | None = None
    qemu_exit: float | None = None


@dataclass(slots=True)
class GuestRun:
    accel: AccelChoice
    qemu: QemuInfo
    collector: Collector = field(default_factory=Collector)
    exit_code: int | None = None
    snapshots: SnapshotRun | None = None
    #: The frame decoder's counters (crc_errors, truncated, ... > 0 = damage).
    decoder: DecoderStats = field(default_factory=DecoderStats)
    artifacts: Path | None = None
    timings: Timings = field(default_factory=Timings)
    warnings: list[str] = field(default_factory=list)
    monitor: MonitorRun | None = None

    @property
    def evidence(self) -> Evidence:
        return self.collector.evidence

    @property
    def results(self) -> list[TestResult]:
        return self.evidence.results

    def result(self, name: str) -> TestResult | None:
        return next((r for r in self.results if r.name == name), None)

    @property
    def sched_exit(self) -> SchedExit | None:
        return self.evidence.sched_exit

    @property
    def lifecycle(self) -> list[Lifecycle]:
        return [lc for _, lc in self.evidence.lifecycle]

    @property
    def worker_reports(self) -> list[WorkerReport]:
        return [r for s in self.evidence.scenarios for r in s.reports]

    @property
    def stimuli(self) -> list[Stimulus]:
        return [x for s in self.evidence.scenarios for x in s.stimuli]

    @property
    def sched_log(self) -> str:
        return self.evidence.sched_log_tail()

    def raise_for_crash(self) -> None:
        """For jobs without a verdict: the agent's crash as an error."""
        crash = self.evidence.crash
        if crash is not None:
            raise AgentCrashError(
                f"guest agent crashed: {crash.error}", traceback_text=crash.traceback
            )


def with_boot_budget(req: BootRequest, accel: AccelChoice) -> BootRequest:
    """``req`` with an automatic boot timeout resolved for ``accel``."""
    if req.boot_timeout > 0:
        return req
    budget = accel.boot_budget(req.topology.cpus)
    return dataclasses.replace(req, boot_timeout=budget, hard_cap=req.hard_cap + budget)


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
    mode = req.job.get("mode")
    patches = "scheduler" in req.job or mode in ("scenario", "test", "kselftest", "shell", "exec")
    if patches and accel.accel is Accel.TCG and accel.tcg_multithread:
        # Enabling a sched_ext scheduler, and creating the first cpuset, flip
        # static keys (int3-based text patching); multi-threaded TCG still
        # races with that on QEMU 10.0 ("Oops: int3" in sched_tick, and under
        # EEVDF once cpusets appeared), so judged jobs get one TCG thread.
        why = {
            "kselftest": "the selftests' schedulers",
            "shell": "schedulers a shell may load",
            "exec": "schedulers a command may load",
        }.get(str(mode), "sched_ext schedulers" if "scheduler" in req.job else "cgroups")
        accel = dataclasses.replace(
            accel,
            tcg_multithread=False,
            reason=accel.reason + f"; single-threaded: {why} flip static keys",
        )
    agent_init = _agent_init()
    image = req.kernel.image
    if req.kaslr:
        image = req.kernel.directory / "bzImage"
        if not image.is_file():
            raise ConfigError(
                f"--kaslr boots the bzImage, and {req.kernel.directory} has none",
                hint="import or build the kernel with its bzImage",
            )
        if req.kernel.config.get("CONFIG_RANDOMIZE_BASE") != "y":
            warnings.append("the kernel has no CONFIG_RANDOMIZE_BASE: it runs unrandomized")
    spec = VmSpec(
        kernel=image,
        topology=req.topology,
        run_dir=Path("/nonexistent"),  # the Vm fills in its own run dir
        init=agent_init[0],
        qemu=qemu.binary,
        qemu_version=qemu.version,
        accel=accel.accel,
        tcg_multithread=accel.tcg_multithread,
        memory_mb=req.memory_mb,
        share_memory=req.share_memory or req.monitor is not None,
        gdb_stub=req.share_memory or req.monitor is not None,
        interactive=req.interactive,
        cmdline_extra=(*agent_init[1], *_tcg_params(req, accel), *req.cmdline_extra),
    )
    return spec, accel, qemu, warnings


def _tcg_params(req: BootRequest, accel: AccelChoice) -> tuple[str, ...]:
    """Kernel parameters that spare a TCG guest what only costs time there.

    ``lpj``: each vCPU would calibrate its delay loop, one after another.
    ``tsc=reliable``: every vCPU's TSC is QEMU's one host clock, so it cannot
    skew, and checking that it does not hangs: Linux 7.x's clocksource
    watchdog ping-pongs with another CPU with interrupts off, which one TCG
    thread serializes (4 of about 400 boots here never got ready, one with
    CPU0 in ``watchdog_wait_seq`` and every other vCPU halted).
    """
    if accel.accel is not Accel.TCG:
        return ()
    hz = req.kernel.config.get("CONFIG_HZ", "")
    lpj = tcg_lpj(int(hz)) if hz.isdigit() else None
    return (*((f"lpj={lpj}",) if lpj else ()), "tsc=reliable")


_COMPILED: set[str] = set()


def _compile_package(pkg_dir: str) -> None:
    """Byte-compile ktstr where the guest imports it from.

    The guest's root is read-only, so a module the host never imported (all
    of ``guest/``) was compiled from source at every boot: 1.1 s of a
    scenario's setup under TCG. Up-to-date files cost a stat each; a tree
    the user cannot write is left as it is.
    """
    if pkg_dir in _COMPILED:
        return
    _COMPILED.add(pkg_dir)
    import compileall

    with contextlib.suppress(OSError):
        compileall.compile_dir(pkg_dir, quiet=2, workers=1)


def _agent_init() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The guest's init argv and extra kernel parameters to start the agent.

    Unknown KEY=value kernel parameters reach init as environment variables.
    The agent needs only the stdlib and this package, so it skips ``site``
    (measurably faster under TCG) unless the path cannot travel on the
    kernel command line (whitespace).
    """
    pkg_parent = str(Path(ktstr.__file__).parent.parent)
    _compile_package(str(Path(ktstr.__file__).parent))
    py = guest_python(pkg_parent)
    if any(c.isspace() for c in pkg_parent + py.exe + "".join(py.env)):
        return (sys.executable, "-m", "ktstr.guest.agent"), ()
    return (py.exe, "-S", "-c", AGENT_MAIN), (f"PYTHONPATH={pkg_parent}", *py.env)


#: The agent's entry, as ``-c`` code without whitespace (it travels on the
#: kernel command line). ``-m`` would first import runpy and importlib.util,
#: which nothing else on the agent's path needs (6 million instructions of
#: the 130 million of importing the agent, and their files over 9p).
AGENT_MAIN = "__import__('ktstr.guest.agent').guest.agent.main()"
