"""Run payloads (real programs) inside their cgroups and collect what they
printed. The host parses it: this side only runs, stops and reads back.

A payload joins its cgroup before it execs (a tiny ``sh`` prologue writes
its pid to ``cgroup.procs``), so not one instruction of it runs outside its
cpuset. It runs in its own process group: stopping it reaches every process
it forked (stress-ng's stressors, hackbench's senders).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from ktstr.protocol.messages import (
    PAYLOAD_ERR_MAX,
    PAYLOAD_OUT_MAX,
    PAYLOAD_REPORT_MAX,
    PayloadMetrics,
)
from ktstr.spec.payload import Payload, PayloadKind, Until

#: Seconds a payload may take to write its summary after SIGINT.
STOP_GRACE = 20.0
KILL_WAIT = 5.0
_JOIN = 'echo 0 > "$1/cgroup.procs" || exit 126; shift; exec "$@"'


def argv(payload: Payload, report: str) -> list[str]:
    """The command line, with the report file the agent asks for."""
    prog = payload.program
    if payload.kind is PayloadKind.STRESS_NG:
        return [prog, *payload.args, "--metrics", "--yaml", report]
    if payload.kind is PayloadKind.CYCLICTEST:
        return [prog, *payload.args, f"--json={report}"]
    if payload.kind is PayloadKind.COMMAND:
        return list(payload.args)
    return [prog, *payload.args]


def _tail(path: Path, limit: int) -> str:
    """The last ``limit`` characters of a file (bytes read are bounded too)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4 * limit))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return text[-limit:]


class PayloadRun:
    """One payload process: start in a cgroup, stop, and its result."""

    def __init__(
        self, payload: Payload, cgroup: str, index: int, procs_dir: str, workdir: str
    ) -> None:
        self.payload, self.cgroup, self.index = payload, cgroup, index
        self.dir = Path(workdir) / f"{payload.name}-{index}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.report = self.dir / "report"
        self.command = argv(payload, str(self.report))
        self.procs_dir = procs_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.error = ""
        self.started = self.ended_at = 0.0
        self.stopped = False
        self._done = threading.Event()

    def start(self) -> None:
        exe = shutil.which(self.command[0])
        if exe is None:
            self.error = (
                f"{self.command[0]}: not found (the guest runs the host's programs: "
                "install it on the host)"
            )
            return
        self.started = time.monotonic()
        with open(self.dir / "stdout", "wb") as out, open(self.dir / "stderr", "wb") as err:
            try:
                self.proc = subprocess.Popen(
                    [
                        "/bin/sh",
                        "-c",
                        _JOIN,
                        "ktstr-payload",
                        self.procs_dir,
                        exe,
                        *self.command[1:],
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=self.dir,
                    start_new_session=True,
                )
            except OSError as exc:
                self.error = f"cannot start {self.command[0]}: {exc}"
                return
        threading.Thread(
            target=self._wait, name=f"payload-{self.payload.name}", daemon=True
        ).start()

    def _wait(self) -> None:
        assert self.proc is not None
        self.proc.wait()
        self.ended_at = time.monotonic()
        self._done.set()

    def running(self) -> bool:
        return self.proc is not None and not self._done.is_set()

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        """End it if it still runs: SIGINT (it writes its summary) when it runs
        until stopped, else SIGKILL straight away (it did not complete)."""
        if not self.running():
            return
        self.stopped = True
        if self.payload.until is Until.STOPPED:
            self._signal(signal.SIGINT)
            if self._done.wait(STOP_GRACE):
                self._signal(signal.SIGKILL)  # stragglers of its group
                return
        self._signal(signal.SIGKILL)
        self._done.wait(KILL_WAIT)

    def kill(self) -> None:
        """Last resort on the way out: nothing of it survives the run."""
        if self.proc is not None:
            self._signal(signal.SIGKILL)

    def result(self) -> PayloadMetrics:
        code = self.proc.returncode if self.proc is not None else None
        ended = "never" if self.proc is None else "stopped" if self.stopped else "exit"
        end = self.ended_at or time.monotonic()
        return PayloadMetrics(
            payload=self.payload.name,
            cgroup=self.cgroup,
            index=self.index,
            command=[c[:4096] for c in self.command],
            exit_code=code if code is not None and -255 <= code <= 255 else None,
            ended=ended,
            duration_s=max(0.0, end - self.started) if self.started else 0.0,
            stdout=_tail(self.dir / "stdout", PAYLOAD_OUT_MAX),
            stderr=_tail(self.dir / "stderr", PAYLOAD_ERR_MAX),
            report=_tail(self.report, PAYLOAD_REPORT_MAX),
            error=self.error[:4096],
        )
