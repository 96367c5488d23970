"""Start, verify, watch and stop the scheduler under test (in the guest).

Attach is verified from sysfs (``/sys/kernel/sched_ext/state`` is
``enabled`` and ``root/ops`` names the scheduler). Death is noticed by a
watcher thread (process exit or state leaving ``enabled``), which gathers
the exit kind and reason from the kernel log (``sched_ext: BPF scheduler
"X" disabled (<reason>)`` and ``sched_ext: X: <msg>``) and the debug dump
from the ``sched_ext_dump`` trace event and the scheduler's own output.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

SCX = Path("/sys/kernel/sched_ext")
TRACING = Path("/sys/kernel/tracing")
_DISABLED_RE = re.compile(r'sched_ext: BPF scheduler "([^"]*)" disabled \(([^)]*)\)')
_ENABLED_RE = re.compile(r'sched_ext: BPF scheduler "([^"]*)" enabled')
#: scx_exit_reason() strings -> stable exit kind names (kernel/sched/ext.c).
EXIT_KINDS = {
    "unregistered from user space": "unreg",
    "unregistered from BPF": "unreg_bpf",
    "unregistered from the main kernel": "unreg_kern",
    "disabled by sysrq-S": "sysrq",
    "runtime error": "error",
    "scx_bpf_error": "error_bpf",
    "runnable task stall": "error_stall",
}


#: Scheduler name -> (kernel thread, CPU) it needs that thread pinned to.
#: 6.12: ops.init() runs on the lazily created scx_ops_enable_helper kthread,
#: and scx_central's init refuses any CPU but its central CPU (0).
QUIRKS: dict[str, tuple[str, int]] = {"scx_central": ("scx_ops_enable_helper", 0)}


def pin_kthread(comm: str, cpu: int) -> bool:
    """Pin every kernel thread named ``comm`` to ``cpu``; False if none."""
    found = False
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() == comm:
                os.sched_setaffinity(int(proc.name), {cpu})
                found = True
        except OSError:
            continue
    return found


def scx_state() -> str:
    try:
        return (SCX / "state").read_text().strip()
    except OSError:
        return "unsupported"


def scx_ops() -> str:
    try:
        return (SCX / "root" / "ops").read_text().strip()
    except OSError:
        return ""


class Kmsg:
    """Reads kernel log records that arrive after construction."""

    def __init__(self) -> None:
        self._fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self._fd, 0, os.SEEK_END)

    def read_new(self) -> list[str]:
        out = []
        while True:
            try:
                rec = os.read(self._fd, 8192)
            except BlockingIOError:
                break
            except OSError:  # EPIPE: records were overwritten; keep going
                continue
            if not rec:
                break
            _, _, text = rec.decode(errors="replace").partition(";")
            out.append(text.split("\n", 1)[0])
        return out

    def close(self) -> None:
        os.close(self._fd)


def _enable_dump_trace() -> bool:
    ev = TRACING / "events" / "sched_ext" / "sched_ext_dump" / "enable"
    try:
        ev.write_text("1")
        (TRACING / "trace").write_text("")
        return True
    except OSError:
        return False


def _read_dump_trace() -> str:
    try:
        lines = (TRACING / "trace").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(ln.split("sched_ext_dump: ", 1)[1] for ln in lines if "sched_ext_dump: " in ln)


def enabled_then_disabled(lines: list[str]) -> bool:
    """The kernel log says the scheduler was enabled, then disabled."""
    enabled = next((i for i, x in enumerate(lines) if _ENABLED_RE.search(x)), None)
    return enabled is not None and any(_DISABLED_RE.search(x) for x in lines[enabled:])


class Scheduler:
    """One scheduler process. Callbacks: ``on_output(text)`` for its output
    and ``on_death(kind, reason, dump, returncode)`` once, from the watcher."""

    def __init__(
        self,
        binary: str,
        args: list[str],
        *,
        on_output: Callable[[str], None],
        on_death: Callable[[str, str, str, int | None], None],
    ) -> None:
        self.argv = [binary, *args]
        self.name = os.path.basename(binary)
        self._on_output = on_output
        self._on_death = on_death
        self.tail: collections.deque[str] = collections.deque(maxlen=400)
        self.proc: subprocess.Popen[bytes] | None = None
        self.dead = threading.Event()
        self.stopping = False
        self._kmsg: Kmsg | None = None
        self._threads: list[threading.Thread] = []
        #: Kernel log lines read while waiting for the attach, for the death report.
        self._early: list[str] = []

    def start(self) -> None:
        self._kmsg = Kmsg()
        _enable_dump_trace()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        t = threading.Thread(target=self._pump, name="sched-output", daemon=True)
        t.start()
        self._threads.append(t)

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(8192):  # type: ignore[attr-defined]
            text = chunk.decode(errors="replace")
            self.tail.extend(text.splitlines())
            self._on_output(text)

    def output(self) -> str:
        return "\n".join(self.tail)

    def kernel_log(self) -> list[str]:
        """sched_ext kernel log lines since start (for a failed attach)."""
        lines = self._kmsg.read_new() if self._kmsg else []
        return [x for x in lines if "sched_ext" in x or x.startswith("   ")]

    def wait_attached(self, timeout: float) -> str | None:
        """None once attached, else why not (with the process's state)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if scx_state() == "enabled" and scx_ops():
                self._watch_from_now()
                return None
            code = self.proc.poll()
            if code is not None:
                time.sleep(0.2)  # let its last output arrive
                self._early = self._exit_lines(wait=1.0)
                if enabled_then_disabled(self._early):
                    # The kernel enabled it and disabled it again before we
                    # looked (e.g. it stalled this agent): a death, not a
                    # failure to attach; the watcher reports it with its reason.
                    # (A scheduler whose init failed was never enabled: that
                    # is a failure to attach, which a quirk may retry.)
                    self._watch_from_now()
                    return None
                return f"{self.name} exited with status {code} before attaching"
            time.sleep(0.05)
        return f"{self.name} did not attach within {timeout:.0f}s (sched_ext state: {scx_state()})"

    def _watch_from_now(self) -> None:
        t = threading.Thread(target=self._watch, name="sched-watch", daemon=True)
        t.start()
        self._threads.append(t)

    def _watch(self) -> None:
        assert self.proc is not None
        while not self.stopping:
            if self.proc.poll() is not None or scx_state() != "enabled":
                if not self.stopping:
                    self._report_death()
                return
            time.sleep(0.05)

    def _exit_lines(self, wait: float) -> list[str]:
        """Kernel log lines since start, waiting up to ``wait`` seconds for the
        disable message (printed late: after the disable work's RCU syncs)."""
        lines: list[str] = self._early
        self._early = []
        deadline = time.monotonic() + wait
        found_at = None
        while self._kmsg is not None and time.monotonic() < deadline:
            lines += self._kmsg.read_new()
            if found_at is None and any(_DISABLED_RE.search(x) for x in lines):
                found_at = time.monotonic()
            if found_at is not None and time.monotonic() - found_at > 0.3:
                break  # the "<name>: <msg>" line follows right after
            time.sleep(0.05)
        return lines

    def _report_death(self) -> None:
        assert self.proc is not None
        lines = self._exit_lines(wait=5.0)
        kind, reason = "unknown", ""
        for i, line in enumerate(lines):
            m = _DISABLED_RE.search(line)
            if m:
                kind = EXIT_KINDS.get(m.group(2), m.group(2))
                reason = m.group(2)
                prefix = f"sched_ext: {m.group(1)}: "
                msg = next((x[len(prefix) :] for x in lines[i + 1 :] if x.startswith(prefix)), "")
                if msg:
                    reason = f"{reason}: {msg}"
        code = self.proc.poll()
        if kind == "unknown" and code is not None:
            kind, reason = "process_exit", f"{self.name} exited with status {code}"
        dump = _read_dump_trace() or self.output()
        self.dead.set()
        self._on_death(kind, reason, dump, code)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGINT, then SIGKILL; idempotent."""
        self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._threads:
            t.join(2.0)
        if self._kmsg is not None:
            self._kmsg.close()
            self._kmsg = None
