"""The dataclass code cache: recorded code is used instead of compiling,
classes behave the same, and a file that does not fit is ignored."""

from __future__ import annotations

import dataclasses
import importlib.util
import marshal
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ktstr import codecache


@pytest.fixture(autouse=True)
def _restore_dataclasses():
    yield
    vars(dataclasses).pop("exec", None)  # back to the builtin


def _make():
    @dataclasses.dataclass(frozen=True)
    class Point:
        x: int
        y: int = 2

    return Point


def test_recorded_code_is_used_and_classes_behave_the_same(tmp_path, monkeypatch):
    monkeypatch.setattr("atexit.register", lambda *a, **k: None)  # no bundle of pytest's modules
    path = str(tmp_path / "code.marshal")
    recorded = codecache.install(path, record=True)
    _make()
    assert len(recorded) >= 4  # __init__, __repr__, __eq__, __hash__, __setattr__...
    codecache._save(path, recorded)

    compiled = []

    def counting(*a, **k):
        compiled.append(a)
        return compile(*a, **k)

    monkeypatch.setattr(codecache, "compile", counting, raising=False)
    table = codecache.install(path)
    assert set(table) == set(recorded)
    point = _make()
    assert compiled == []  # every method came from the file
    p = point(1)
    assert p == point(1, 2) and hash(p) == hash(point(1))
    assert repr(p) == "_make.<locals>.Point(x=1, y=2)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 3  # type: ignore[misc]
    assert point.__init__.__annotations__ == {"x": "int", "y": "int", "return": None}


def test_other_text_is_compiled_as_usual(tmp_path):
    path = str(tmp_path / "code.marshal")
    codecache._save(path, {})
    table = codecache.install(path)
    _make()
    assert table  # compiled now, and kept for the rest of the process


def test_a_file_from_another_interpreter_is_ignored(tmp_path):
    path = tmp_path / "code.marshal"
    path.write_bytes(marshal.dumps(("cpython-39 3.9.0", {"def f(): pass": None}, {})))
    assert codecache.install(str(path)) == {}
    assert _make()(1).y == 2


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=200) | st.builds(marshal.dumps, st.tuples(st.text(), st.integers())))
def test_a_damaged_file_is_ignored(data):
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        assert codecache._load(f.name) == ({}, {})


def test_a_deferred_module_is_imported_at_its_first_use(monkeypatch):
    """``json.tool`` stands in for inspect: not imported until a name of it
    is looked up, then real for the holder of the early reference too."""
    monkeypatch.delitem(sys.modules, "json.tool", raising=False)
    codecache.defer("json.tool")
    early = sys.modules["json.tool"]
    assert isinstance(early, codecache.Deferred)
    assert callable(early.main)  # the lookup imported it
    real = sys.modules["json.tool"]
    assert real is not early and not isinstance(real, codecache.Deferred)
    assert early.main is real.main and "argparse" in vars(early)


_GUEST_IMPORTS = """
import sys, os
import ktstr.guest  # first, as in the guest: it installs the cache
import dataclasses
from ktstr.codecache import Deferred
for name in sorted(os.listdir(ktstr.guest.__path__[0])):  # not pkgutil: it uses inspect
    if name.endswith(".py"):
        __import__("ktstr.guest." + name[:-3])
print(isinstance(sys.modules["inspect"], Deferred), isinstance(sys.modules["ipaddress"], Deferred))

@dataclasses.dataclass
class Bare:
    x: int

print(Bare.__doc__, isinstance(sys.modules["inspect"], Deferred))
"""


def test_the_guest_modules_never_need_inspect(tmp_path):
    """With the cache on (the guest), importing every guest module leaves
    inspect unimported: each dataclass there has a docstring. One without
    still gets its signature as its docstring, by importing it then."""
    env = {**os.environ, codecache.ENV: str(tmp_path / "code.marshal")}
    env["PYTHONPATH"] = str(Path(codecache.__file__).parents[1])
    out = subprocess.run([sys.executable, "-S", "-c", _GUEST_IMPORTS], env=env,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.split("\n")[:2] == ["True True", "Bare(x: int) False"], out


_RECORD = """
import sys
from ktstr import codecache
codecache.install(sys.argv[1], record=True)
import ktstr.guest.agent, json.decoder
"""

_USE = """
import sys
import ktstr  # installs the cache, as in the guest
import json, dataclasses, traceback
import ktstr.protocol.messages as messages
loaders = {m: type(sys.modules[m].__spec__.loader).__name__
           for m in ("json", "json.decoder", "dataclasses", "ktstr.protocol.messages")}
print(loaders)
print(messages.__file__, json.__path__)
try:
    json.loads("{")
except ValueError:
    print("self.raw_decode(" in traceback.format_exc())  # source lines, from the real files
"""


def test_recorded_modules_load_from_the_bundle_as_from_their_files(tmp_path):
    """The probe records the code of the modules it imported; the guest
    then takes them from that one file, with their usual names, files,
    package paths and tracebacks."""
    path = str(tmp_path / "code.marshal")
    env = {**os.environ, "PYTHONPATH": str(Path(codecache.__file__).parents[1])}
    subprocess.run([sys.executable, "-S", "-c", _RECORD, path], env=env, check=True)
    _, modules = codecache._load(path)
    assert {"json.decoder", "dataclasses", "ktstr.protocol.messages"} <= set(modules)
    assert not any("-packages" in origin for origin, *_ in modules.values())
    env[codecache.ENV] = path
    out = subprocess.run([sys.executable, "-S", "-c", _USE], env=env, capture_output=True,
                         text=True, check=True).stdout.splitlines()  # fmt: skip
    assert set(eval(out[0]).values()) == {"_Bundled"}, out
    assert out[1].startswith(str(Path(codecache.__file__).parent / "protocol" / "messages.py"))
    assert out[2] == "True"


def test_a_module_whose_file_changed_is_found_the_usual_way(tmp_path):
    src = tmp_path / "bundled_mod.py"
    src.write_text("X = 1\n")
    st = src.stat()
    code = marshal.dumps(compile("X = 2\n", str(src), "exec"))
    finder = codecache.Bundle({"bundled_mod": (str(src), st.st_mtime_ns, st.st_size, code)})
    spec = finder.find_spec("bundled_mod")
    assert spec is not None and spec.origin == str(src) and spec.submodule_search_locations is None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.X == 2 and mod.__file__ == str(src)  # the bundle's code, the file's name
    src.write_text("X = 10\n")  # another size
    assert finder.find_spec("bundled_mod") is None
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    src.write_text("X = 1\n")
    assert finder.find_spec("bundled_mod") is None  # same size, another mtime
    assert finder.find_spec("other") is None


def test_a_damaged_bundle_entry_is_found_the_usual_way(tmp_path):
    src = tmp_path / "damaged_mod.py"
    src.write_text("X = 1\n")
    st = src.stat()
    finder = codecache.Bundle({"a": (str(src),), "b": (str(src), "x", 0, b""),  # type: ignore[dict-item]
                               "c": (str(src), st.st_mtime_ns, st.st_size, "text")})  # fmt: skip
    assert [finder.find_spec(n) for n in "abc"] == [None, None, None]
    finder.modules["d"] = (str(src), st.st_mtime_ns, st.st_size, b"not marshal")
    spec = finder.find_spec("d")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # the code from the file instead
    assert mod.X == 1
