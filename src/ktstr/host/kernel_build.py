"""``ktstr kernel build``: configure, verify and build a kernel into the cache.

Configuration is tinyconfig + kvm_guest.config + ktstr's fragment, then
olddefconfig; every fragment option must survive, else the build stops and
names the ones that did not. (tinyconfig + kvm_guest builds in ~25 min on
2 cores; defconfig did not finish in 36 min.) Builds are out of tree
(``O=``), so a read-only source tree works.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ktstr.errors import KconfigError, KernelError
from ktstr.host import kconfig
from ktstr.host.kernel import (
    _write_meta,
    cache_lock,
    cache_root,
    check_kernel,
    entry_name,
    file_digest,
    fragment_hash,
    load_kernel,
    new_entry,
)

TARBALL_RE = re.compile(r"\.(tar|tar\.gz|tgz|tar\.xz|txz|tar\.bz2|tar\.zst)$")
GIT_RE = re.compile(r"^(https?|git|ssh|file)://|^git@|\.git$")


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildRequest:
    source: str
    ref: str | None = None
    jobs: int = 0
    schedulers: bool = False
    config_only: bool = False
    force: bool = False


def work_root() -> Path:
    return cache_root().parent / "build"


def _run(argv: list[str], cwd: Path | None = None, what: str = "") -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise KernelError(f"{what or argv[0]} failed ({' '.join(argv)}):\n{tail}")


def _inside(root: Path, path: str) -> bool:
    real = os.path.realpath(path)
    return real == str(root) or real.startswith(str(root) + os.sep)


def _check_member(m: tarfile.TarInfo, root: Path) -> None:
    """Refuse a member that would land, or point, outside ``root`` given what
    is already extracted (so chained symlinks are resolved for real)."""
    target = os.path.join(root, m.name)
    bad = ""
    if os.path.isabs(m.name) or not _inside(root, target):
        bad = "it lands outside"
    elif not _inside(root, os.path.dirname(target)):
        bad = "its directory resolves outside"
    elif m.issym() and (
        os.path.isabs(m.linkname)
        or not _inside(root, os.path.join(os.path.dirname(target), m.linkname))
    ):
        bad = "its symlink points outside"
    elif m.islnk() and not _inside(root, os.path.join(root, m.linkname)):
        bad = "its hard link points outside"
    elif m.isdev():
        bad = "it is a device node, in"
    if bad:
        raise KernelError(f"refusing to extract {m.name!r}: {bad} {root}")


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract member by member, each checked against the tree as extracted
    so far; on every Python (Debian 12's 3.11.2 has no extraction filters,
    and a check of all members up front misses symlinks chained through
    earlier members)."""
    root = Path(os.path.realpath(dest))
    has_filter = hasattr(tarfile, "data_filter")
    for m in tar:
        _check_member(m, root)
        if has_filter:
            tar.extract(m, root, filter="tar")
        else:
            tar.extract(m, root)


def source_identity(tree: Path) -> str:
    """What makes this tree's build different from another of the same
    version: git HEAD plus uncommitted changes, or else every file's path,
    size and mtime (a patched tree is a new cache entry)."""
    h = hashlib.sha256()
    if (tree / ".git").exists():
        git = ["git", "-C", str(tree)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, check=False)
        diff = subprocess.run([*git, "diff", "HEAD", "--binary"], capture_output=True, check=False)
        if head.returncode == 0 and diff.returncode == 0:
            h.update(head.stdout + b"\0" + diff.stdout)
            return h.hexdigest()
    for dirpath, dirs, files in os.walk(tree):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(files):
            st = os.lstat(os.path.join(dirpath, name))
            rel = os.path.relpath(os.path.join(dirpath, name), tree)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def has_sched_ext(tree: Path) -> bool:
    """sched_ext is in the tree: its Kconfig symbol (6.12's kernel/sched/ext.c
    moved to kernel/sched/ext/ in 7.x; the symbol stayed)."""
    for kconf in [*sorted(tree.glob("kernel/Kconfig*")), tree / "init" / "Kconfig"]:
        try:
            text = kconf.read_text(errors="replace")
        except OSError:
            continue
        if re.search(r"^config SCHED_CLASS_EXT\b", text, re.M):
            return True
    return False


