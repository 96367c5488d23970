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
        self.types: list[Type] = [Type(kind=0, name="void")]
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
            t, pos = self._one(raw, pos)
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

    def size(self, type_id: int) -> int:
        t = self.type(self.resolve(type_id))
        if t.kind == PTR:
            return 8
        if t.kind == ARRAY:
            return t.nelems * self.size(t.ref)
        return t.size

    def type_name(self, type_id: int) -> str:
        t = self.type(type_id)
        if t.kind == PTR:
            return self.type_name(t.ref) + " *"
        if t.kind == ARRAY:
            return f"{self.type_name(t.ref)}[{t.nelems}]"
        prefix = {STRUCT: "struct ", UNION: "union ", ENUM: "enum "}.get(t.kind, "")
        if t.name:
            return prefix + t.name
        return self.type_name(t.ref) if t.kind in _MODIFIERS else prefix + "<anon>"

    # -- rendering -------------------------------------------------------------
    def render(self, type_id: int, data: bytes, offset: int = 0) -> Any:
        """The value of type ``type_id`` at ``data[offset:]`` as JSON."""
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
            return struct.unpack_from(fmt, data, offset)[0] if fmt else None
        if t.kind == ARRAY:
            return self._array(t, data, offset)
        if t.kind in (STRUCT, UNION, DATASEC):
            return self._members(t, data, offset)
        return None  # FWD, FUNC, void: nothing to show

    def _array(self, t: Type, data: bytes, offset: int) -> Any:
        et = self.type(self.resolve(t.ref))
        esize = self.size(t.ref)
        if et.kind == INT and esize == 1 and (et.encoding & 2 or et.name in ("char", "u8", "s8")):
            raw = data[offset : offset + t.nelems]
            text = raw.split(b"\0", 1)[0]
            if all(32 <= c < 127 for c in text) and (len(text) < len(raw) or not raw):
                return text.decode()
        n = min(t.nelems, MAX_ELEMS)
        out = [self.render(t.ref, data, offset + i * esize) for i in range(n)]
        if t.nelems > n:
            out.append(f"... {t.nelems - n} more")
        return out

    def _members(self, t: Type, data: bytes, offset: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, m in enumerate(t.members):
            name = m.name or f"<anon{i}>"
            if t.kind == DATASEC:
                out[name] = self.render(m.type, data, offset + m.bit_offset // 8)
            elif m.bits:
                word = int.from_bytes(
                    data[offset + m.bit_offset // 8 : offset + m.bit_offset // 8 + 8].ljust(
                        8, b"\0"
                    ),
                    "little",
                )
                out[name] = (word >> (m.bit_offset % 8)) & ((1 << m.bits) - 1)
            else:
                value = self.render(m.type, data, offset + m.bit_offset // 8)
                if not m.name and isinstance(value, dict):
                    out.update(value)  # anonymous struct/union: its members
                else:
                    out[name] = value
        return out


def _int(data: bytes, offset: int, size: int, signed: bool, boolean: bool) -> int | bool:
    if offset + size > len(data):
        raise BtfError(f"value of {size} bytes at {offset} past the data ({len(data)})")
    v = int.from_bytes(data[offset : offset + size], "little", signed=signed)
    return bool(v) if boolean else v
