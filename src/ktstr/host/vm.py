"""Vm: owns one QEMU process, its run directory, sockets and reader threads.

Lifecycle: ``Vm(spec, job)`` records intent -> ``launch()`` -> the caller
reads ``channel.frames`` -> ``wait(timeout)`` -> ``close()``. Use it as a
context manager: leaving the block kills QEMU if still running, removes the
run directory, and on a failure moves the evidence (console log, QEMU argv
and stderr, frame transcript) into the results directory first.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ktstr.errors import QemuAbortError, VmError, VmLaunchError
from ktstr.host.channel import Channel
from ktstr.host.console import Console
from ktstr.host.qemu_argv import VmSpec, qemu_argv
from ktstr.host.qmp import Qmp
from ktstr.host.results import new_run_dir, results_root
from ktstr.host.signals import deferred_signals

log = logging.getLogger(__name__)


def _die_with_parent_prefix() -> list[str]:
    """argv prefix that makes QEMU get SIGKILL when its parent dies.

    util-linux's setpriv sets PR_SET_PDEATHSIG and execs; unlike a
    ``preexec_fn`` that is safe while our reader threads run. The signal
    follows the *thread* that launched QEMU, so launch from a long-lived one.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.debug("setpriv not found: QEMU will not die with its parent")
        return []
    return [setpriv, "--pdeathsig", "KILL", "--"]


#: Longest run dir that still fits "/qmp.sock" and "/channel.sock" in sun_path.
SOCKET_DIR_MAX = 90


def sweep_stale_memory() -> None:
    """Remove guest RAM files a SIGKILLed ktstr left behind (its pid is gone)."""
    base = Path(shm_dir() or tempfile.gettempdir())
    for d in base.glob("ktstr-mem-*"):
        try:
            pid = int((d / "owner").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError):
            continue


