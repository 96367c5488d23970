"""Compiled code the guest would otherwise produce at every boot, kept between runs.

Two kinds, in one file per interpreter, recorded by the host's probe of the
guest's interpreter (``record``) and loaded by the guest (``install``):

* The methods ``@dataclass`` generates (``__init__``, ``__repr__``,
  ``__eq__``, ``__hash__``, ``__setattr__`` when frozen), compiled from
  source text when their module is imported: about 285 functions for the
  guest's modules. The same text gives the same code object; text not in
  the file is compiled as usual.
* The code of every module of the stdlib and this package the probe
  imported (``Bundle``): the guest then reads one file instead of opening
  each module's over 9p (1.6 ms an open under TCG, about 80 modules before
  the agent is ready). A module whose source file is not the one recorded
  (mtime and size) is imported the usual way.

A file that does not load (another interpreter, damaged) is ignored: the
cache can only make the start faster. Only the guest uses it
(``KTSTR_CODE_CACHE`` on its kernel command line, read by ``ktstr/__init__``).

With it, the guest also defers ``inspect``, which ``dataclasses`` imports
but calls only to write a docstring for a class that has none (so every
dataclass the guest imports has one; a test holds it), and ``ipaddress``,
which ``urllib.parse`` (pathlib's) uses only for URLs with bracketed hosts.
The first use of any of their names imports them for real.

Importing the agent took 186 million instructions, now 122 (callgrind);
in the guest (TCG) a Python that imports it took 1.21 s with the dataclass
code alone, 0.85 s with the bundle, 0.3 s of either the interpreter's start.
"""

from __future__ import annotations

import builtins
import marshal
import os
import sys

#: Only builtin and frozen modules before the bundle is in place: anything
#: else would be read from its own file (over 9p in the guest).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from importlib._bootstrap_external import SourceFileLoader, spec_from_file_location
    from importlib.machinery import ModuleSpec
    from typing import Any
else:
    from _frozen_importlib_external import SourceFileLoader, spec_from_file_location

ENV = "KTSTR_CODE_CACHE"
CodeType = type(compile("", "", "exec"))  # types.CodeType, without importing types
MAX_BYTES = 16 << 20


def _key() -> str:
    """Code objects are only valid for the very interpreter that made them."""
    return f"{sys.implementation.cache_tag} {sys.version}"


#: name -> (file, its mtime in ns, its size, marshalled code)
Modules = dict[str, tuple[str, int, int, bytes]]


def _load(path: str) -> tuple[dict[str, Any], Modules]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            return {}, {}
        key, table, modules = marshal.loads(data)
    except (OSError, EOFError, ValueError, TypeError):
        return {}, {}
    if key != _key() or not isinstance(table, dict) or not isinstance(modules, dict):
        return {}, {}
    return table, modules


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
    table, modules = ({}, {}) if record else _load(path)
    if modules:
        sys.meta_path.insert(0, Bundle(modules))
    defer("inspect")
    defer("ipaddress")  # urllib.parse (pathlib's) needs it only for URLs with [hosts]
    import dataclasses

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

        atexit.register(lambda: _save(path, table, bundle()))
    return table


class _Bundled(SourceFileLoader):
    """A module's code from the bundle: everything else as from its file."""

    def __init__(self, name: str, path: str, code: bytes) -> None:
        super().__init__(name, path)
        self.code = code

    def get_code(self, fullname: str) -> Any:
        try:
            code = marshal.loads(self.code)
        except (EOFError, ValueError, TypeError):
            code = None
        return code if isinstance(code, CodeType) else super().get_code(fullname)


class Bundle:
    """Finds modules whose code the file holds, as long as their source
    file is still the one recorded (same mtime and size); any other module
    is left to the usual finders."""

    def __init__(self, modules: Modules) -> None:
        self.modules = modules

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        entry = self.modules.get(name)
        if not isinstance(entry, tuple) or len(entry) != 4:
            return None
        origin, mtime_ns, size, code = entry
        try:
            st = os.stat(origin)
        except (OSError, TypeError, ValueError):
            return None
        if st.st_mtime_ns != mtime_ns or st.st_size != size or not isinstance(code, bytes):
            return None
        pkg = [os.path.dirname(origin)] if os.path.basename(origin) == "__init__.py" else None
        loader = _Bundled(name, origin, code)
        return spec_from_file_location(name, origin, loader=loader, submodule_search_locations=pkg)


def bundle() -> Modules:
    """The code of every imported module of the stdlib and this package
    that was loaded from a source file."""
    roots = (os.path.dirname(os.__file__) + os.sep, os.path.dirname(__file__) + os.sep)
    out: Modules = {}
    for name, mod in list(sys.modules.items()):
        spec = getattr(mod, "__spec__", None)
        origin = getattr(spec, "origin", None)
        loader = getattr(spec, "loader", None)
        if not isinstance(loader, SourceFileLoader) or not isinstance(origin, str):
            continue
        if not origin.startswith(roots) or "-packages" + os.sep in origin:
            continue
        try:
            code = loader.get_code(name)
            st = os.stat(origin)
        except Exception:  # a module left out is only imported as usual
            continue
        if code is not None:
            out[name] = (origin, st.st_mtime_ns, st.st_size, marshal.dumps(code))
    return out


def _save(path: str, table: dict[str, Any], modules: Modules | None = None) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(marshal.dumps((_key(), table, modules or {})))
        os.replace(tmp, path)  # whole or not at all, whoever else writes it
    except OSError:
        import contextlib

        with contextlib.suppress(OSError):
            os.unlink(tmp)
