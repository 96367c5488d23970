"""Pure: VmSpec -> QEMU argv. No I/O; golden-file tested.

Guest userspace is the host's own root filesystem, shared read-only over 9p
(QEMU enforces ``readonly=on``, so the guest cannot write to the host), plus a
second read-only 9p share holding this run's job file. See
docs/architecture.md for why (and the measurements).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from ktstr.errors import TopologyError
from ktstr.spec.topology import Topology, format_cpus

ROOT_TAG = "ktstr_root"
RUN_TAG = "ktstr_run"
PORT_NAME = "org.ktstr.0"
#: First QEMU with ``-machine smp-cache`` (per-level cache topology).
SMP_CACHE_VERSION = (9, 2, 0)
#: First QEMU whose multi-threaded TCG is safe against the int3-based
#: jump-label patching sched_ext triggers ("accel/tcg: Always lock pages
#: before translation", 8.1).
SAFE_MTTCG_VERSION = (8, 1, 0)


#: Intel model with CPUID leaf 0x1F, so dies map to LLCs (see qemu_argv).
#: Its model number is Haswell's (60): TCG has no AVX-512, but programs built
#: with GCC's ``target_clones`` pick their code by model number, and a
#: Sapphire Rapids number sends them into AVX-512 (stress-ng's cpu stressor
#: dies of SIGILL). Haswell's clones use AVX2 at most, which TCG runs.
TCG_CPU_MODEL = "SapphireRapids,model=60"


class Accel(enum.Enum):
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True, slots=True, kw_only=True)
class VmSpec:
    """Everything that decides the QEMU command line."""

    kernel: Path
    topology: Topology
    run_dir: Path
    init: tuple[str, ...]
    qemu: str = "qemu-system-x86_64"
    qemu_version: tuple[int, int, int] = (10, 0, 0)
    accel: Accel = Accel.TCG
    tcg_multithread: bool = True
    memory_mb: int = 0  # 0 = default for the topology
    root_share: Path = Path("/")
    interactive: bool = False
    cmdline_extra: tuple[str, ...] = field(default_factory=tuple)
    #: Where the unix sockets go; None = run_dir (sun_path holds 108 bytes).
    socket_dir: Path | None = None
    #: Guest RAM as shared files the host maps to read guest memory live.
    share_memory: bool = False
    #: Where those files are, ``<memory_dir>/node<N>`` (the Vm fills it in).
    memory_dir: Path | None = None
    #: A gdbstub socket, for a breakpoint on the scheduler's exit path.
    gdb_stub: bool = False

    def __post_init__(self) -> None:
        if self.memory_mb < 0:
            raise TopologyError(f"memory_mb must be >= 0, got {self.memory_mb}")

    @property
    def effective_memory_mb(self) -> int:
        mb = self.memory_mb or max(1024, 256 + 32 * self.topology.cpus)
        step = 2 * self.topology.numa_nodes  # whole MiB per node, 2 MiB aligned
        return -(-mb // step) * step

    @property
    def channel_socket(self) -> Path:
        return (self.socket_dir or self.run_dir) / "channel.sock"

    @property
    def qmp_socket(self) -> Path:
        return (self.socket_dir or self.run_dir) / "qmp.sock"

    @property
    def gdb_socket(self) -> Path:
        return (self.socket_dir or self.run_dir) / "gdb.sock"

    @property
    def share_dir(self) -> Path:
        return self.run_dir / "share"


def kernel_cmdline(spec: VmSpec) -> str:
    init, *init_args = spec.init
    rootflags = "trans=virtio,version=9p2000.L,msize=524288,cache=loose"
    parts = [
        "console=ttyS0",
        "loglevel=4",
        f"root={ROOT_TAG}",
        "rootfstype=9p",
        f"rootflags={rootflags}",
        "ro",
        f"init={init}",
        # A panic reboots, and -no-reboot turns that into QEMU exiting.
        "panic=-1",
        "random.trust_cpu=on",
        *spec.cmdline_extra,
    ]
    if init_args:
        parts += ["--", *init_args]
    return " ".join(parts)


def _smp(topo: Topology) -> str:
    return (
        f"{topo.cpus},sockets={topo.numa_nodes},dies={topo.llcs_per_node},"
        f"cores={topo.cores_per_llc},threads={topo.threads_per_core}"
    )


def memory_backend(node: int, size_mb: int, memory_dir: Path | None) -> str:
    """One node's RAM: anonymous, or a shared file the host can map."""
    if memory_dir is None:
        return f"memory-backend-ram,id=mem{node},size={size_mb}M"
    return (
        f"memory-backend-file,id=mem{node},size={size_mb}M,"
        f"mem-path={memory_dir / f'node{node}'},share=on"
    )


def _numa(topo: Topology, memory_mb: int, memory_dir: Path | None = None) -> list[str]:
    per_node = memory_mb // topo.numa_nodes
    argv: list[str] = []
    for node in range(topo.numa_nodes):
        argv += ["-object", memory_backend(node, per_node, memory_dir)]
        cpus = topo.node_cpus(node)
        argv += ["-numa", f"node,nodeid={node},cpus={format_cpus(cpus)},memdev=mem{node}"]
    for src in range(topo.numa_nodes):
        for dst in range(topo.numa_nodes):
            if src < dst:
                argv += ["-numa", f"dist,src={src},dst={dst},val=20"]
    return argv


def qemu_argv(spec: VmSpec) -> list[str]:
    """The full QEMU command line for ``spec``."""
    topo = spec.topology
    machine = "pc"
    if spec.qemu_version >= SMP_CACHE_VERSION:
        # Each die (= LLC) gets its own L3.
        machine += ",smp-cache.0.cache=l3,smp-cache.0.topology=die"
    # Under TCG the guest derives LLCs from CPUID leaf 4/0x1F, which QEMU fills
    # per die only for Intel models with leaf 0x1F (AMD "max" lumps dies per
    # socket; older Intel models trip a QEMU assert once dies > 1).
    cpu = "host" if spec.accel is Accel.KVM else TCG_CPU_MODEL
    if spec.accel is Accel.KVM:
        accel = "kvm"
    else:
        accel = "tcg,thread=" + ("multi" if spec.tcg_multithread else "single")
    mem = spec.effective_memory_mb
    argv = [
        spec.qemu,
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display", "none",
        "-machine", machine,
        "-accel", accel,
        "-cpu", cpu,
        "-smp", _smp(topo),
        "-m", f"{mem}M",
        *_numa(topo, mem, spec.memory_dir),
        "-kernel", str(spec.kernel),
        "-append", kernel_cmdline(spec),
        "-chardev", "stdio,id=con0,signal=off",
        "-serial", "chardev:con0",
        "-qmp", f"unix:{spec.qmp_socket},server=on,wait=off",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=ktstr0,path={spec.channel_socket}",
        "-device", f"virtserialport,bus=vser0.0,chardev=ktstr0,name={PORT_NAME}",
        "-fsdev",
        f"local,id=fsroot,path={spec.root_share},security_model=none,readonly=on,"
        "multidevs=remap",
        "-device", f"virtio-9p-pci,fsdev=fsroot,mount_tag={ROOT_TAG}",
        "-fsdev",
        f"local,id=fsrun,path={spec.share_dir},security_model=none,readonly=on",
        "-device", f"virtio-9p-pci,fsdev=fsrun,mount_tag={RUN_TAG}",
    ]  # fmt: skip
    if spec.gdb_stub:
        argv += [
            "-chardev", f"socket,id=gdb0,path={spec.gdb_socket},server=on,wait=off",
            "-gdb", "chardev:gdb0",
        ]  # fmt: skip
    return argv
