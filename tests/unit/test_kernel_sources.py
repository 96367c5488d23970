"""Where `ktstr kernel build` takes its source from: a tree, a tarball, or a
git URL + ref (here a real clone of a file:// repository)."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from ktstr.errors import KernelError
from ktstr.host.kernel_build import resolve_source


def fake_tree(root: Path, *, sched_ext: bool = True, layout: str = "6.12") -> Path:
    """A tree the source checks accept: 6.12 keeps sched_ext in
    kernel/sched/ext.c, 7.x in kernel/sched/ext/; both declare the symbol."""
    (root / "kernel" / "sched").mkdir(parents=True)
    (root / "Makefile").write_text("kernelversion:\n\t@echo 6.12.0\n")
    (root / "kernel" / "sched" / "core.c").write_text("/* the scheduler core */\n")
    if sched_ext:
        if layout == "6.12":
            (root / "kernel" / "sched" / "ext.c").write_text("/* sched_ext */\n")
        else:
            (root / "kernel" / "sched" / "ext").mkdir()
            (root / "kernel" / "sched" / "ext" / "core.c").write_text("/* sched_ext */\n")
        (root / "kernel" / "Kconfig.preempt").write_text(
            'config SCHED_CLASS_EXT\n\tbool "Extensible Scheduling Class"\n'
        )
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.parametrize("layout", ["6.12", "7.3"])
def test_source_tree(cache, layout):
    """sched_ext is found by its Kconfig symbol, wherever its sources live."""
    tree = fake_tree(cache / "linux", layout=layout)
    assert resolve_source(str(tree), None) == tree.resolve()


def test_source_identity_changes_with_a_patch_and_a_ref(cache):
    from ktstr.host.kernel_build import source_identity

    tree = fake_tree(cache / "linux")
    before = source_identity(tree)
    assert source_identity(tree) == before
    (tree / "kernel" / "sched" / "core.c").write_text("/* patched */\n")
    assert source_identity(tree) != before
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    clean = source_identity(tree)
    (tree / "kernel" / "sched" / "core.c").write_text("/* dirty */\n")
    dirty = source_identity(tree)
    subprocess.run([*git, "commit", "-qam", "v2"], check=True)
    assert len({clean, dirty, source_identity(tree)}) == 3


def test_tarball_is_extracted_once(cache):
    tree = fake_tree(cache / "linux-6.12")
    tarball = cache / "linux-6.12.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tree, arcname="linux-6.12")
    first = resolve_source(str(tarball), None)
    assert (first / "kernel" / "sched" / "ext.c").is_file() and first.name == "linux-6.12"
    (first / "marker").write_text("kept")
    assert resolve_source(str(tarball), None) == first and (first / "marker").exists()


def test_git_url_and_ref(cache):
    repo = fake_tree(cache / "repo")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    subprocess.run([*git, "tag", "v6.12"], check=True)
    (repo / "kernel" / "sched" / "ext.c").unlink()
    (repo / "kernel" / "Kconfig.preempt").write_text("config PREEMPT\n")
    subprocess.run([*git, "commit", "-qam", "drop sched_ext"], check=True)
    tree = resolve_source(f"file://{repo}", "v6.12")
    assert (tree / "kernel" / "sched" / "ext.c").is_file()  # the tag, not the tip
    with pytest.raises(KernelError, match="no sched_ext"):
        resolve_source(f"file://{repo}", None)


@pytest.mark.parametrize("bad", ["/nonexistent/linux", "linux-6.12.zip"])
def test_bad_sources_are_named(cache, bad):
    with pytest.raises(KernelError, match="neither a directory, a tarball nor a git URL"):
        resolve_source(bad, None)


def test_not_a_kernel_tree(cache):
    (cache / "empty").mkdir()
    with pytest.raises(KernelError, match="does not look like a Linux source tree"):
        resolve_source(str(cache / "empty"), None)


@pytest.fixture(params=["filter", "no-filter"])
def tar_mode(request, monkeypatch):
    """Both extraction paths: Python >= 3.11.4's filters, and Debian 12's 3.11.2."""
    if request.param == "no-filter" and hasattr(tarfile, "data_filter"):
        monkeypatch.delattr(tarfile, "data_filter")
    return request.param


def test_tarball_extracts_on_every_python(cache, tar_mode):
    tree = fake_tree(cache / "linux-6.12")
    tarball = cache / f"linux-{tar_mode}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tree, arcname="linux-6.12")
    assert (resolve_source(str(tarball), None) / "kernel" / "sched" / "ext.c").is_file()


@pytest.mark.parametrize("evil", ["../escape.txt", "/abs/escape.txt"])
def test_tarball_escaping_dest_is_refused(cache, tar_mode, evil):
    tarball = cache / "evil.tar"
    payload = cache / "payload.txt"
    payload.write_text("x")
    with tarfile.open(tarball, "w") as tar:
        tar.add(payload, arcname=evil)
    with pytest.raises(KernelError):
        resolve_source(str(tarball), None)
    assert not list((cache / "cache" / "ktstr" / "build" / "src").glob("*"))  # nothing left
    assert not (cache / "cache" / "ktstr" / "build" / "escape.txt").exists()


def _symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


def test_tarball_with_chained_symlinks_is_refused(cache, tar_mode):
    """a/b -> .. is harmless alone; a/b/c -> .. then lands outside: the
    check resolves each member through what was already extracted."""
    tarball = cache / "chain.tar"
    with tarfile.open(tarball, "w") as tar:
        (cache / "a").mkdir()
        tar.add(cache / "a", arcname="a", recursive=False)
        _symlink(tar, "a/b", "..")
        _symlink(tar, "a/b/c", "..")
        info = tarfile.TarInfo("a/b/c/escaped.txt")
        info.size = 1
        import io

        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(KernelError, match="refusing to extract"):
        resolve_source(str(tarball), None)
    assert not list((cache / "cache" / "ktstr" / "build").rglob("escaped.txt"))
    assert not (cache / "cache" / "ktstr" / "escaped.txt").exists()


def test_git_sources_cannot_pass_options(cache):
    with pytest.raises(KernelError):
        resolve_source("--upload-pack=touch /tmp/pwned.git", None)


def _fake_clang(bin_dir: Path, n: int) -> None:
    for tool in (f"clang-{n}", f"llvm-strip-{n}"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / tool).chmod(0o755)


def test_a_7x_tree_refuses_a_clang_known_to_miscompile_its_schedulers(tmp_path, monkeypatch):
    from ktstr.host.kernel_build import llvm_suffix, min_clang

    assert (min_clang("6.12.117"), min_clang("7.3.4"), min_clang("10.0")) == (16, 22, 22)
    _fake_clang(tmp_path, 19)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert llvm_suffix(min_clang("6.12.117")) == "-19"
    with pytest.raises(KernelError, match="clang >= 22") as exc:
        llvm_suffix(min_clang("7.3.4"))
    assert "clang-22" in str(exc.value.hint)
    _fake_clang(tmp_path, 22)
    assert llvm_suffix(min_clang("7.3.4")) == "-22"


def test_kernel_check_says_what_a_missing_option_costs():
    from ktstr.host import kconfig

    cfg = kconfig.parse_config("CONFIG_SYSVIPC=y\n# CONFIG_HIGH_RES_TIMERS is not set\n")
    got = [kconfig.explain(m) for m in kconfig.missing_options(cfg, kconfig.fragment())]
    hrt = next(m for m in got if m.startswith("CONFIG_HIGH_RES_TIMERS"))
    assert "measure the tick" in hrt
    assert not any(m.startswith("CONFIG_SYSVIPC") for m in got)
    assert kconfig.lacks(cfg, ("CONFIG_SYSVIPC", "CONFIG_PSI")) == ["CONFIG_PSI"]
