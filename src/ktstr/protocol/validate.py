"""Strict decoding of guest payloads into typed values. Stdlib only; host side.

The guest is untrusted: its bytes may be torn, malformed or malicious. Every
JSON payload is parsed here, once, into its kind's frozen dataclass, or
rejected with a ``PayloadError`` that names the kind and the field path
(``WORKER_REPORTS.reports[3].wall_s: ...``). Past this module, code trusts
the types and never the guest.

What is enforced:

* JSON itself: no NaN or Infinity (nor ``1e999``), integers of at most 20
  digits, no duplicate keys, bounded nesting;
* every field's type exactly (``bool`` is not an ``int``; an ``int`` is a
  valid ``float``), no missing required field, no unknown field;
* bounds from field metadata: ``max_len`` for strings, lists and dicts,
  ``lo``/``hi`` for numbers (and for the items of number lists);
* free-form fields (``JsonValue``) are bounded in depth, size and string
  length as a whole.

The guest runs the host's own package, so both ends speak the same version:
an unknown field is a fault, not a newer peer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from ktstr.protocol.messages import (
    JSON_TYPES,
    TEXT_KINDS,
    Message,
    MessageKind,
    PayloadError,
    SnapshotRequest,
)

FREE_MAX_DEPTH = 16
FREE_MAX_NODES = 200_000
FREE_MAX_STR = 65_536
#: Default bounds when a field sets none.
DEFAULT_MAX_STR = 4096
DEFAULT_MAX_ITEMS = 4096
INT_DIGITS = 20

T = TypeVar("T")


def _no_constant(name: str) -> Any:
    raise PayloadError(f"{name} is not a number JSON allows")


def _int(text: str) -> int:
    if len(text.lstrip("-")) > INT_DIGITS:
        raise PayloadError(f"integer of {len(text)} digits")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise PayloadError(f"number {text[:40]} is not finite")
    return value


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise PayloadError(f"duplicate key {dup[:60]!r}")
    return out


def parse_json(data: bytes) -> Any:
    """Strict JSON: finite numbers, bounded integers, unique keys."""
    try:
        return json.loads(
            data,
            parse_constant=_no_constant,
            parse_int=_int,
            parse_float=_float,
            object_pairs_hook=_pairs,
        )
    except PayloadError:
        raise
    except RecursionError:
        raise PayloadError("nesting too deep") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"not JSON: {str(exc)[:120]}") from None


@dataclass(frozen=True, slots=True)
class _Bound:
    """A field's bounds: ``max_len`` of its string, list or dict (None =
    default), ``lo``..``hi`` of its numbers (list items included)."""

    max_len: int | None = None
    lo: float | None = None
    hi: float | None = None

    def items(self) -> _Bound:
        return _Bound(None, self.lo, self.hi)


def bounds(f: dataclasses.Field[Any]) -> _Bound:
    meta = f.metadata
    return _Bound(max_len=meta.get("max_len"), lo=meta.get("lo"), hi=meta.get("hi"))


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def check(cls: type[T], obj: Any, where: str) -> T:
    """``obj`` (parsed JSON) as an instance of dataclass ``cls``, or PayloadError."""
    return typing.cast(T, _dataclass(cls, obj, where))


def decode(cls: type[T], data: bytes, where: str) -> T:
    try:
        obj = parse_json(data)
    except PayloadError as exc:
        raise PayloadError(f"{where}: {exc}") from None
    return check(cls, obj, where)


def _dataclass(cls: type, obj: Any, where: str) -> Any:
    if not isinstance(obj, dict):
        raise PayloadError(f"{where}: expected an object, got {_kind(obj)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(obj) - set(fields))
    if unknown:
        raise PayloadError(f"{where}: unknown field {unknown[0][:60]!r}")
    hints = _hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in obj:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise PayloadError(f"{where}.{name}: missing")
            continue
        kwargs[name] = _value(hints[name], obj[name], f"{where}.{name}", bounds(f))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # the dataclass's own __post_init__
        raise PayloadError(f"{where}: {str(exc)[:200]}") from None


def _value(tp: Any, v: Any, where: str, b: _Bound) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if v is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, v, where, b)
    if tp is Any:
        _free(v, where)
        return v
    if origin is list or origin is tuple:
        if not isinstance(v, list):
            raise PayloadError(f"{where}: expected a list, got {_kind(v)}")
        limit = b.max_len or DEFAULT_MAX_ITEMS
        if len(v) > limit:
            raise PayloadError(f"{where}: {len(v)} items, at most {limit}")
        item, ib = typing.get_args(tp)[0], b.items()
        out = _numbers(item, v, ib)
        if out is None:  # not plain numbers within bounds: name the first bad item
            out = [_value(item, x, f"{where}[{i}]", ib) for i, x in enumerate(v)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(v, dict):
            raise PayloadError(f"{where}: expected an object, got {_kind(v)}")
        limit = b.max_len or DEFAULT_MAX_ITEMS
        if len(v) > limit:
            raise PayloadError(f"{where}: {len(v)} keys, at most {limit}")
        _, vt = typing.get_args(tp)
        for k in v:
            _scalar(str, k, f"{where} key", _Bound(256))
        ib = b.items()
        return {k: _value(vt, x, f"{where}[{k[:40]!r}]", ib) for k, x in v.items()}
    if dataclasses.is_dataclass(tp):
        return _dataclass(typing.cast(type, tp), v, where)
    return _scalar(tp, v, where, b)


def _numbers(tp: Any, v: list[Any], b: _Bound) -> list[Any] | None:
    """A list of ints or floats (a report's latencies: thousands) checked in
    bulk; None if any item fails, for the item-by-item path to say which."""
    if tp is float:
        if not all(type(x) is float or type(x) is int for x in v):
            return None
        out: list[Any] = [float(x) for x in v]
        if not all(map(math.isfinite, out)):
            return None
    elif tp is int:
        if not all(type(x) is int for x in v):
            return None
        out = list(v)
    else:
        return None
    if out and ((b.lo is not None and min(out) < b.lo) or (b.hi is not None and max(out) > b.hi)):
        return None
    return out


def _scalar(tp: Any, v: Any, where: str, b: _Bound) -> Any:
    if tp is bool:
        if not isinstance(v, bool):
            raise PayloadError(f"{where}: expected true/false, got {_kind(v)}")
        return v
    if tp is str:
        if not isinstance(v, str):
            raise PayloadError(f"{where}: expected a string, got {_kind(v)}")
        limit = b.max_len or DEFAULT_MAX_STR
        if len(v) > limit:
            raise PayloadError(f"{where}: string of {len(v)} characters, at most {limit}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise PayloadError(f"{where}: expected an integer, got {_kind(v)}")
    elif tp is float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise PayloadError(f"{where}: expected a number, got {_kind(v)}")
        v = float(v)
        if not math.isfinite(v):
            raise PayloadError(f"{where}: not a finite number")
    else:
        raise PayloadError(f"{where}: unsupported field type {tp!r}")
    if (b.lo is not None and v < b.lo) or (b.hi is not None and v > b.hi):
        raise PayloadError(f"{where}: {v!r} outside {b.lo}..{b.hi}")
    return v


def _free(v: Any, where: str) -> None:
    """Bounds on a free-form JSON value: depth, node count, string length."""
    stack = [(v, 0)]
    nodes = 0
    while stack:
        x, depth = stack.pop()
        nodes += 1
        if nodes > FREE_MAX_NODES:
            raise PayloadError(f"{where}: more than {FREE_MAX_NODES} values")
        if depth > FREE_MAX_DEPTH:
            raise PayloadError(f"{where}: nested deeper than {FREE_MAX_DEPTH}")
        if isinstance(x, str):
            if len(x) > FREE_MAX_STR:
                raise PayloadError(f"{where}: string of {len(x)} characters")
        elif isinstance(x, float) and not math.isfinite(x):
            raise PayloadError(f"{where}: not a finite number")
        elif isinstance(x, dict):
            stack += [(k, depth + 1) for k in x]
            stack += [(y, depth + 1) for y in x.values()]
        elif isinstance(x, list):
            stack += [(y, depth + 1) for y in x]
        elif not (x is None or isinstance(x, bool | int | float)):
            raise PayloadError(f"{where}: {_kind(x)} is not JSON")


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true/false"
    if isinstance(v, str):
        return f"string {v[:40]!r}"
    if isinstance(v, int | float):
        return f"number {v!r}"[:60]
    if isinstance(v, dict):
        return "an object"
    return "a list" if isinstance(v, list) else type(v).__name__


def decode_payload(kind: int, payload: bytes) -> Message | str | None:
    """The typed value of one CRC-valid payload: a dataclass, text for text
    kinds, None for SysReady. PayloadError for anything else, naming the
    kind and field."""
    try:
        mk = MessageKind(kind)
    except ValueError:
        raise PayloadError(f"unknown message kind {kind}") from None
    if mk.host_to_guest:
        raise PayloadError(f"{mk.name} travels host to guest only")
    if mk is MessageKind.SYS_READY:
        if payload:
            raise PayloadError("SYS_READY: payload must be empty")
        return None
    if mk in TEXT_KINDS:
        return payload.decode("utf-8", "replace")
    if mk is MessageKind.SNAPSHOT_REQUEST:
        return SnapshotRequest.from_bytes(payload)
    return decode(JSON_TYPES[mk], payload, mk.name)
