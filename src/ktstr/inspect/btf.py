"""BPF Type Format: parse a BPF program's BTF and render raw bytes by it.

BTF is documented (Documentation/bpf/btf.rst) and compact: a header, an
array of type records, a string table. No well-kept Python reader exists,
so this is a small one: types by id, sizes, and ``render(type_id, data)``,
which turns a map's key or value (or a DATASEC: ``.bss``, ``.data``,
``.rodata``, an arena's globals) into JSON by field name. Pointers render as
addresses (``"0x..."``), never followed; char arrays as text when they are
text; bitfields and enums by value and name.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

MAGIC = 0xEB9F
_HDR = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")

INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC = 9, 10, 11, 12, 13, 14, 15
FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = 16, 17, 18, 19
_MODIFIERS = {TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG}
#: Elements of one array rendered (the rest is counted).
MAX_ELEMS = 256
#: Nesting depth and values rendered per ``render`` call: a hostile BTF (a
#: struct that contains itself, arrays of arrays) cannot exhaust the host.
MAX_DEPTH = 32
MAX_NODES = 200_000


class BtfError(ValueError):
    """BTF that cannot be parsed (truncated, unknown kind, bad reference)."""


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    type: int
    bit_offset: int
    bits: int = 0  # bitfield width, 0 = not a bitfield


@dataclass(frozen=True, slots=True)
class Type:
    kind: int
    name: str
    size: int = 0  # INT, STRUCT, UNION, ENUM, FLOAT, DATASEC
    ref: int = 0  # PTR, modifiers, VAR, FUNC: the type referred to
    members: tuple[Member, ...] = ()  # STRUCT, UNION, DATASEC (offset in bytes*8)
    nelems: int = 0  # ARRAY (ref = element type)
    encoding: int = 0  # INT: 1 signed, 2 char, 4 bool
    enums: dict[int, str] = field(default_factory=dict)


class Btf:
    def __init__(self, data: bytes) -> None:
        if len(data) < _HDR.size:
            raise BtfError("BTF shorter than its header")
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = _HDR.unpack_from(data)
        if magic != MAGIC:
            raise BtfError(f"not BTF (magic {magic:#x})")
        base = hdr_len
        self._strings = data[base + str_off : base + str_off + str_len]
        if len(self._strings) != str_len:
            raise BtfError("BTF string section truncated")
        self.raw = bytes(data)
        self.types: list[Type] = [Type(kind=0, name="void")]
        self._nodes = 0
        self._parse(data[base + type_off : base + type_off + type_len])
        self._by_name = {t.name: i for i, t in enumerate(self.types) if t.name}

    def _str(self, off: int) -> str:
        end = self._strings.find(b"\0", off)
        return self._strings[off : end if end >= 0 else None].decode("utf-8", "replace")

    def _parse(self, raw: bytes) -> None:
        pos = 0
        while pos < len(raw):
            if pos + _TYPE.size > len(raw):
                raise BtfError("BTF type record truncated")
            try:
                t, pos = self._one(raw, pos)
            except struct.error:
                raise BtfError(f"BTF type {len(self.types)} truncated") from None
            self.types.append(t)

    def _one(self, raw: bytes, pos: int) -> tuple[Type, int]:
        """The type record at ``pos``, and where the next one starts."""
        name_off, info, st = _TYPE.unpack_from(raw, pos)
        pos += _TYPE.size
        kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        name = self._str(name_off)
        u32 = struct.Struct("<I")
        if kind == INT:
            (enc,) = u32.unpack_from(raw, pos)
            return Type(kind, name, size=st, encoding=(enc >> 24) & 0xF), pos + 4
        if kind == ARRAY:
            elem, _index, n = struct.unpack_from("<III", raw, pos)
            return Type(kind, name, ref=elem, nelems=n), pos + 12
        if kind in (STRUCT, UNION):
            members = []
            for _ in range(vlen):
                m_name, m_type, off = struct.unpack_from("<III", raw, pos)
                bits, bit_off = (off >> 24, off & 0xFFFFFF) if kflag else (0, off)
                members.append(Member(self._str(m_name), m_type, bit_off, bits))
                pos += 12
            return Type(kind, name, size=st, members=tuple(members)), pos
        if kind == ENUM:
            vals = {}
            for _ in range(vlen):
                e_name, val = struct.unpack_from("<Ii", raw, pos)
                vals[val] = self._str(e_name)
                pos += 8
            return Type(kind, name, size=st, enums=vals, encoding=kflag), pos
        if kind == ENUM64:
            vals = {}
            for _ in range(vlen):
                e_name, lo, hi = struct.unpack_from("<III", raw, pos)
                vals[hi << 32 | lo] = self._str(e_name)
                pos += 12
            return Type(kind, name, size=st, enums=vals, encoding=kflag), pos
        if kind == FUNC_PROTO:
            return Type(kind, name, ref=st), pos + 8 * vlen
        if kind == VAR:
            return Type(kind, name, ref=st), pos + 4
        if kind == DATASEC:
            members = []
            for _ in range(vlen):
                v_type, off, size = struct.unpack_from("<III", raw, pos)
                members.append(Member(self.var_name(v_type), v_type, off * 8, size * 8))
                pos += 12
            return Type(kind, name, size=st, members=tuple(members)), pos
        if kind == DECL_TAG:
            return Type(kind, name, ref=st), pos + 4
        if kind == FLOAT:
            return Type(kind, name, size=st), pos
        if kind in (PTR, FWD, FUNC) or kind in _MODIFIERS:
            return Type(kind, name, ref=st), pos
        raise BtfError(f"unknown BTF kind {kind}")

    def var_name(self, type_id: int) -> str:
        """A DATASEC entry's name (its VAR is parsed before the DATASEC)."""
        return self.types[type_id].name if type_id < len(self.types) else f"var{type_id}"

    def type(self, type_id: int) -> Type:
        if not 0 <= type_id < len(self.types):
            raise BtfError(f"no BTF type {type_id}")
        return self.types[type_id]

    def by_name(self, name: str) -> int | None:
        return self._by_name.get(name)

    def resolve(self, type_id: int) -> int:
        """Through typedefs and qualifiers (and VAR) to the real type."""
        for _ in range(64):
            t = self.type(type_id)
            if t.kind not in _MODIFIERS and t.kind != VAR:
                return type_id
            type_id = t.ref
        raise BtfError("BTF reference loop")

    def size(self, type_id: int, depth: int = 0) -> int:
        if depth > MAX_DEPTH:
            raise BtfError("BTF array nesting too deep")
        t = self.type(self.resolve(type_id))
        if t.kind == PTR:
            return 8
        if t.kind == ARRAY:
            return t.nelems * self.size(t.ref, depth + 1)
        return t.size

    def type_name(self, type_id: int, depth: int = 0) -> str:
        t = self.type(type_id)
        if depth > MAX_DEPTH:
            return "..."
        if t.kind == PTR:
            return self.type_name(t.ref, depth + 1) + " *"
        if t.kind == ARRAY:
            return f"{self.type_name(t.ref, depth + 1)}[{t.nelems}]"
        prefix = {STRUCT: "struct ", UNION: "union ", ENUM: "enum "}.get(t.kind, "")
        if t.name:
            return prefix + t.name
        if t.kind in _MODIFIERS or t.kind == VAR:
            return self.type_name(t.ref, depth + 1)
        return prefix + "<anon>"

    # -- rendering -------------------------------------------------------------
    def render(self, type_id: int, data: bytes, offset: int = 0) -> Any:
        """The value of type ``type_id`` at ``data[offset:]`` as JSON; BtfError
        when the data is short or the type is too deep or too large."""
        self._nodes = 0
        try:
            return self._render(type_id, data, offset, 0)
        except (struct.error, RecursionError) as exc:
            raise BtfError(f"cannot render BTF type {type_id}: {exc}") from None

    def _render(self, type_id: int, data: bytes, offset: int, depth: int) -> Any:
        self._nodes += 1
        if depth > MAX_DEPTH or self._nodes > MAX_NODES:
            raise BtfError(f"BTF type {type_id}: value nested too deep or too large to render")
        tid = self.resolve(type_id)
        t = self.type(tid)
        if t.kind == INT:
            return _int(data, offset, t.size, bool(t.encoding & 1), bool(t.encoding & 4))
        if t.kind in (ENUM, ENUM64):
            v = _int(data, offset, t.size, bool(t.encoding), False)
            return t.enums.get(int(v), v)
        if t.kind == PTR:
            return f"{_int(data, offset, 8, False, False):#x}"
        if t.kind == FLOAT:
            fmt = {4: "<f", 8: "<d"}.get(t.size)
            if fmt is None:
                return None
            v = struct.unpack_from(fmt, data, offset)[0]
            return v if math.isfinite(v) else repr(v)  # JSON has no NaN
        if t.kind == ARRAY:
            return self._array(t, data, offset, depth)
        if t.kind in (STRUCT, UNION, DATASEC):
            return self._members(t, data, offset, depth)
        return None  # FWD, FUNC, void: nothing to show

    def _array(self, t: Type, data: bytes, offset: int, depth: int) -> Any:
        et = self.type(self.resolve(t.ref))
        esize = self.size(t.ref)
        if et.kind == INT and esize == 1 and (et.encoding & 2 or et.name in ("char", "u8", "s8")):
            raw = data[offset : offset + t.nelems]
            text = raw.split(b"\0", 1)[0]
            if all(32 <= c < 127 for c in text) and (len(text) < len(raw) or not raw):
                return text.decode()
        n = min(t.nelems, MAX_ELEMS)
        out = [self._render(t.ref, data, offset + i * esize, depth + 1) for i in range(n)]
        if t.nelems > n:
            out.append(f"... {t.nelems - n} more")
        return out

    def _members(self, t: Type, data: bytes, offset: int, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, m in enumerate(t.members):
            name = m.name or f"<anon{i}>"
            if t.kind == DATASEC:
                out[name] = self._render(m.type, data, offset + m.bit_offset // 8, depth + 1)
            elif m.bits:
                word = int.from_bytes(
                    data[offset + m.bit_offset // 8 : offset + m.bit_offset // 8 + 8].ljust(
                        8, b"\0"
                    ),
                    "little",
                )
                out[name] = (word >> (m.bit_offset % 8)) & ((1 << m.bits) - 1)
            else:
                value = self._render(m.type, data, offset + m.bit_offset // 8, depth + 1)
                if not m.name and isinstance(value, dict):
                    out.update(value)  # anonymous struct/union: its members
                else:
                    out[name] = value
        return out

    # -- addressing (for writes) -------------------------------------------------
    def member_path(self, type_id: int, path: list[str]) -> tuple[int, int]:
        """(type id, byte offset) of ``path`` (member names, ``[i]`` indexes)
        inside type ``type_id``; BtfError naming the part that is not there."""
        offset = 0
        for part in path:
            t = self.type(self.resolve(type_id))
            if part.startswith("["):
                if t.kind != ARRAY:
                    raise BtfError(f"{part}: {self.type_name(type_id)} is not an array")
                i = int(part[1:-1])
                if i >= t.nelems:
                    raise BtfError(f"{part}: {self.type_name(type_id)} has {t.nelems} elements")
                offset += i * self.size(t.ref)
                type_id = t.ref
                continue
            if t.kind not in (STRUCT, UNION):
                raise BtfError(f".{part}: {self.type_name(type_id)} has no members")
            found = self._member(t, part)
            if found is None:
                names = ", ".join(m.name for m in t.members if m.name)[:300]
                raise BtfError(f".{part}: not a member of {self.type_name(type_id)} ({names})")
            m_type, m_off = found
            type_id, offset = m_type, offset + m_off
        return type_id, offset

    def _member(self, t: Type, name: str) -> tuple[int, int] | None:
        for m in t.members:
            if m.bits:
                continue  # bitfields are not addressable
            if m.name == name:
                return m.type, m.bit_offset // 8
            inner = self.type(self.resolve(m.type))
            if not m.name and inner.kind in (STRUCT, UNION):  # anonymous: look inside
                found = self._member(inner, name)
                if found is not None:
                    return found[0], m.bit_offset // 8 + found[1]
        return None

    def encode_scalar(self, type_id: int, value: int) -> bytes:
        """``value`` as the bytes of an integer, bool or enum type; BtfError
        if the type is not one or the value does not fit."""
        t = self.type(self.resolve(type_id))
        if t.kind not in (INT, ENUM, ENUM64) or t.size not in (1, 2, 4, 8):
            raise BtfError(f"{self.type_name(type_id)} is not an integer, bool or enum")
        signed = bool(t.encoding & 1) if t.kind == INT else bool(t.encoding)
        if t.kind == INT and t.encoding & 4:
            signed = False
            if value not in (0, 1):
                raise BtfError(f"{value} is not a bool (0 or 1)")
        lo, hi = (
            (-(1 << (8 * t.size - 1)), (1 << (8 * t.size - 1)) - 1)
            if signed
            else (
                0,
                (1 << (8 * t.size)) - 1,
            )
        )
        if not lo <= value <= hi:
            raise BtfError(f"{value} does not fit {self.type_name(type_id)} ({lo}..{hi})")
        return value.to_bytes(t.size, "little", signed=signed)


def _int(data: bytes, offset: int, size: int, signed: bool, boolean: bool) -> int | bool:
    if offset + size > len(data):
        raise BtfError(f"value of {size} bytes at {offset} past the data ({len(data)})")
    v = int.from_bytes(data[offset : offset + size], "little", signed=signed)
    return bool(v) if boolean else v
