"""The dataclass code cache: recorded code is used instead of compiling,
classes behave the same, and a file that does not fit is ignored."""

from __future__ import annotations

import dataclasses
import marshal
import tempfile

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
    path.write_bytes(marshal.dumps(("cpython-39 3.9.0", {"def f(): pass": None})))
    assert codecache.install(str(path)) == {}
    assert _make()(1).y == 2


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=200) | st.builds(marshal.dumps, st.tuples(st.text(), st.integers())))
def test_a_damaged_file_is_ignored(data):
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        assert codecache._load(f.name) == {}
