"""Where `ktstr kernel build` takes its source from: a tree, a tarball, or a
git URL + ref (here a real clone of a file:// repository)."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from ktstr.errors import KernelError
from ktstr.host.kernel_build import resolve_source


def fake_tree(root: Path, *, sched_ext: bool = True) -> Path:
    (root / "kernel" / "sched").mkdir(parents=True)
    (root / "Makefile").write_text("kernelversion:\n\t@echo 6.12.0\n")
    (root / "kernel" / "sched" / "core.c").write_text("/* the scheduler core */\n")
    if sched_ext:
        (root / "kernel" / "sched" / "ext.c").write_text("/* sched_ext */\n")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_source_tree(cache):
    tree = fake_tree(cache / "linux")
    assert resolve_source(str(tree), None) == tree.resolve()


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
