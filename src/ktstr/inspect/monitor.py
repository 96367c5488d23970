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

from ktstr.inspect.attach import Attachment, Target, attach
from ktstr.inspect.layout import Layout
from ktstr.inspect.memory import FaultError
from ktstr.inspect.reader import Reader
from ktstr.inspect.sample import Sample
from ktstr.inspect.sampler import Sampler
from ktstr.inspect.watchdog import WatchdogWrite, shorten_watchdog

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorConfig:
    target: Target
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
        #: Set once attaching finished (``attachment`` is then set, or it failed).
        self.attached = threading.Event()
        self.attachment: Attachment | None = None

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
        """Stop sampling and release the guest's memory (the snapshots that
        share the attachment are done by then)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        self.result.recent = self.recent()
        if self.attachment is not None and not self._thread.is_alive():
            self.attachment.close()
            self.attachment = None
        return self.result

    def _run(self) -> None:
        started = time.monotonic()
        cpu0, wall0 = time.thread_time(), started
        try:
            try:
                self.attachment = attach(self.config.target)
            finally:
                self.attached.set()
            reader = self.attachment.reader
            self.result.layout = self.attachment.layout
            sampler = Sampler(reader, self.attachment.layout)
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
