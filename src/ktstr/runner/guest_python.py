"""Which Python interpreter the guest agent runs.

The guest runs an interpreter from the host's root (shared over 9p). Under
TCG its start-up and imports are most of the gap between a raw boot and
agent ready, so the build matters: Debian's is profile-guided and has
libpython linked into the executable, while pyenv's here calls it as a
shared library (``--enable-shared``, no PGO). Here Debian's 3.11 brought the
agent up 1.7 s sooner (8.7 s -> 7.0 s from QEMU start, 1n2l2c1t) than the
pyenv 3.11 the venv was made from.

So the guest prefers the distribution's interpreter of the host's own
version (same ABI, same bytecode, so this package and its C extension work
unchanged), when it can import every guest module; otherwise it runs the
host's own. ``KTSTR_GUEST_PYTHON`` names another interpreter outright.

The same probe that checks an interpreter records the code its dataclasses
generate (``ktstr.codecache``), which the guest then loads instead of
compiling it again at every boot.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass

from ktstr.codecache import ENV as CODE_CACHE_ENV
from ktstr.errors import ConfigError
from ktstr.host.kernel import cache_root

ENV = "KTSTR_GUEST_PYTHON"

#: Record the generated code, import every guest module (as the agent will
#: over a run), say the version.
_PROBE = (
    "import sys, ktstr.codecache\n"
    "if sys.argv[1]: ktstr.codecache.install(sys.argv[1], record=True)\n"
    "import pkgutil, ktstr.guest, ktstr._native\n"
    "for m in pkgutil.iter_modules(ktstr.guest.__path__, 'ktstr.guest.'):\n"
    "    __import__(m.name)\n"
    "print(*sys.version_info[:2])\n"
)


@dataclass(frozen=True, slots=True)
class GuestPython:
    exe: str
    #: KEY=value kernel parameters it needs (init's environment).
    env: tuple[str, ...] = ()


def _cache_file(exe: str) -> str:
    digest = hashlib.sha1(os.path.realpath(exe).encode()).hexdigest()[:12]
    d = cache_root().parent / "guest"
    d.mkdir(parents=True, exist_ok=True)
    return str(d / f"code-{digest}.marshal")


def _probe(exe: str, pkg_parent: str, record: str) -> tuple[int, int] | None:
    """(major, minor) of ``exe`` if it runs the guest side of this package
    with only the stdlib (``-S``, as the agent does), else None."""
    env = {"PYTHONPATH": pkg_parent, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    try:
        out = subprocess.run([exe, "-S", "-c", _PROBE, record], env=env, capture_output=True,
                             text=True, timeout=60, check=True)  # fmt: skip
        major, minor = out.stdout.split()
        return int(major), int(minor)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _ready(exe: str, pkg_parent: str) -> GuestPython | None:
    """``exe`` with its code cache, if it runs the guest side at the host's version."""
    try:
        record = _cache_file(exe)
    except OSError:
        record = ""
    if _probe(exe, pkg_parent, record) != sys.version_info[:2]:
        return None
    env = (f"{CODE_CACHE_ENV}={record}",) if record and os.path.isfile(record) else ()
    return GuestPython(exe, env)


def _distro_candidates() -> list[str]:
    v = sys.version_info
    return [f"/usr/bin/python{v.major}.{v.minor}"]


@functools.cache
def guest_python(pkg_parent: str) -> GuestPython:
    """The interpreter the guest's init runs (checked once per process)."""
    chosen = os.environ.get(ENV)
    if chosen:
        got = _ready(chosen, pkg_parent)
        if got is None:
            raise ConfigError(
                f"{ENV}={chosen} cannot run ktstr's guest side, or is not Python "
                f"{sys.version_info.major}.{sys.version_info.minor} like the host's; "
                "unset it or name an interpreter of that version"
            )
        return got
    own = os.path.realpath(sys.executable)
    for cand in _distro_candidates():
        if os.path.realpath(cand) == own:
            break  # the host already runs it
        if os.access(cand, os.X_OK) and (got := _ready(cand, pkg_parent)) is not None:
            return got
    return _ready(sys.executable, pkg_parent) or GuestPython(sys.executable)
