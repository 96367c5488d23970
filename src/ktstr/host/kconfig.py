"""Kernel .config parsing and the checks ktstr needs. Pure."""

from __future__ import annotations

import gzip
import re
from importlib import resources

_SET_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
_VERSION_RE = re.compile(r"^# Linux/\S+ (\S+) Kernel Configuration", re.M)

#: Options without which ktstr cannot boot a guest or run a scheduler in it.
RUN_REQUIRED = (
    "CONFIG_SCHED_CLASS_EXT", "CONFIG_BPF_SYSCALL", "CONFIG_BPF_JIT", "CONFIG_DEBUG_INFO_BTF",
    "CONFIG_CGROUPS", "CONFIG_CPUSETS", "CONFIG_SMP", "CONFIG_SERIAL_8250_CONSOLE",
    "CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_CONSOLE", "CONFIG_NET_9P_VIRTIO", "CONFIG_9P_FS",
    "CONFIG_DEVTMPFS", "CONFIG_TMPFS", "CONFIG_PROC_FS", "CONFIG_BINFMT_ELF",
)  # fmt: skip
#: What a kernel without an option of the fragment cannot do (``kernel check``).
FEATURES = {
    "CONFIG_HIGH_RES_TIMERS": "every sleep and timer rounds to the tick: wake latencies "
    "and cyclictest measure the tick, not the scheduler",
    "CONFIG_NO_HZ_IDLE": "idle CPUs keep ticking",
    "CONFIG_SYSVIPC": "SysV IPC (stress-ng's sem/shm/msg stressors, perf)",
    "CONFIG_POSIX_MQUEUE": "POSIX message queues (stress-ng mq)",
    "CONFIG_FILE_LOCKING": "flock/fcntl locks (many programs, stress-ng lockf)",
    "CONFIG_AIO": "Linux AIO (stress-ng aio)",
    "CONFIG_IO_URING": "io_uring",
    "CONFIG_SIGNALFD": "signalfd",
    "CONFIG_INOTIFY_USER": "inotify",
    "CONFIG_MEMBARRIER": "membarrier (language runtimes)",
    "CONFIG_NAMESPACES": "namespaces (unshare, containers)",
    "CONFIG_PSI": "pressure stall information (/proc/pressure)",
    "CONFIG_PERF_EVENTS": "perf events (perf stat, perf record)",
    "CONFIG_CFS_BANDWIDTH": "cpu.max bandwidth limits in cgroups",
    "CONFIG_UCLAMP_TASK_GROUP": "cpu.uclamp.min/max in cgroups",
    "CONFIG_SCHED_CORE": "core scheduling (prctl PR_SCHED_CORE)",
    "CONFIG_NR_CPUS": "topologies with more CPUs than this",
}


def explain(missing: str) -> str:
    """``CONFIG_X (want y, have n)`` -> the same, with what it costs."""
    why = FEATURES.get(missing.split(" ", maxsplit=1)[0])
    return f"{missing}: {why}" if why else missing


def lacks(config: dict[str, str], options: tuple[str, ...]) -> list[str]:
    """Which of ``options`` (bool, want y) the kernel does not have."""
    return [o for o in options if config.get(o, "n") != "y"]


#: Numeric options compared as "at least".
AT_LEAST = frozenset({"CONFIG_NR_CPUS"})


def parse_config(text: str) -> dict[str, str]:
    """``CONFIG_X -> value``; options "is not set" map to ``n``."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if m := _SET_RE.match(line):
            out[m.group(1)] = m.group(2).strip('"')
        elif m := _UNSET_RE.match(line):
            out[m.group(1)] = "n"
    return out


def config_version(text: str) -> str | None:
    m = _VERSION_RE.search(text)
    return m.group(1) if m else None


def fragment_text() -> str:
    return (resources.files("ktstr.host") / "kconfig.fragment").read_text()


def fragment() -> dict[str, str]:
    return parse_config(fragment_text())


def missing_options(config: dict[str, str], wanted: dict[str, str]) -> list[str]:
    """Options of ``wanted`` that ``config`` does not satisfy, as
    ``CONFIG_X (want y, have n)`` strings."""
    missing = []
    for key, want in wanted.items():
        have = config.get(key, "n")
        if key in AT_LEAST:
            ok = have.isdigit() and want.isdigit() and int(have) >= int(want)
        else:
            ok = have == want
        if not ok:
            missing.append(f"{key} (want {'>= ' if key in AT_LEAST else ''}{want}, have {have})")
    return missing


def required_missing(config: dict[str, str]) -> list[str]:
    return missing_options(config, {k: "y" for k in RUN_REQUIRED})


def extract_ikconfig(image: bytes) -> str | None:
    """The .config embedded by CONFIG_IKCONFIG in an uncompressed vmlinux."""
    start = image.find(b"IKCFG_ST")
    if start < 0:
        return None
    end = image.find(b"IKCFG_ED", start)
    if end < 0:
        return None
    try:
        return gzip.decompress(image[start + 8 : end]).decode(errors="replace")
    except (OSError, EOFError):
        return None
