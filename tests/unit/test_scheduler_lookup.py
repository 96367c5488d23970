from pathlib import Path

import pytest

from ktstr.errors import ConfigError
from ktstr.host.kernel import load_kernel
from ktstr.runner import scheduler_binary
from tests.unit.test_kernel import make_kernel_dir


def exe(path: Path, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)
    return path


def test_one_search_order(tmp_path, monkeypatch):
    kernel = load_kernel(make_kernel_dir(tmp_path / "k"))  # has schedulers/scx_simple
    (kernel.directory / "schedulers" / "scx_simple").chmod(0o755)
    near, envdir, bindir = tmp_path / "tests", tmp_path / "env", tmp_path / "bin"
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.delenv("KTSTR_SCHEDULER", raising=False)
    exe(bindir / "scx_simple")
    assert scheduler_binary("scx_simple", kernel) == kernel.directory / "schedulers" / "scx_simple"
    monkeypatch.setenv("KTSTR_SCHEDULER", str(envdir))
    exe(envdir / "scx_simple")
    assert scheduler_binary("scx_simple", kernel, near=near) == envdir / "scx_simple"
    exe(near / "scx_simple")
    assert scheduler_binary("scx_simple", kernel, near=near) == near / "scx_simple"
    explicit = exe(tmp_path / "elsewhere" / "scx_mine")
    assert scheduler_binary(str(explicit), kernel, near=near) == explicit


def test_not_executable_is_skipped_and_missing_is_named(tmp_path, monkeypatch):
    kernel = load_kernel(make_kernel_dir(tmp_path / "k"))
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    monkeypatch.delenv("KTSTR_SCHEDULER", raising=False)
    exe(tmp_path / "tests" / "scx_x", mode=0o644)
    with pytest.raises(ConfigError, match=r"scheduler 'scx_x' not found .*tests, \$KTSTR_SCHED"):
        scheduler_binary("scx_x", kernel, near=tmp_path / "tests")
