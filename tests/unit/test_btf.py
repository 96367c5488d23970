"""BTF: scx_qmap's own BTF blobs captured from the shared kernels
(tests/vm/test_snapshots.py writes them), replayed; and hostile BTF, which
may only ever raise BtfError, within bounds."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ktstr.inspect.btf import DATASEC, INT, MAGIC, STRUCT, Btf, BtfError
from ktstr.inspect.globals import GlobalError, Section, encode, locate, split_path

DATA = Path(__file__).parents[1] / "data"
SERIES = ("6.12", "7.3")


def capture(series: str) -> dict:
    return json.loads(gzip.open(DATA / f"btf-capture-{series}.json.gz").read())


def blob(series: str) -> bytes:
    return base64.b64decode(capture(series)["btf"])


@pytest.mark.parametrize("series", SERIES)
def test_captured_sections_render_as_the_live_run_did(series):
    cap = capture(series)
    btf = Btf(blob(series))
    for m in cap["maps"]:
        raw = base64.b64decode(m["raw"])
        assert btf.render(m["type_id"], raw) == m["rendered"], m["name"]
    sections = {btf.type(btf.resolve(m["type_id"])).name for m in cap["maps"]}
    assert {".bss", ".rodata", ".data"} <= sections


@pytest.mark.parametrize("series", SERIES)
def test_qmap_globals_by_name_and_path(series):
    cap = capture(series)
    btf = Btf(blob(series))
    by = {m["name"]: m for m in cap["maps"]}
    rodata = by["scx_qmap.rodata"]
    assert rodata["rendered"]["slice_ns"] == 20_000_000  # const volatile u64 slice_ns
    secs = [
        Section(btf.type(btf.resolve(m["type_id"])).name if m["name"] != "arena" else "arena",
                m["name"], 0x1000 * i, btf, btf.resolve(m["type_id"]))
        for i, m in enumerate(cap["maps"], 1)
        if m["name"] == "arena" or btf.type(btf.resolve(m["type_id"])).kind == DATASEC
    ]  # fmt: skip
    var = "test_error_cnt" if series == "6.12" else "qa.test_error_cnt"
    loc = locate(secs, var)
    assert loc.type_name == "u32" and encode(loc, 7) == (7).to_bytes(4, "little")
    with pytest.raises(GlobalError, match="does not fit u32"):
        encode(loc, 1 << 32)
    with pytest.raises(GlobalError, match=r"\.rodata: read-only"):
        encode(locate(secs, "slice_ns"), 1)
    typo = "nr_enqeued" if series == "6.12" else "qaa"
    with pytest.raises(GlobalError, match=f"no global '{typo}'.*did you mean"):
        locate(secs, typo)
    if series == "7.3":  # a path into the arena struct, and an element of an array in it
        arena = next(s for s in secs if s.name == "arena")
        a = locate(secs, "qa.cpu_ctxs[2].dsp_cnt")
        b = locate(secs, "qa.cpu_ctxs[3].dsp_cnt")
        elem = locate(secs, "qa.cpu_ctxs[0]")
        assert a.section is arena and b.address - a.address == btf.size(elem.type_id) > 8
        assert a.address > elem.address and a.type_name in ("u32", "u64")


def test_paths_split_like_c():
    assert split_path("qa.cpu_ctxs[2].dsp_cnt") == ["qa", "cpu_ctxs", "[2]", "dsp_cnt"]
    for bad in ("", ".x", "x..y", "[1]", "x.1", "x y"):
        with pytest.raises(GlobalError):
            split_path(bad)


def tiny_btf(types: bytes, strings: bytes) -> bytes:
    hdr = struct.pack("<HBBIIIII", MAGIC, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


def test_a_struct_that_contains_itself_is_refused_not_recursed():
    # [1] int u32, [2] struct loop { struct loop inner; } (impossible, hostile)
    strings = b"\0u32\0loop\0inner\0"
    types = struct.pack("<III", 1, INT << 24, 4) + struct.pack("<I", 32)
    types += struct.pack("<III", 5, STRUCT << 24 | 1, 8) + struct.pack("<III", 10, 2, 0)
    btf = Btf(tiny_btf(types, strings))
    with pytest.raises(BtfError, match="too deep"):
        btf.render(2, bytes(64))
    assert btf.render(1, (5).to_bytes(4, "little")) == 5


def test_a_datasec_names_its_variables():
    strings = b"\0u32\0counter\0.bss\0"
    var_kind, sec_kind = 14, DATASEC
    types = struct.pack("<III", 1, INT << 24, 4) + struct.pack("<I", 32)
    types += struct.pack("<III", 5, var_kind << 24, 1) + struct.pack("<I", 1)
    types += struct.pack("<III", 13, sec_kind << 24 | 1, 8) + struct.pack("<III", 2, 4, 4)
    btf = Btf(tiny_btf(types, strings))
    assert btf.render(3, bytes(4) + (9).to_bytes(4, "little")) == {"counter": 9}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_garbage_is_a_btf_error(data):
    try:
        btf = Btf(data)
    except BtfError:
        return
    for tid in range(min(len(btf.types), 32)):
        with contextlib.suppress(BtfError):
            btf.render(tid, data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_damaged_real_blob_is_a_btf_error_or_renders(data):
    raw = bytearray(blob("6.12"))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(24, len(raw)))]
    try:
        btf = Btf(bytes(raw))
    except BtfError:
        return
    value = bytes(data.draw(st.binary(min_size=0, max_size=256)))
    for tid in data.draw(st.lists(st.integers(0, len(btf.types) + 5), max_size=8)):
        with contextlib.suppress(BtfError):
            json.dumps(btf.render(tid, value))
