"""Compiled code for the methods ``@dataclass`` generates, kept between runs.

Each dataclass compiles its ``__init__``, ``__repr__``, ``__eq__``,
``__hash__`` (and ``__setattr__`` when frozen) from source text when its
module is imported: about 285 functions for the guest's modules. Under TCG
that compiling is a large part of the agent's start and a scenario's setup.
The text is the same at every boot, so the host has the guest's interpreter
record the code once (``record``), and the guest loads it (``install``):
the same text gives the same code object, so nothing else changes. An
entry that does not match is compiled as usual, and a file that does not
load (another interpreter, damaged) is ignored: the cache can only make the
start faster.

Only the guest uses it (``KTSTR_CODE_CACHE`` on its kernel command line,
read by ``ktstr/__init__``).

With it, the guest also defers ``inspect``, which ``dataclasses`` imports
but calls only to write a docstring for a class that has none (so every
dataclass the guest imports has one; a test holds it), and ``ipaddress``,
which ``urllib.parse`` (pathlib's) uses only for URLs with bracketed hosts.
Importing the agent took 173 million instructions, now 147 (callgrind).
The first use of any of their names imports them for real.
"""

from __future__ import annotations

import builtins
import contextlib
import marshal
import os
import sys
from typing import Any

ENV = "KTSTR_CODE_CACHE"
MAX_BYTES = 16 << 20


def _key() -> str:
    """Code objects are only valid for the very interpreter that made them."""
    return f"{sys.implementation.cache_tag} {sys.version}"


def _load(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            return {}
        key, table = marshal.loads(data)
    except (OSError, EOFError, ValueError, TypeError):
        return {}
    return table if key == _key() and isinstance(table, dict) else {}


class Deferred(type(sys)):  # type: ignore[misc]  # a module
    """A module not imported yet: the first name looked up in it imports
    the real one, whose names it then holds (so any reference taken
    meanwhile, such as ``dataclasses.inspect``, works from then on)."""

    def __getattr__(self, attr: str) -> Any:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        __import__(name)
        self.__dict__.update(vars(sys.modules[name]))
        return getattr(sys.modules[name], attr)


def defer(name: str) -> None:
    """Import module ``name`` only when it is first used."""
    if name not in sys.modules:
        sys.modules[name] = Deferred(name)


def install(path: str, *, record: bool = False) -> dict[str, Any]:
    """Have ``dataclasses`` take its generated code from ``path`` (or, with
    ``record``, collect it there at exit). Returns the live table."""
    defer("inspect")
    defer("ipaddress")  # urllib.parse (pathlib's) needs it only for URLs with [hosts]
    import dataclasses

    table: dict[str, Any] = {} if record else _load(path)
    real_exec = builtins.exec

    def cached_exec(src: Any, globs: Any = None, locs: Any = None, /) -> None:
        if isinstance(src, str):
            code = table.get(src)
            if code is None:
                # dont_inherit: compiled as dataclasses' own exec() would,
                # without this module's __future__ flags
                code = table[src] = compile(src, "<string>", "exec", dont_inherit=True)
            src = code
        real_exec(src, globs, locs)

    dataclasses.exec = cached_exec  # type: ignore[attr-defined]  # shadows the builtin there
    if record:
        import atexit

        atexit.register(_save, path, table)
    return table


def _save(path: str, table: dict[str, Any]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(marshal.dumps((_key(), table)))
        os.replace(tmp, path)  # whole or not at all, whoever else writes it
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
