"""The monitor: a host thread that samples guest kernel state at a fixed rate.

It attaches once (maps the RAM files, reads vmcoreinfo, opens drgn, resolves
a ``Layout``), then reads raw bytes every tick and hands each ``Sample`` to
``on_sample``. It never stops the guest. A failure in the thread is stored
and reported by ``stop()``, never swallowed. It also carries out the one
write ktstr makes into a running kernel on purpose: the shortened sched_ext
watchdog (``watchdog.py``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ktstr.inspect.layout import Layout, resolve
from ktstr.inspect.memory import FaultError, GuestMemory
from ktstr.inspect.program import InspectError, open_program, read_vmcoreinfo, release_matches
from ktstr.inspect.reader import Reader
from ktstr.inspect.sample import Sample
from ktstr.inspect.sampler import Sampler
from ktstr.inspect.watchdog import WatchdogWrite, shorten_watchdog

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorConfig:
    files: tuple[Path, ...]  # the VM's RAM files, node order
    vmlinux: Path
    version: str  # the booted kernel's, to check vmcoreinfo against
    config_hz: int  # CONFIG_HZ
    vmcoreinfo: tuple[int, int]  # guest physical address and size (from KernAddrs)
    hz: float = 10.0
    #: Samples kept for explaining a failure (the last minute at 10 Hz).
    keep: int = 600


@dataclass(slots=True)
class MonitorResult:
    attach_s: float = 0.0
    first_sample_s: float | None = None  # after the monitor started
    samples: int = 0
    faults: int = 0
    cpu_s: float = 0.0  # the sampling thread's own CPU time, after attaching
    wall_s: float = 0.0  # the time it sampled for
    recent: list[Sample] = field(default_factory=list)
    layout: Layout | None = None
    watchdog: WatchdogWrite | None = None
    error: str = ""


class Monitor:
    def __init__(
        self, config: MonitorConfig, t0: float, on_sample: Callable[[Sample], None]
    ) -> None:
        self.config = config
        self.t0 = t0  # host clock of the VM's launch: samples are relative to it
        self.on_sample = on_sample
        self.result = MonitorResult()
        self._stop = threading.Event()
        self._watchdog_s: float | None = None
        self._recent: collections.deque[Sample] = collections.deque(maxlen=config.keep)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ktstr-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def shorten_watchdog(self, seconds: float) -> None:
        """Ask for sched_ext's watchdog timeout to be set to ``seconds`` (done
        in the monitor thread once it is attached)."""
        self._watchdog_s = seconds

    def recent(self) -> list[Sample]:
        with self._lock:
            return list(self._recent)

    def stop(self, timeout: float = 10.0) -> MonitorResult:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        self.result.recent = self.recent()
        return self.result

    def _attach(self) -> tuple[GuestMemory, Sampler, Reader]:
        c = self.config
        mem = GuestMemory(list(c.files))
        try:
            info = read_vmcoreinfo(mem, *c.vmcoreinfo)
            if not release_matches(info.release, c.version):
                raise InspectError(
                    f"the guest runs {info.release}, not the kernel {c.version} that was booted"
                )
            prog = open_program(mem, info, c.vmlinux)
            phys_end = max(r.phys + r.size for r in mem.regions)
            layout = resolve(prog, info, c.config_hz, phys_end)
        except BaseException:
            mem.close()
            raise
        reader = Reader(mem, layout)
        self.result.layout = layout
        return mem, Sampler(reader, layout), reader

    def _run(self) -> None:
        started = time.monotonic()
        cpu0, wall0 = time.thread_time(), started
        mem = None
        try:
            mem, sampler, reader = self._attach()
            self.result.attach_s = time.monotonic() - started
            cpu0, wall0 = time.thread_time(), time.monotonic()
            period = 1.0 / self.config.hz
            next_t = time.monotonic()
            while not self._stop.is_set():
                self._tick(sampler, reader, started)
                next_t += period
                self._stop.wait(max(0.0, next_t - time.monotonic()))
        except Exception as exc:  # stored; the run reports it as a note
            log.debug("monitor failed", exc_info=True)
            self.result.error = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            self.result.cpu_s = time.thread_time() - cpu0
            self.result.wall_s = time.monotonic() - wall0
            if mem is not None:
                mem.close()

    def _tick(self, sampler: Sampler, reader: Reader, started: float) -> None:
        now = time.monotonic()
        try:
            sample = sampler.sample(now - self.t0)
        except FaultError:  # the guest changed a structure under us
            self.result.faults += 1
            return
        if self.result.first_sample_s is None:
            self.result.first_sample_s = now - started
        self.result.samples += 1
        with self._lock:
            self._recent.append(sample)
        self.on_sample(sample)
        wanted = self._watchdog_s is not None and self.result.watchdog is None
        if wanted and sample.scx.enable_state.endswith("ENABLED"):
            assert self._watchdog_s is not None
            self.result.watchdog = shorten_watchdog(
                reader, sampler.root(), self._watchdog_s, sample.jiffies
            )
