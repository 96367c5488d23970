"""Find QEMU, read its version, and choose the accelerator (KVM or TCG)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ktstr.errors import QemuError
from ktstr.host.qemu_argv import SAFE_MTTCG_VERSION, Accel

log = logging.getLogger(__name__)

MIN_VERSION = (7, 0, 0)
_VERSION_RE = re.compile(r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?")
INSTALL_HINT = (
    "install it with ./scripts/setup (Debian/Ubuntu: apt-get install qemu-system-x86), "
    "or point $KTSTR_QEMU at a qemu-system-x86_64 binary"
)


@dataclass(frozen=True, slots=True)
class QemuInfo:
    binary: str
    version: tuple[int, int, int]

    @property
    def version_str(self) -> str:
        return ".".join(map(str, self.version))


def parse_version(text: str) -> tuple[int, int, int]:
    m = _VERSION_RE.search(text)
    if not m:
        raise QemuError(f"cannot read a QEMU version from {text.strip()[:80]!r}")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def find_qemu(binary: str | None = None) -> QemuInfo:
    """Locate qemu-system-x86_64 ($KTSTR_QEMU wins) and check its version."""
    name = binary or os.environ.get("KTSTR_QEMU") or "qemu-system-x86_64"
    path = shutil.which(name)
    if path is None:
        raise QemuError(f"QEMU not found: no {name!r} on PATH", hint=INSTALL_HINT)
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise QemuError(f"cannot run {path} --version: {exc}", hint=INSTALL_HINT) from exc
    version = parse_version(out.stdout + out.stderr)
    if version < MIN_VERSION:
        raise QemuError(
            f"QEMU {'.'.join(map(str, version))} at {path} is too old; ktstr needs >= "
            f"{'.'.join(map(str, MIN_VERSION))}",
            hint=INSTALL_HINT,
        )
    return QemuInfo(binary=path, version=version)


@dataclass(frozen=True, slots=True)
class AccelChoice:
    accel: Accel
    tcg_multithread: bool
    reason: str

    def describe(self) -> str:
        if self.accel is Accel.KVM:
            return f"KVM ({self.reason})"
        mode = "multi-threaded" if self.tcg_multithread else "single-threaded"
        return f"TCG, {mode} ({self.reason})"

    def boot_budget(self, vcpus: int) -> float:
        """Seconds from QEMU start to the agent's SysReady before the run is
        called a boot timeout. Measured on a 2-CPU host (lpj preset, agent
        ready): KVM boots in seconds at any size; multi-threaded TCG costs
        about 0.3 s per vCPU (64 in 19 s); one TCG thread serializes every
        cross-CPU wait over all vCPUs, so its cost grows faster than their
        count and swings widely (4 in 5.5 s; 64 in 50 s one time, 354 s the
        next), hence a square. Each budget is 60 s plus ample room.
        """
        if self.accel is Accel.KVM:
            return 60.0 + 0.5 * vcpus
        if self.tcg_multithread:
            return 60.0 + 1.0 * vcpus
        return 60.0 + 0.33 * vcpus * vcpus


def tcg_lpj(kernel_hz: int, cpuinfo: Path = Path("/proc/cpuinfo")) -> int | None:
    """``lpj=`` for a TCG guest of a kernel with ``CONFIG_HZ=kernel_hz``: one
    jiffy of the host's TSC, which is the TCG guest's TSC; None if unknown.

    Without it each secondary vCPU measures its delay loop against jiffies
    (about 1 s under TCG, serialized at boot: 32 vCPUs booted in 41 s, with it
    in 7.5 s). The host's ``cpu MHz`` stands in for its TSC rate; an error
    there only scales the guest's ``udelay``, which emulated devices ignore.
    """
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([0-9.]+)", text, re.M)]
    if not mhz or kernel_hz <= 0:
        return None
    return max(1, round(max(mhz) * 1e6 / kernel_hz))


def kvm_blocker(dev: Path = Path("/dev/kvm"), sys_module: Path = Path("/sys/module")) -> str | None:
    """Why KVM cannot be used here without trying, or None if worth a probe."""
    if not dev.exists():
        return f"{dev} does not exist"
    if not os.access(dev, os.R_OK | os.W_OK):
        return f"no read/write access to {dev} (add yourself to the 'kvm' group)"
    if (sys_module / "kvm_pvm").exists():
        # PVM hosts only run PVM-enabled guest kernels; others crash or crawl.
        return f"{dev} is PVM (kvm_pvm module), which cannot run ordinary guest kernels"
    return None


def probe_kvm_boot(qemu: QemuInfo, kernel: Path, timeout: float = 20.0) -> str | None:
    """Boot ``kernel`` under KVM until it panics for lack of a root fs.

    Reaching that panic proves KVM runs this kernel. Returns None on success,
    else why not.
    """
    with tempfile.TemporaryDirectory(prefix="ktstr-kvmprobe-") as tmp:
        log_path = Path(tmp) / "console.log"
        argv = [
            qemu.binary, "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
            "-machine", "pc", "-accel", "kvm", "-cpu", "host", "-m", "256M",
            "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 root=/dev/ktstr-none",
            "-serial", f"file:{log_path}",
        ]  # fmt: skip
        log.debug("KVM probe: %s", " ".join(argv))
        deadline = time.monotonic() + timeout
        with subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        ) as proc:
            try:
                while time.monotonic() < deadline:
                    text = log_path.read_text(errors="replace") if log_path.exists() else ""
                    if "Kernel panic" in text or "VFS:" in text:
                        return None
                    if proc.poll() is not None:
                        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                        return f"QEMU with -accel kvm exited: {err.strip()[:200]}"
                    time.sleep(0.1)
                return f"probe boot under KVM did not reach the kernel's root mount in {timeout}s"
            finally:
                proc.kill()


def choose_accel(
    qemu: QemuInfo, kernel: Path, requested: str | None = None, *, probe: bool = True
) -> AccelChoice:
    """KVM when a probe boot succeeds; otherwise TCG (multi-threaded where safe)."""
    mttcg = qemu.version >= SAFE_MTTCG_VERSION
    tcg_note = "" if mttcg else f"; single-threaded since QEMU {qemu.version_str} < 8.1"
    if requested == "tcg":
        return AccelChoice(Accel.TCG, mttcg, "requested" + tcg_note)
    if requested == "kvm":
        blocker = kvm_blocker()
        if blocker and "PVM" not in blocker:
            raise QemuError(f"--accel kvm: {blocker}", hint="use --accel tcg or fix KVM access")
        return AccelChoice(Accel.KVM, False, "requested")
    if requested not in (None, "auto"):
        raise QemuError(f"unknown accelerator {requested!r}", hint="use kvm, tcg or auto")
    blocker = kvm_blocker()
    if blocker is None and probe:
        blocker = probe_kvm_boot(qemu, kernel)
    if blocker is None:
        return AccelChoice(Accel.KVM, False, "probe boot succeeded")
    return AccelChoice(Accel.TCG, mttcg, blocker + tcg_note)
