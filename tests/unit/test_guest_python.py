"""Which interpreter the guest runs: a distribution build of the host's own
version when it can run every guest module, else the host's own; an
override that cannot run them is refused with one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import ktstr
from ktstr.errors import ConfigError
from ktstr.runner import guest_python as gp

PKG_PARENT = str(Path(ktstr.__file__).parent.parent)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path):
    gp.guest_python.cache_clear()
    monkeypatch.delenv(gp.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield
    gp.guest_python.cache_clear()


def _script(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_a_distribution_build_that_runs_the_guest_side_is_preferred(tmp_path, monkeypatch):
    distro = _script(tmp_path / "python-distro", f'exec {sys.executable} "$@"')
    monkeypatch.setattr(gp, "_distro_candidates", lambda: [distro])
    got = gp.guest_python(PKG_PARENT)
    assert got.exe == distro
    # its probe recorded the code its dataclasses generate, for the guest
    (env,) = got.env
    name, _, path = env.partition("=")
    assert name == "KTSTR_CODE_CACHE" and Path(path).stat().st_size > 10_000


def test_one_that_cannot_is_passed_over(tmp_path, monkeypatch):
    broken = _script(tmp_path / "python-broken", "exit 1")
    other = _script(tmp_path / "python-other", "echo 3 99")  # another version
    monkeypatch.setattr(gp, "_distro_candidates", lambda: [broken, other, "/nonexistent/py"])
    assert gp.guest_python(PKG_PARENT).exe == sys.executable


def test_the_override_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv(gp.ENV, sys.executable)
    assert gp.guest_python(PKG_PARENT).exe == sys.executable
    gp.guest_python.cache_clear()
    monkeypatch.setenv(gp.ENV, _script(tmp_path / "py", "exit 1"))
    with pytest.raises(ConfigError, match=gp.ENV):
        gp.guest_python(PKG_PARENT)