def _extract(path: Path, dest: Path) -> None:
    print(f"extracting {path} ...", file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        with tarfile.open(path) as tar:
            _safe_extract(tar, tmp)
        (tmp / ".ktstr-extracted").touch()
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    except (tarfile.TarError, OSError) as exc:
        raise KernelError(f"cannot extract {path}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _clone(source: str, ref: str | None, dest: Path) -> None:
    """Clone into a temp dir, renamed when complete: an interrupted clone
    is never taken for a tree."""
    tmp = Path(tempfile.mkdtemp(prefix=".clone-", dir=dest.parent))
    try:
        branch = ["--branch", ref] if ref else []
        argv = ["git", "clone", "--depth", "1", *branch, "--", source, str(tmp / "tree")]
        _run(argv, what="git clone")
        shutil.rmtree(dest, ignore_errors=True)
        (tmp / "tree").rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_source(source: str, ref: str | None) -> Path:
    """A kernel source tree from a directory, a tarball or a git URL."""
    path = Path(source).expanduser()
    scratch: Path | None = None  # what ktstr made (extraction, clone): removed if unusable
    if path.is_dir():
        tree = path.resolve()
    elif path.is_file() and TARBALL_RE.search(path.name):
        dest = work_root() / "src" / file_digest(path)[:12]  # content, not name or mtime
        dest.parent.mkdir(parents=True, exist_ok=True)
        with cache_lock(work_root()):
            if not (dest / ".ktstr-extracted").exists():
                _extract(path, dest)
        subdirs = [d for d in dest.iterdir() if d.is_dir()]
        tree = subdirs[0] if len(subdirs) == 1 else dest
        scratch = dest
    elif GIT_RE.search(source) and not source.startswith("-"):
        digest = hashlib.sha256(f"{source}@{ref}".encode()).hexdigest()[:12]
        tree = work_root() / "git" / digest
        tree.parent.mkdir(parents=True, exist_ok=True)
        with cache_lock(work_root()):
            if not (tree / "Makefile").exists():
                _clone(source, ref, tree)
        scratch = tree
    else:
        raise KernelError(
            f"kernel source {source!r} is neither a directory, a tarball nor a git URL",
            hint="e.g. /usr/src/linux-source-6.12.tar.xz (apt-get install linux-source-6.12)",
        )
    problem = ""
    if not (tree / "Makefile").is_file() or not (tree / "kernel" / "sched").is_dir():
        problem = f"{source} does not look like a Linux source tree"
    elif not has_sched_ext(tree):
        problem = f"{source} has no sched_ext (no SCHED_CLASS_EXT); use Linux >= 6.12"
    if problem:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise KernelError(problem)
    return tree


def kernel_version(tree: Path) -> str:
    proc = subprocess.run(
        ["make", "-s", "kernelversion"], cwd=tree, capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() or "unknown"


def configure(tree: Path, out: Path) -> None:
    """tinyconfig + kvm_guest + fragment -> olddefconfig, then verify."""
    out.mkdir(parents=True, exist_ok=True)
    make = ["make", "-C", str(tree), f"O={out}"]
    _run([*make, "tinyconfig"], what="make tinyconfig")
    _run([*make, "kvm_guest.config"], what="make kvm_guest.config")
    frag = out / "ktstr.fragment"
    frag.write_text(kconfig.fragment_text())
    _run(
        [
            str(tree / "scripts/kconfig/merge_config.sh"),
            "-m",
            "-O",
            str(out),
            str(out / ".config"),
            str(frag),
        ],
        cwd=out,
        what="merge_config.sh",
    )
    _run([*make, "olddefconfig"], what="make olddefconfig")
    missing = kconfig.missing_options(
        kconfig.parse_config((out / ".config").read_text()), kconfig.fragment()
    )
    if missing:
        raise KconfigError(
            "these config options did not survive olddefconfig: " + ", ".join(missing),
            missing,
            hint="their dependencies are missing on this tree/arch; extend the fragment",
        )


def _make_with_progress(argv: list[str], log_path: Path) -> None:
    start = time.monotonic()
    last = 0.0
    count = 0
    with (
        log_path.open("w") as log,
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            count += 1
            now = time.monotonic()
            if (now - last > 5 and sys.stderr.isatty()) or now - last > 60:
                last = now
                print(
                    f"  [{now - start:5.0f}s] {count} steps, {line.strip()[:70]}",
                    file=sys.stderr,
                    flush=True,
                )
        code = proc.wait()
    if code != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-20:])
        raise KernelError(f"kernel build failed (log: {log_path}):\n{tail}")


def build_kernel(req: BuildRequest) -> Path:
    """Return the cache entry (or the .config with config_only)."""
    if req.schedulers:
        llvm_suffix()  # fail before a 25-minute build, not after
    tree = resolve_source(req.source, req.ref)
    version = kernel_version(tree)
    if req.schedulers:
        llvm_suffix(min_clang(version))  # now that the tree says which it needs
    ident = hashlib.sha256(f"{source_identity(tree)}:{fragment_hash()}".encode()).hexdigest()
    key = entry_name(version, ident, "built")
    dest = cache_root() / key
    if (dest / "meta.json").exists() and not req.force and not req.config_only:
        print(f"already cached: {dest}", file=sys.stderr)
        return dest
    out = work_root() / "out" / key
    out.mkdir(parents=True, exist_ok=True)
    with _build_lock(out):
        return _configure_and_build(req, tree, version, key, out)


@contextlib.contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    """One build per output dir at a time; a second waits, then finds it cached."""
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _configure_and_build(req: BuildRequest, tree: Path, version: str, key: str, out: Path) -> Path:
    dest = cache_root() / key
    if (dest / "meta.json").exists() and not req.force and not req.config_only:
        return dest  # a parallel build of the same key finished first
    print(f"configuring Linux {version} in {out} ...", file=sys.stderr, flush=True)
    configure(tree, out)
    if req.config_only:
        return out / ".config"
    jobs = req.jobs or os.cpu_count() or 1
    print(f"building with -j{jobs} (log: {out / 'build.log'}) ...", file=sys.stderr, flush=True)
    _make_with_progress(["make", "-C", str(tree), f"O={out}", f"-j{jobs}"], out / "build.log")
    if req.schedulers:
        _build_schedulers(tree, out, out / "ktstr-schedulers", jobs)
        build_selftests(tree, out, out / "ktstr-selftests", jobs)
    if req.force:
        shutil.rmtree(dest, ignore_errors=True)
    with new_entry(key) as tmp:
        if tmp is not None:
            shutil.copy2(out / "vmlinux", tmp / "vmlinux")
            shutil.copy2(out / "arch/x86/boot/bzImage", tmp / "bzImage")
            shutil.copy2(out / ".config", tmp / "config")
            if req.schedulers:
                shutil.copytree(out / "ktstr-schedulers", tmp / "schedulers")
                (tmp / "selftests" / "sched_ext").mkdir(parents=True)
                shutil.copy2(out / "ktstr-selftests" / "runner", tmp / "selftests/sched_ext/runner")
            check_kernel(load_kernel(tmp))
            _write_meta(
                tmp, version=version, source=str(tree), kind="built", fragment_hash=fragment_hash()
            )
    return dest


#: sched_ext's BPF programs need a recent clang (6.12's examples: 16).
MIN_CLANG = 16
#: Trees from this version on need a newer clang: 7.x's arena schedulers
#: (scx_qmap) build with clang-19, but the verifier rejects the result
#: (qmap_dequeue: "invalid dereference of R7 (an integer scalar)").
NEWER_CLANG = ((7, 0), 22)
TOOLCHAIN_HINT = (
    "install clang and llvm {n} or newer (Debian 12: KTSTR_SCHED_TOOLCHAIN=1 ./scripts/setup "
    "installs clang-22 from bookworm-security)"
)


def min_clang(version: str) -> int:
    """The oldest clang known to build this tree's schedulers correctly."""
    m = re.match(r"(\d+)\.(\d+)", version)
    if m and (int(m.group(1)), int(m.group(2))) >= NEWER_CLANG[0]:
        return NEWER_CLANG[1]
    return MIN_CLANG


def llvm_suffix(least: int = MIN_CLANG) -> str:
    """``LLVM=`` value for the newest clang-N (N >= ``least``) on PATH."""
    for n in range(30, least - 1, -1):
        if shutil.which(f"clang-{n}") and shutil.which(f"llvm-strip-{n}"):
            return f"-{n}"
    clang = shutil.which("clang")
    found = ""
    if clang:
        out = subprocess.run([clang, "--version"], capture_output=True, text=True, check=False)
        m = re.search(r"clang version (\d+)", out.stdout)
        if m and int(m.group(1)) >= least:
            return "1"
        found = f" (found clang {m.group(1)})" if m else ""
    raise KernelError(
        f"--schedulers needs clang >= {least} for this tree{found}",
        hint=TOOLCHAIN_HINT.format(n=least),
    )


def _build_schedulers(tree: Path, out: Path, dest: Path, jobs: int) -> None:
    """tools/sched_ext against the just-built vmlinux's BTF."""
    build = out / "sched_ext"
    build.mkdir(parents=True, exist_ok=True)  # tools/ Makefiles insist O= exists
    argv = ["make", "-C", str(tree / "tools/sched_ext"), f"O={build}", f"-j{jobs}",
            f"LLVM={llvm_suffix(min_clang(kernel_version(tree)))}",
            f"VMLINUX_BTF={out / 'vmlinux'}"]  # fmt: skip
    _make_with_progress(argv, out / "sched_ext.log")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for binary in (build / "build" / "bin").glob("scx_*"):
        shutil.copy2(binary, dest / binary.name)
    if not any(dest.iterdir()):
        raise KernelError(f"tools/sched_ext built no scx_* binaries (log: {out / 'sched_ext.log'})")


def build_selftests(tree: Path, out: Path, dest: Path, jobs: int) -> Path:
    """The kernel's sched_ext selftests (one ``runner`` binary) against the
    just-built vmlinux's BTF, with the same clang as the schedulers."""
    build = out / "selftests-sched_ext"
    build.mkdir(parents=True, exist_ok=True)
    llvm = llvm_suffix(min_clang(kernel_version(tree)))
    argv = [
        "make",
        "-C",
        str(tree / "tools/testing/selftests/sched_ext"),
        f"-j{jobs}",
        f"LLVM={llvm}",
        f"OUTPUT={build}",
        f"VMLINUX_BTF={out / 'vmlinux'}",
        str(build / "runner"),  # the Makefile's target is $(OUTPUT)/runner
    ]
    if llvm.startswith("-"):
        argv.append(f"CLANG=clang{llvm}")  # the selftests' Makefile calls $(CLANG)
    _make_with_progress(argv, out / "selftests.log")
    runner = build / "runner"
    if not runner.is_file():
        raise KernelError(f"the sched_ext selftests built no runner (log: {out / 'selftests.log'})")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(runner, dest / "runner")
    return dest / "runner"
