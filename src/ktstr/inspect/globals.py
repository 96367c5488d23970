"""The scheduler's BPF global variables by name: where each lives in guest
memory and how to write one.

Globals live in the scheduler's DATASEC maps (``.bss``, ``.data``,
``.rodata``, ``.data.*``: arrays of one element whose value type is the
section) and, for arena schedulers, in the arena (the ``.addr_space.1``
section). A variable is named by its C name, or a path into it:
``qa.test_error_cnt``, ``cpu_ctxs[2].dsp_cnt``. Writes are type-checked
against BTF (integers, bools and enums only) and refused for ``.rodata``:
the verifier has folded those values into the program, so a write would
change memory nobody reads.
"""

from __future__ import annotations

import difflib
import errno
import re
from dataclasses import dataclass
from typing import Any

from ktstr.inspect.bpfmaps import arena_globals
from ktstr.inspect.btf import DATASEC, VAR, Btf, BtfError
from ktstr.inspect.reader import Reader
from ktstr.inspect.snapshot import Snapshotter

_PART = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|(\[[0-9]+\])")


class GlobalError(Exception):
    """A global that cannot be written; ``status`` is the errno the guest gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Section:
    name: str  # ".bss", ".data", ".rodata", ".data.foo", "arena"
    map: str
    address: int  # kernel virtual address of the section's first byte
    btf: Btf
    datasec: int  # its DATASEC type id


@dataclass(frozen=True, slots=True)
class Location:
    var: str
    section: Section
    address: int
    type_id: int

    @property
    def type_name(self) -> str:
        return self.section.btf.type_name(self.type_id)


def split_path(path: str) -> list[str]:
    """``qa.cpu_ctxs[2].dsp_cnt`` -> ``["qa", "cpu_ctxs", "[2]", "dsp_cnt"]``."""
    parts, pos = [], 0
    while pos < len(path):
        m = _PART.match(path, pos)
        if m is None or (pos == 0 and path.startswith(".")):
            raise GlobalError(errno.EINVAL, f"{path!r} is not a C name or path")
        parts.append(m.group(1) or m.group(2))
        pos = m.end()
    if not parts or parts[0].startswith("["):
        raise GlobalError(errno.EINVAL, f"{path!r} is not a C name or path")
    return parts


def sections(snap: Snapshotter) -> list[Section]:
    """Every section of globals of the scheduler under test."""
    from drgn import container_of

    out = []
    for m, btf in snap.scheduler_maps_with_btf():
        if btf is None:
            continue
        kind = snap.map_type(m)
        name = snap.map_name(m)
        if kind == "ARRAY":
            vt = int(m.btf_value_type_id.value_())
            if not vt or btf.type(btf.resolve(vt)).kind != DATASEC:
                continue
            arr = container_of(m, "struct bpf_array", "map")
            sec = btf.resolve(vt)
            base = int(arr.value.address_)
            out.append(Section(btf.type(sec).name, name, base, btf, sec))
        elif kind == "ARENA":
            where = arena_globals(snap.prog, m, btf)
            if where is not None:
                out.append(Section("arena", name, where[0], btf, where[1]))
    return out


def locate(secs: list[Section], path: str) -> Location:
    parts = split_path(path)
    names: list[str] = []
    for sec in secs:
        for member in sec.btf.type(sec.datasec).members:
            names.append(member.name)
            if member.name != parts[0]:
                continue
            var = sec.btf.type(member.type)
            start = var.ref if var.kind == VAR else member.type  # the variable's own type
            try:
                type_id, off = sec.btf.member_path(start, parts[1:])
            except BtfError as exc:
                raise GlobalError(errno.ENOENT, f"{path}: {exc}") from None
            return Location(path, sec, sec.address + member.bit_offset // 8 + off, type_id)
    close = difflib.get_close_matches(parts[0], names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise GlobalError(
        errno.ENOENT,
        f"the scheduler has no global {parts[0]!r} in "
        f"{', '.join(sorted({s.name for s in secs})) or 'any section'}{hint}",
    )


def encode(loc: Location, value: int) -> bytes:
    if loc.section.name.startswith(".rodata"):
        raise GlobalError(
            errno.EPERM,
            f"{loc.var} is in {loc.section.name}: read-only, and the verifier has "
            "folded its value into the program (write a .bss or .data variable)",
        )
    try:
        return loc.section.btf.encode_scalar(loc.type_id, value)
    except BtfError as exc:
        raise GlobalError(errno.EINVAL, f"{loc.var}: {exc}") from None


def write(reader: Reader, address: int, data: bytes) -> None:
    """``data`` at kernel virtual ``address``, page by page."""
    while data:
        n = min(len(data), 4096 - (address & 4095))
        reader.mem.write(reader.phys(address), data[:n])
        address, data = address + n, data[n:]


def read_value(snap: Snapshotter, loc: Location) -> Any:
    raw = bytes(snap.prog.read(loc.address, loc.section.btf.size(loc.type_id)))
    return loc.section.btf.render(loc.type_id, raw)