def shm_dir() -> str | None:
    """Where guest RAM files go: tmpfs (/dev/shm) when there is one, so the
    guest's memory never touches a disk; else the default temp dir."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


class VmState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    EXITED = "exited"
    CLOSED = "closed"


class Vm:
    def __init__(
        self,
        spec: VmSpec,
        job: dict[str, Any],
        *,
        name: str = "vm",
        evidence_dir: Path | None = None,
    ) -> None:
        self.name = name
        #: Where evidence goes when kept (default: a new dir in results_root()).
        self.evidence_dir = evidence_dir
        self._spec_template = spec
        self.job = job
        self.spec = spec
        self.state = VmState.NEW
        self.proc: subprocess.Popen[bytes] | None = None
        self.console: Console | None = None
        self.channel: Channel | None = None
        self.qmp: Qmp | None = None
        self.run_dir: Path | None = None
        self.artifacts: Path | None = None
        self.argv: list[str] = []
        self.launched_at = 0.0
        self._listener: socket.socket | None = None
        self._socket_dir: Path | None = None
        #: Guest RAM files (spec.share_memory), removed on close.
        self.memory_dir: Path | None = None
        self._stderr_file: Any = None

    # -- lifecycle ----------------------------------------------------------
    def launch(self, connect_timeout: float = 30.0) -> None:
        if self.state is not VmState.NEW:
            raise VmError(f"launch() on a VM in state {self.state.value}")
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"ktstr-{self.name[:16]}-"))
        if len(str(self.run_dir)) > SOCKET_DIR_MAX:  # a long $TMPDIR
            self._socket_dir = Path(tempfile.mkdtemp(prefix="ktstr-", dir="/tmp"))
        if self._spec_template.share_memory:
            sweep_stale_memory()
            self.memory_dir = Path(tempfile.mkdtemp(prefix="ktstr-mem-", dir=shm_dir()))
            (self.memory_dir / "owner").write_text(str(os.getpid()))
        self.spec = dataclasses.replace(
            self._spec_template,
            run_dir=self.run_dir,
            socket_dir=self._socket_dir,
            memory_dir=self.memory_dir,
        )
        self.spec.share_dir.mkdir()
        (self.spec.share_dir / "job.json").write_text(json.dumps(self.job))
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.spec.channel_socket))
        self._listener.listen(1)
        self.argv = qemu_argv(self.spec)
        (self.run_dir / "qemu.argv").write_text(shlex.join(self.argv) + "\n")
        log.info("launching: %s", shlex.join(self.argv))
        self._stderr_file = (self.run_dir / "qemu.stderr").open("wb")
        interactive = self.spec.interactive
        self.launched_at = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                _die_with_parent_prefix() + self.argv,
                stdin=None if interactive else subprocess.DEVNULL,
                stdout=None if interactive else subprocess.PIPE,
                stderr=self._stderr_file,
                start_new_session=not interactive,
            )
        except OSError as exc:
            raise VmLaunchError(f"cannot start QEMU: {exc}", argv=self.argv) from exc
        self.state = VmState.RUNNING
        if self.proc.stdout is not None:
            self.console = Console(self.proc.stdout, self.run_dir / "console.log")
            self.console.start()
        self._accept_channel(connect_timeout)
        self.qmp = Qmp(self.spec.qmp_socket)
        try:
            self.qmp.connect(timeout=connect_timeout)
        except VmError as exc:
            raise self._launch_failure(str(exc)) from exc

    def _accept_channel(self, timeout: float) -> None:
        assert self._listener is not None and self.run_dir is not None
        self._listener.settimeout(0.1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn, _ = self._listener.accept()
                break
            except TimeoutError:
                if self.exited():
                    raise self._launch_failure("QEMU exited during startup") from None
                if time.monotonic() > deadline:
                    raise self._launch_failure(
                        f"QEMU did not connect the channel within {timeout:.0f}s"
                    ) from None
        conn.settimeout(None)
        self.channel = Channel(conn, self.run_dir / "frames.bin")
        self.channel.start()

    def _launch_failure(self, what: str) -> VmLaunchError:
        code = self.proc.poll() if self.proc else None
        cls = QemuAbortError if code == -signal.SIGABRT else VmLaunchError
        return cls(
            f"{what}: {self.qemu_stderr().strip().splitlines()[-1:] or ['(no stderr)']}"[:400],
            exit_code=code,
            argv=self.argv,
            console_tail=self.console_tail(),
        )

    def exited(self) -> bool:
        if self.proc is None or self.proc.poll() is None:
            return False
        self.state = VmState.EXITED
        return True

    def wait(self, timeout: float | None = None) -> int:
        """Wait for QEMU to exit; return its exit code."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self.state = VmState.EXITED
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.state is VmState.RUNNING:
            self.state = VmState.EXITED

    def shutdown(self, hard: bool = False, timeout: float = 5.0) -> None:
        """Stop QEMU: ask via QMP ``quit`` (unless hard), then kill."""
        if self.proc is None or self.proc.poll() is not None:
            self.state = VmState.EXITED if self.proc else self.state
            return
        if not hard and self.qmp is not None:
            try:
                self.qmp.quit()
                self.proc.wait(timeout)
            except Exception as exc:
                log.debug("QMP quit failed (%s); killing QEMU", exc)
        self.kill()

    def close(self, *, keep_evidence: bool = False) -> Path | None:
        """Release everything. Idempotent. Returns where evidence was kept.
        A Ctrl-C or SIGTERM during cleanup is raised after it, not within."""
        if self.state is VmState.CLOSED:
            return self.artifacts
        with deferred_signals():
            self._close(keep_evidence)
        return self.artifacts

    def _close(self, keep_evidence: bool) -> None:
        try:
            self.shutdown(hard=True)
        finally:
            for closer in (self.qmp, self.channel):
                if closer is not None:
                    try:
                        closer.close()
                    except Exception as exc:
                        log.debug("close: %s", exc)
            if self.console is not None:
                self.console.join()
            if self.proc is not None and self.proc.stdout is not None:
                self.proc.stdout.close()
            if self._listener is not None:
                self._listener.close()
            if self._stderr_file is not None:
                self._stderr_file.close()
            if self.run_dir is not None:
                if keep_evidence:
                    self.artifacts = self._keep_evidence(self.run_dir)
                shutil.rmtree(self.run_dir, ignore_errors=True)
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
            if self.memory_dir is not None:
                shutil.rmtree(self.memory_dir, ignore_errors=True)
            self.state = VmState.CLOSED

    def _keep_evidence(self, run_dir: Path) -> Path | None:
        try:
            dest = self.evidence_dir or new_run_dir(results_root(), self.name)
            dest.mkdir(parents=True, exist_ok=True, mode=0o700)
            items = [i for i in run_dir.iterdir() if i.is_file() and not i.is_socket()]
            share = run_dir / "share" / "job.json"
            for item in [*items, share] if share.exists() else items:
                shutil.copyfile(item, dest / item.name)
                os.chmod(dest / item.name, 0o600)
        except OSError as exc:
            log.warning("could not keep evidence in %s: %s", dest, exc)
            return None
        return dest

    def __enter__(self) -> Vm:
        try:
            self.launch()
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        failed = exc is not None and not isinstance(exc, KeyboardInterrupt)
        where = self.close(keep_evidence=failed)
        if isinstance(exc, VmError) and exc.artifacts is None:
            exc.artifacts = where

    # -- evidence -----------------------------------------------------------
    def log_notes(self) -> list[str]:
        """Notes for the run when console.log or frames.bin hit their cap."""
        logs = [x.log for x in (self.console, self.channel) if x is not None]
        return [n for n in (log.note() for log in logs) if n]

    def console_tail(self, lines: int = 40) -> str:
        return self.console.tail(lines) if self.console else ""

    def qemu_stderr(self) -> str:
        """QEMU's stderr without TCG's per-feature CPU model warnings."""
        if self.run_dir is None:
            return ""
        path = self.run_dir / "qemu.stderr"
        try:
            if self._stderr_file is not None:
                self._stderr_file.flush()
            text = path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(
            ln for ln in text.splitlines() if "doesn't support requested feature" not in ln
        )
