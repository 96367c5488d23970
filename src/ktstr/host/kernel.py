"""Find, import, check and cache guest kernels.

A kernel directory holds a bootable image (``vmlinux``, a PVH ELF that QEMU
boots directly and fastest, or ``bzImage``), its ``config`` and optionally
``schedulers/`` built from the same tree. The cache lives under
``$XDG_CACHE_HOME/ktstr/kernels/<entry>/`` with a ``meta.json``; an entry's
name holds the version and a digest of what it was made from (the config
and images for an import; the source's identity and the fragment for a
build), so another tree or ref of the same version is another entry.
Resolution order: ``--kernel``, ``$KTSTR_KERNEL``, newest cached.

Entries are made under the cache lock in a private temp dir, checked, then
renamed into place: an entry is whole or absent. A running VM holds a shared
lock on its entry, and ``clean`` skips entries in use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ktstr.errors import KconfigError, KernelError
from ktstr.host import kconfig

IMAGE_NAMES = ("vmlinux", "bzImage", "arch/x86/boot/bzImage")
CONFIG_NAMES = ("config", ".config")
BUILD_HINT = (
    "build one with 'ktstr kernel build SOURCE' or adopt one with 'ktstr kernel import DIR'"
)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ktstr" / "kernels"


@dataclass(frozen=True, slots=True)
class Kernel:
    directory: Path
    image: Path
    config_text: str | None
    version: str

    @property
    def config(self) -> dict[str, str]:
        return kconfig.parse_config(self.config_text or "")

    @property
    def schedulers_dir(self) -> Path | None:
        for name in ("schedulers", "schedulers-static"):
            d = self.directory / name
            if d.is_dir():
                return d
        return None

    @property
    def nr_cpus(self) -> int | None:
        value = self.config.get("CONFIG_NR_CPUS", "")
        return int(value) if value.isdigit() else None


def _read_config(directory: Path, image: Path) -> str | None:
    for name in CONFIG_NAMES:
        path = directory / name
        if path.is_file():
            return path.read_text(errors="replace")
    if image.name == "vmlinux":
        return kconfig.extract_ikconfig(image.read_bytes())
    return None


def load_kernel(path: Path) -> Kernel:
    """A kernel from a directory or an image file."""
    path = path.expanduser()
    if not path.exists():
        raise KernelError(f"kernel not found: {path} does not exist", hint=BUILD_HINT)
    if path.is_file():
        directory, image = path.parent, path
    else:
        directory = path
        found = next((path / n for n in IMAGE_NAMES if (path / n).is_file()), None)
        if found is None:
            raise KernelError(
                f"no kernel image in {path} (looked for {', '.join(IMAGE_NAMES)})",
                hint="a compressed vmlinux.zst must be unpacked first; "
                "'ktstr kernel import DIR' does that",
            )
        image = found
    text = _read_config(directory, image)
    version = (kconfig.config_version(text) if text else None) or "unknown"
    return Kernel(directory=directory, image=image, config_text=text, version=version)


def check_kernel(kernel: Kernel, *, strict: bool = False) -> list[str]:
    """Raise KconfigError if the kernel cannot run ktstr; return warnings
    (fragment options it lacks that only some features need)."""
    if kernel.config_text is None:
        raise KernelError(
            f"cannot check {kernel.image}: no config next to it and none embedded",
            hint="put the build's .config next to the image as 'config'",
        )
    config = kernel.config
    missing = kconfig.required_missing(config)
    if missing:
        raise KconfigError(
            f"kernel {kernel.version} at {kernel.directory} cannot run ktstr; missing: "
            + ", ".join(m.split(" ")[0] for m in missing),
            missing,
            hint="sched_ext needs CONFIG_SCHED_CLASS_EXT, BPF and BTF; " + BUILD_HINT,
        )
    warnings = [kconfig.explain(m) for m in kconfig.missing_options(config, kconfig.fragment())]
    if strict and warnings:
        raise KconfigError(
            f"kernel {kernel.version} lacks fragment options: " + ", ".join(warnings), warnings
        )
    return warnings


# -- cache ----------------------------------------------------------------------


def fragment_hash() -> str:
    return hashlib.sha256(kconfig.fragment_text().encode()).hexdigest()[:12]


def cached_kernels(root: Path | None = None) -> list[Path]:
    """Cache entries, newest first."""
    root = root or cache_root()
    if not root.is_dir():
        return []
    entries = [
        p for p in root.iterdir() if not p.name.startswith(".") and (p / "meta.json").is_file()
    ]
    return sorted(entries, key=lambda p: (p / "meta.json").stat().st_mtime, reverse=True)


def resolve_kernel(arg: str | None = None) -> Kernel:
    """``--kernel`` (a path or a cache entry name), then $KTSTR_KERNEL, then
    the newest cached kernel."""
    for source, value in (("--kernel", arg), ("$KTSTR_KERNEL", os.environ.get("KTSTR_KERNEL"))):
        if value:
            path = Path(value).expanduser()
            if not path.exists() and (cache_root() / value).is_dir():
                path = cache_root() / value
            if not path.exists():
                raise KernelError(f"{source}: kernel {value!r} not found", hint=BUILD_HINT)
            return load_kernel(path)
    entries = cached_kernels()
    if not entries:
        raise KernelError(
            f"no kernel: none given (--kernel, $KTSTR_KERNEL) and none cached in {cache_root()}",
            hint=BUILD_HINT,
        )
    return load_kernel(entries[0])


def entry_name(version: str, digest: str, kind: str) -> str:
    """A cache entry name: only ``[A-Za-z0-9._+-]``, so a crafted version
    line cannot point outside the cache."""
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", version)
    safe = re.sub(r"\.{2,}", ".", safe).strip("._") or "unknown"
    return f"{safe[:64]}-{kind}-{digest[:12]}"


@contextlib.contextmanager
def cache_lock(root: Path | None = None) -> Iterator[Path]:
    """Exclusive lock over changes to the cache (imports, builds, clean)."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield root
    finally:
        os.close(fd)


