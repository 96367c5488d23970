"""Guest agent: PID 1 inside the VM. Imports only spec/ and protocol/.

Boot: mount what the run needs, open the virtio-serial port, read the job
the host left on the read-only run share, send SysReady, do the job, send
Exit, power off. Any exception becomes a Crash frame before power-off, so
the host always learns why.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import json
import os
import select
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import ktstr
from ktstr.protocol.frames import FrameDecoder
from ktstr.protocol.messages import (
    BpfWrite,
    CaptureKind,
    Crash,
    Encoder,
    Exit,
    HostReply,
    KernAddrs,
    Lifecycle,
    MessageKind,
    SnapshotRequest,
    TestResult,
)

PORT_NAME = "org.ktstr.0"
RUN_TAG = "ktstr_run"
RUN_MOUNT = "/run/ktstr"
_LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
_MS_BIND = 4096
HOST_TMP = "/run/ktstr-host-tmp"

# (source, target, fstype, options); failures of optional ones are reported, not fatal.
MOUNTS: tuple[tuple[str, str, str, str, bool], ...] = (
    ("proc", "/proc", "proc", "", True),
    ("sysfs", "/sys", "sysfs", "", True),
    ("devtmpfs", "/dev", "devtmpfs", "mode=0755", True),
    ("tmpfs", "/run", "tmpfs", "mode=0755", True),
    ("devpts", "/dev/pts", "devpts", "gid=5,mode=620,ptmxmode=666", False),
    ("tmpfs", "/dev/shm", "tmpfs", "mode=1777", False),
    ("cgroup2", "/sys/fs/cgroup", "cgroup2", "nsdelegate", False),
    ("debugfs", "/sys/kernel/debug", "debugfs", "", False),
    ("tracefs", "/sys/kernel/tracing", "tracefs", "", False),
    ("bpf", "/sys/fs/bpf", "bpf", "mode=0700", False),
    (RUN_TAG, RUN_MOUNT, "9p", "trans=virtio,version=9p2000.L,ro", True),
)


class Port:
    """The guest end of the message bus (both directions)."""

    def __init__(self, fd: BinaryIO) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self.enc = Encoder()
        self._dec = FrameDecoder()
        self._request_id = 0

    def send(self, data: bytes) -> None:
        """Write a whole frame: a virtio-serial write may take only part."""
        view = memoryview(data)
        fd = self._fd.fileno()
        with self._lock:
            while view:
                view = view[os.write(fd, view) :]

    def next_request_id(self) -> int:
        with self._lock:
            self._request_id += 1
            return self._request_id

    def request_snapshot(
        self, request_id: int, capture: CaptureKind, timeout: float, name: str = ""
    ) -> int:
        """Ask the host to freeze and capture; block until its reply.
        Returns the reply status (0 = captured)."""
        msg = SnapshotRequest(request_id=request_id, capture=capture, name=name)
        return self._request(self.enc.message(msg), request_id, timeout)

    def request_write(self, var: str, value: int, timeout: float) -> int:
        """Ask the host to write the scheduler's BPF global ``var``; its
        status (0 = written, else an errno)."""
        rid = self.next_request_id()
        msg = BpfWrite(request_id=rid, var=var, value=value)
        return self._request(self.enc.message(msg), rid, timeout)

    def _request(self, frame: bytes, request_id: int, timeout: float) -> int:
        self.send(frame)
        deadline = time.monotonic() + timeout
        fd = self._fd.fileno()
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            for f in self._dec.feed(os.read(fd, 4096)):
                if f.crc_ok and f.kind == MessageKind.HOST_REPLY:
                    reply = HostReply.from_bytes(f.payload)
                    if reply.request_id == request_id:
                        return reply.status
        raise TimeoutError(f"no host reply for request {request_id} in {timeout}s")


_libc = ctypes.CDLL(None, use_errno=True)


def _mount(src: str, target: str, fstype: str, opts: str, flags: int = 0) -> None:
    os.makedirs(target, exist_ok=True)
    rc = _libc.mount(src.encode(), target.encode(), fstype.encode(), flags, opts.encode() or None)
    if rc != 0:
        err = ctypes.get_errno()
        if err == errno.EBUSY:  # already mounted (e.g. CONFIG_DEVTMPFS_MOUNT)
            return
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def mount_all() -> list[str]:
    failed: list[str] = []
    for src, target, fstype, opts, required in MOUNTS:
        try:
            _mount(src, target, fstype, opts)
        except OSError as exc:
            if required:
                raise
            failed.append(str(exc))
    return failed


def private_tmp(keep: list[str]) -> list[str]:
    """A writable tmpfs on /tmp that still shows the host subtrees in
    ``keep`` (this interpreter and package, the job's host_paths) at their
    own paths, read-only: the host's /tmp is bound aside first, then each
    needed top-level entry is bound back."""
    _mount("/tmp", HOST_TMP, "", "", _MS_BIND)
    _mount("tmpfs", "/tmp", "tmpfs", "mode=1777")
    kept = []
    for path in sorted({p for p in keep if p.startswith("/tmp/")}):
        top = path.split("/")[2]
        if top in kept or not os.path.exists(os.path.join(HOST_TMP, top)):
            continue
        _mount(os.path.join(HOST_TMP, top), f"/tmp/{top}", "", "", _MS_BIND)
        kept.append(top)
    return kept


def own_paths() -> list[str]:
    """Host paths this agent runs from (interpreter, prefixes, package root)."""
    paths = [sys.executable, sys.prefix, sys.base_prefix, os.path.realpath(sys.executable)]
    return [*paths, str(Path(__file__).resolve().parents[2])]


def kern_addrs() -> KernAddrs | None:
    """Where this kernel's vmcoreinfo note is, for the host's inspection
    (``/sys/kernel/vmcoreinfo``: physical address and size, in hex)."""
    try:
        phys, size = _read("/sys/kernel/vmcoreinfo").split()[:2]
        return KernAddrs(vmcoreinfo_phys=int(phys, 16), vmcoreinfo_size=int(size, 16))
    except (ValueError, OSError):
        return None


def open_port() -> BinaryIO:
    for name_file in glob.glob("/sys/class/virtio-ports/*/name"):
        if Path(name_file).read_text().strip() == PORT_NAME:
            dev = "/dev/" + Path(name_file).parent.name
            return open(dev, "r+b", buffering=0)  # lives for the run
    raise RuntimeError(f"virtio-serial port {PORT_NAME} not found in /sys/class/virtio-ports")


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def guest_topology() -> dict[str, Any]:
    """What the guest kernel believes the CPU topology is (from sysfs)."""
    cpus: dict[str, dict[str, str]] = {}
    for path in glob.glob("/sys/devices/system/cpu/cpu[0-9]*"):
        cpu = path.rsplit("cpu", 1)[1]
        cpus[cpu] = {
            "core_cpus": _read(f"{path}/topology/core_cpus_list"),
            "l3_cpus": _read(f"{path}/cache/index3/shared_cpu_list"),
            "package": _read(f"{path}/topology/physical_package_id"),
            "die": _read(f"{path}/topology/die_id"),
        }
    nodes = {
        p.rsplit("node", 1)[1]: _read(f"{p}/cpulist")
        for p in glob.glob("/sys/devices/system/node/node[0-9]*")
    }
    return {"online": _read("/sys/devices/system/cpu/online"), "cpus": cpus, "nodes": nodes}


def _pump(stream: BinaryIO, port: Port, kind: MessageKind) -> None:
    while chunk := stream.read1(16384):  # type: ignore[attr-defined]
        port.send(port.enc.text(kind, chunk))


def run_exec(port: Port, command: str) -> int:
    import subprocess  # not on the boot path: every import costs boot time under TCG

    proc = subprocess.Popen(
        ["/bin/sh", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/tmp"
    )
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, port, MessageKind.STDOUT)),
        threading.Thread(target=_pump, args=(proc.stderr, port, MessageKind.STDERR)),
    ]
    for t in pumps:
        t.start()
    code = proc.wait()
    for t in pumps:
        t.join()
    return shell_status(code)


def shell_status(code: int) -> int:
    """A shell's view of an exit: 128 + N for death by signal N, 0..255."""
    return 128 - code if code < 0 else min(code, 255)


def run_shell() -> int:
    """An interactive shell on the serial console, as its controlling tty."""
    shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
    pid = os.fork()
    if pid == 0:
        os.setsid()
        fd = os.open("/dev/ttyS0", os.O_RDWR)
        fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
        for target in (0, 1, 2):
            os.dup2(fd, target)
        os.chdir("/tmp")
        os.execv(shell, [shell, "-i"])
    while True:
        wpid, status = os.wait()
        if wpid == pid:
            return shell_status(os.waitstatus_to_exitcode(status))


def do_job(port: Port, job: dict[str, Any]) -> int:
    mode = job.get("mode", "probe")
    if mode == "probe":
        port.send(port.enc.message(TestResult(name="topology", passed=True, data=guest_topology())))
        return 0
    if mode == "exec":
        return run_exec(port, str(job["command"]))
    if mode == "shell":
        return run_shell()
    if mode == "test":
        from ktstr.guest.testctx import run_test

        return run_test(port, job)
    if mode == "scenario":
        from ktstr.guest.scenario import run_scenario  # only scenario runs pay for it

        return run_scenario(port, job)
    if mode == "attach":  # the scheduler attaches, reports its programs, stops
        from ktstr.guest.scenario import session
        from ktstr.protocol.messages import RunSummary

        return session(port, job, "attach", lambda ex: RunSummary())
    if mode == "kselftest":
        from ktstr.guest.kselftest import run_kselftest

        return run_kselftest(port, job)
    if mode == "snapshot":
        t0 = time.monotonic()
        status = port.request_snapshot(port.next_request_id(), CaptureKind.REGISTERS, 60.0)
        data = {"status": status, "round_trip_s": time.monotonic() - t0}
        port.send(port.enc.message(TestResult(name="snapshot", passed=status == 0, data=data)))
        return 0 if status == 0 else 1
    raise ValueError(f"unknown job mode {mode!r}")


def power_off() -> None:
    os.sync()
    _libc.reboot(_LINUX_REBOOT_CMD_POWER_OFF)
    # Only reached if reboot() failed; PID 1 exiting panics, which with
    # panic=-1 and -no-reboot also ends QEMU.
    os._exit(1)


def _uptime() -> float:
    """Seconds since the kernel started (what /proc/uptime says, without /proc)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def main() -> None:
    os.environ.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    os.environ["PATH"] = os.environ["PATH"] or "/usr/bin:/bin"
    port: Port | None = None
    code = 1
    steps = {"python_up": ktstr.IMPORTED_AT, "imports_done": _uptime()}
    try:
        failed_mounts = mount_all()
        steps["mounts_done"] = _uptime()
        job = json.loads(Path(RUN_MOUNT, "job.json").read_text())
        private_tmp(own_paths() + [str(p) for p in job.get("host_paths", [])])
        steps["tmp_done"] = _uptime()
        port = Port(open_port())
        steps["port_open"] = _uptime()
        port.send(port.enc.sys_ready())
        addrs = kern_addrs()
        if addrs is not None:
            port.send(port.enc.message(addrs))
        uptime = _uptime()
        port.send(
            port.enc.message(
                Lifecycle(
                    phase="ready",
                    detail={
                        "uptime_s": uptime,
                        "mount_warnings": failed_mounts,
                        "kernel": os.uname().release,
                        "python": f"{sys.executable} {sys.version.split()[0]}",
                        "steps": {k: round(v, 4) for k, v in steps.items()},
                    },
                )
            )
        )
        code = do_job(port, job)
    except BaseException as exc:
        import traceback  # only a crash needs it

        tb = traceback.format_exc()
        print(f"ktstr agent: {exc!r}\n{tb}", file=sys.stderr, flush=True)
        error = f"{type(exc).__name__}: {exc}"[:4000]
        if port is not None:
            with contextlib.suppress(OSError):
                port.send(port.enc.message(Crash(error=error, traceback=tb[-60000:])))
        code = 1
        if isinstance(exc, SystemExit):
            code = exc.code if isinstance(exc.code, int) else 1
    finally:
        if port is not None:
            try:
                port.send(port.enc.message(Exit(code=shell_status(code))))
                time.sleep(0.05)  # let virtio-serial drain before power-off
            except OSError:
                pass
        power_off()


if __name__ == "__main__":
    main()
