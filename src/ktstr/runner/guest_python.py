"""Which Python interpreter the guest agent runs.

The guest runs an interpreter from the host's root (shared over 9p). Under
TCG its start-up and imports are most of the gap between a raw boot and
agent ready, so the build matters: distributions build CPython with PGO and
LTO, pyenv and plain source builds do not. Here Debian's 3.11 brought the
agent up 1.7 s sooner (8.7 s -> 7.0 s from QEMU start, 1n2l2c1t) than the
pyenv 3.11 the venv was made from.

So the guest prefers the distribution's interpreter of the host's own
version (same ABI, same bytecode, so this package and its C extension work
unchanged), when it can import every guest module; otherwise it runs the
host's own. ``KTSTR_GUEST_PYTHON`` names another interpreter outright.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

from ktstr.errors import ConfigError

ENV = "KTSTR_GUEST_PYTHON"

#: Import every guest module, as the agent will over the run.
_PROBE = (
    "import pkgutil, ktstr.guest, ktstr._native\n"
    "for m in pkgutil.iter_modules(ktstr.guest.__path__, 'ktstr.guest.'):\n"
    "    __import__(m.name)\n"
)


def _version_of(exe: str, pkg_parent: str) -> tuple[int, int] | None:
    """(major, minor) of ``exe`` if it runs the guest side of this package
    with only the stdlib (``-S``, as the agent does), else None."""
    code = _PROBE + "import sys; print(*sys.version_info[:2])"
    env = {"PYTHONPATH": pkg_parent, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    try:
        out = subprocess.run([exe, "-S", "-c", code], env=env, capture_output=True,
                             text=True, timeout=30, check=True)  # fmt: skip
        major, minor = out.stdout.split()
        return int(major), int(minor)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _distro_candidates() -> list[str]:
    v = sys.version_info
    return [f"/usr/bin/python{v.major}.{v.minor}"]


@functools.cache
def guest_python(pkg_parent: str) -> str:
    """The interpreter the guest's init runs (checked once per process)."""
    chosen = os.environ.get(ENV)
    if chosen:
        if _version_of(chosen, pkg_parent) != sys.version_info[:2]:
            raise ConfigError(
                f"{ENV}={chosen} cannot run ktstr's guest side, or is not Python "
                f"{sys.version_info.major}.{sys.version_info.minor} like the host's; "
                "unset it or name an interpreter of that version"
            )
        return chosen
    own = os.path.realpath(sys.executable)
    for cand in _distro_candidates():
        if os.path.realpath(cand) == own:
            break  # the host already runs it
        if os.access(cand, os.X_OK) and _version_of(cand, pkg_parent) == sys.version_info[:2]:
            return cand
    return sys.executable