@contextlib.contextmanager
def kernel_in_use(kernel: Kernel) -> Iterator[None]:
    """Held while a VM boots ``kernel``: ``clean`` will not remove its entry."""
    lock = kernel.directory / ".inuse"
    if not (kernel.directory / "meta.json").is_file():
        yield  # not a cache entry
        return
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _busy(entry: Path) -> bool:
    try:
        fd = os.open(entry / ".inuse", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _write_meta(dest: Path, **meta: object) -> None:
    (dest / "meta.json").write_text(json.dumps({"created": time.time(), **meta}, indent=2))


def file_digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def new_entry(name: str, root: Path | None = None) -> Iterator[Path | None]:
    """Under the cache lock: a private temp dir to fill, renamed to ``name``
    when the block ends without error; None if ``name`` already exists (a
    parallel import or build made it first)."""
    with cache_lock(root) as r:
        dest = r / name
        if (dest / "meta.json").is_file():
            yield None
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".{name[:40]}.", suffix=".tmp", dir=r))
        try:
            yield tmp
            shutil.rmtree(dest, ignore_errors=True)  # a half entry from an old crash
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def import_kernel(src: Path, root: Path | None = None) -> Path:
    """Adopt a prebuilt kernel directory (image, config, schedulers) into the
    cache, after checking it can run ktstr. A ``vmlinux.zst`` is unpacked so
    QEMU can boot it directly."""
    src = src.expanduser().resolve()
    if not src.is_dir():
        raise KernelError(f"kernel import: {src} is not a directory")
    config_file = next((src / n for n in CONFIG_NAMES if (src / n).is_file()), None)
    if config_file is None:
        raise KernelError(f"kernel import: no config or .config in {src}")
    images = [src / n for n in ("vmlinux", "vmlinux.zst", "bzImage") if (src / n).is_file()]
    if not images:
        raise KernelError(f"kernel import: no vmlinux, vmlinux.zst or bzImage in {src}")
    text = config_file.read_text(errors="replace")
    version = kconfig.config_version(text) or "unknown"
    name = entry_name(version, file_digest(config_file, *images), "imported")
    root = root or cache_root()
    with new_entry(name, root) as tmp:
        if tmp is None:
            return root / name
        shutil.copy2(config_file, tmp / "config")
        if (src / "vmlinux").is_file():
            shutil.copy2(src / "vmlinux", tmp / "vmlinux")
        elif (src / "vmlinux.zst").is_file():
            _unzstd(src / "vmlinux.zst", tmp / "vmlinux")
        if (src / "bzImage").is_file():
            shutil.copy2(src / "bzImage", tmp / "bzImage")
        for sub in ("schedulers", "schedulers-static", "selftests"):
            if (src / sub).is_dir():
                shutil.copytree(src / sub, tmp / sub)
        check_kernel(load_kernel(tmp))  # never cache (or default to) an unusable kernel
        _write_meta(tmp, version=version, source=str(src), kind="imported")
    return root / name


def _unzstd(src: Path, dest: Path) -> None:
    if shutil.which("zstd") is None:
        raise KernelError(f"cannot unpack {src}: zstd not installed", hint="apt-get install zstd")
    proc = subprocess.run(
        ["zstd", "-q", "-d", "-f", str(src), "-o", str(dest)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise KernelError(f"zstd failed on {src}: {proc.stderr.strip()}")


def clean_cache(keep: int, root: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Remove all but the ``keep`` newest entries; returns (removed, kept
    because a running VM uses them)."""
    if keep < 0:
        raise KernelError(f"--keep must be >= 0, got {keep}")
    removed, busy = [], []
    with cache_lock(root) as r:
        for entry in cached_kernels(r)[keep:]:
            if _busy(entry):
                busy.append(entry)
                continue
            shutil.rmtree(entry)
            removed.append(entry)
    return removed, busy
