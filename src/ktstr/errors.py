"""One exception tree. Every error carries its evidence and a hint.

``cli.py`` maps these classes to exit codes and prints ``str(err)`` (one line
of cause, then evidence) followed by ``hint``.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path


class KtstrError(Exception):
    """Root of every error ktstr raises on purpose."""

    hint: str = ""
    #: Exit code used by the CLI: 2 = usage or infrastructure error.
    exit_code: int = 2

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        if hint:
            self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(KtstrError):
    """Bad user input: a spec field, a CLI value, an environment variable."""


class TopologyError(ConfigError):
    """A CPU topology that cannot exist or cannot be booted."""


class KernelError(KtstrError):
    """No usable kernel: missing, lacking sched_ext, or a failed build."""


class KconfigError(KernelError):
    """Required kernel config options are missing."""

    def __init__(self, message: str, missing: Sequence[str], *, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.missing = list(missing)


class HostRefused(KtstrError):
    """In the guest: the host refused a request of the test (a BPF write of
    a ``.rodata`` variable, an unknown one); ``status`` is its errno."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class QemuError(KtstrError):
    """QEMU is missing, too old, or lacks a needed feature."""


def _tail_block(tail: str, lines: int = 15) -> str:
    rows = [r for r in tail.splitlines() if r.strip()][-lines:]
    return "\n".join("  | " + r for r in rows)


class VmError(KtstrError):
    """The VM failed; carries the QEMU command line and the console tail."""

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] = (),
        console_tail: str = "",
        artifacts: Path | None = None,
        hint: str = "",
    ) -> None:
        super().__init__(message, hint=hint)
        self.argv = list(argv)
        self.console_tail = console_tail
        self.artifacts = artifacts
        #: What the host collected before the error (a runner.GuestRun), if any.
        self.partial: object | None = None

    def __str__(self) -> str:
        parts = [self.message]
        if self.console_tail.strip():
            parts.append("console tail:\n" + _tail_block(self.console_tail))
        if self.argv:
            parts.append("qemu: " + shlex.join(self.argv))
        if self.artifacts is not None:
            parts.append(f"artifacts kept in {self.artifacts}")
        return "\n".join(parts)


class VmLaunchError(VmError):
    """QEMU exited before the guest got going."""

    def __init__(self, message: str, *, exit_code: int | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.qemu_exit_code = exit_code


class QemuAbortError(VmLaunchError):
    """QEMU itself aborted (SIGABRT) before the guest agent was ready."""


class BootTimeoutError(VmError):
    """The guest did not become ready in time."""


class GuestPanicError(VmError):
    """The guest kernel panicked, oopsed or hit a GPF (its console says so)."""


class GuestLostError(VmError):
    """The guest went away (QEMU died, the channel closed) mid-run."""


class ProtocolError(KtstrError):
    """Bytes on the wire that cannot be decoded where decoding must succeed."""

    def __init__(self, message: str, *, raw: bytes = b"", offset: int = 0) -> None:
        super().__init__(message)
        self.raw = raw
        self.offset = offset


class Interrupted(KtstrError):
    """The user pressed Ctrl-C; everything was cleaned up."""

    exit_code = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (every owner cleans up on the way out)."""


class InternalError(KtstrError):
    """A bug in ktstr: an unexpected exception, turned into an error with evidence."""

    def __init__(self, message: str, *, evidence: Path | None = None) -> None:
        super().__init__(
            message,
            hint="this is a ktstr bug; please report it"
            + (f" with {evidence}" if evidence else "")
            + " (--debug shows the traceback)",
        )
        self.evidence = evidence


class AgentCrashError(VmError):
    """The guest agent raised; carries its traceback."""

    def __init__(self, message: str, *, traceback_text: str = "", **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        base = super().__str__()
        if self.traceback_text:
            base += "\nguest traceback:\n" + self.traceback_text.rstrip()
        return base
