"""Fixtures for tests that boot real kernels. They skip only when the host
truly lacks something, and say what."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ktstr.errors import KtstrError
from ktstr.host.kernel import Kernel, resolve_kernel
from ktstr.host.qemu import QemuInfo, find_qemu


@pytest.fixture(scope="session")
def qemu() -> QemuInfo:
    try:
        return find_qemu()
    except KtstrError as exc:
        pytest.skip(f"host lacks QEMU: {exc} (run ./scripts/setup)")


@pytest.fixture(scope="session")
def kernel(qemu: QemuInfo) -> Kernel:
    try:
        return resolve_kernel(None)
    except KtstrError as exc:
        pytest.skip(f"host lacks a sched_ext kernel: {exc} (run ./scripts/setup)")


def qemu_processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and text.encode() in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def qemu_pids():
    """qemu_pids(text) -> PIDs of QEMU processes whose command line has text."""
    return qemu_processes_mentioning


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Private TMPDIR and results dir; afterwards nothing may be left behind:
    no temp dir, no socket, no QEMU process."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("KTSTR_RESULTS", str(tmp_path / "results"))
    yield tmp_path
    assert os.listdir(tmp) == [], f"left behind in TMPDIR: {os.listdir(tmp)}"
    assert qemu_processes_mentioning(str(tmp)) == [], "QEMU still running"


SHARED = Path(__file__).resolve().parents[3] / "shared" / "kernels"


@pytest.fixture(scope="session")
def kernels(tmp_path_factory, kernel: Kernel) -> dict[str, Kernel]:
    """Every shared test kernel (6.12 and 7.x), imported into a private cache
    so the default kernel stays the default; keyed by major.minor."""
    from ktstr.host.kernel import import_kernel, load_kernel

    found = {".".join(kernel.version.split(".")[:2]): kernel}
    root = tmp_path_factory.mktemp("kernels")
    for src in sorted(SHARED.glob("linux-*")) if SHARED.is_dir() else []:
        k = load_kernel(import_kernel(src, root=root))
        found.setdefault(".".join(k.version.split(".")[:2]), k)
    return found


def kernel_for(kernels: dict[str, Kernel], series: str) -> Kernel:
    if series not in kernels:
        pytest.skip(f"host lacks a Linux {series} kernel (shared kernels: {SHARED})")
    return kernels[series]


#: Start a scheduler and a spinner pinned to each of 4 CPUs; once it is
#: enabled, print where vmcoreinfo is (for capture_live).
CAPTURE_JOB = (
    "{sched} >/dev/null 2>&1 & P=$!; "
    "for c in {cpus}; do taskset -c $c sh -c 'while :; do :; done' >/dev/null & "
    'P="$P $!"; done; '
    "for i in $(seq 100); do grep -q '^enabled' /sys/kernel/sched_ext/state && break; "
    "sleep 0.2; done; sleep 1; echo VMCI $(cat /sys/kernel/vmcoreinfo); sleep 6; kill $P"
)


def capture_live(kernel: Kernel, scheduler: Path, topology, grab, spin: bool = True) -> bool:
    """Boot ``kernel`` with shared RAM, run ``scheduler`` (under a spinner
    pinned to each CPU, with ``spin``), and call ``grab(mem, info)`` once
    while it runs (the guest is live: what a test records from it is what
    the unit tier replays). True if it was called."""
    from ktstr.host.vm import shm_dir
    from ktstr.inspect.memory import GuestMemory
    from ktstr.inspect.program import read_vmcoreinfo
    from ktstr.runner import BootRequest, run_guest

    done: list[bool] = []

    def on_text(kind, text):
        if "VMCI" not in text or done:
            return
        done.append(True)
        phys, size = (int(x, 16) for x in text.split("VMCI")[1].split()[:2])
        mine = [
            d for d in Path(shm_dir() or "/tmp").glob("ktstr-mem-*")
            if (d / "owner").read_text() == str(os.getpid())
        ]  # fmt: skip
        mem = GuestMemory(sorted(mine[0].glob("node*")))
        try:
            grab(mem, read_vmcoreinfo(mem, phys, size))
        finally:
            mem.close()

    job = {
        "mode": "exec",
        "command": CAPTURE_JOB.format(sched=scheduler, cpus="0 1 2 3" if spin else ""),
        "host_paths": [str(scheduler)],
    }
    req = BootRequest(kernel=kernel, topology=topology, job=job, share_memory=True,
                      ready_timeout=120)  # fmt: skip
    run_guest(req, on_text=on_text)
    return bool(done)
