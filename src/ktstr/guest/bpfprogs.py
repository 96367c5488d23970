"""The BPF programs a scheduler loaded, and what the verifier spent on each.

Read with the ``bpf`` syscall (x86-64), no tool needed: every program id
(``BPF_PROG_GET_NEXT_ID``), an fd for it, and its ``bpf_prog_info``. The
programs new since the scheduler started are the scheduler's. The kernel
does not record how long verification took, but ``load_time`` is stamped
when a program's load begins, before the verifier runs (``bpf_prog_load``),
and libbpf loads a scheduler's programs one after another: the gap to the
next program's stamp is this one's verification and load. The last
program has no next, so no figure.
"""

from __future__ import annotations

import ctypes
import os
import struct
import time
from typing import Any

SYS_BPF = 321  # x86-64
BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD = 11, 13, 15
#: sizeof(struct bpf_prog_info) up to attach_btf_id (uapi; stable since 5.16).
INFO_SIZE = 232
#: Field offsets in struct bpf_prog_info.
OFF_TYPE, OFF_JITED_LEN, OFF_XLATED_LEN, OFF_LOAD_TIME = 0, 16, 20, 40
OFF_NAME, OFF_VERIFIED = 64, 216
MAX_PROGS = 4096
_libc = ctypes.CDLL(None, use_errno=True)
#: bpf_prog_type values a scheduler commonly loads (others print as numbers).
PROG_TYPES = {26: "tracing", 27: "struct_ops", 28: "ext", 29: "lsm", 30: "sk_lookup",
              31: "syscall", 2: "kprobe", 5: "tracepoint"}  # fmt: skip


def _bpf(cmd: int, attr: bytearray) -> int:
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    ret = int(_libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_long(cmd), buf,
                            ctypes.c_long(len(attr))))  # fmt: skip
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def prog_ids() -> set[int]:
    """Every loaded program's id."""
    out: set[int] = set()
    start = 0
    while len(out) < MAX_PROGS:
        attr = bytearray(struct.pack("<III", start, 0, 0))
        try:
            _bpf(BPF_PROG_GET_NEXT_ID, attr)
        except OSError:  # ENOENT: no more
            break
        start = struct.unpack_from("<I", attr, 4)[0]
        out.add(start)
    return out


def prog_info(prog_id: int) -> dict[str, Any]:
    fd = _bpf(BPF_PROG_GET_FD_BY_ID, bytearray(struct.pack("<III", prog_id, 0, 0)))
    try:
        info = (ctypes.c_char * INFO_SIZE)()
        attr = bytearray(struct.pack("<IIQ", fd, INFO_SIZE, ctypes.addressof(info)))
        _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
        raw = bytes(info)
    finally:
        os.close(fd)
    ptype = struct.unpack_from("<I", raw, OFF_TYPE)[0]
    return {
        "id": prog_id,
        "name": raw[OFF_NAME : OFF_NAME + 16].split(b"\0")[0].decode("ascii", "replace"),
        "type": PROG_TYPES.get(ptype, str(ptype)),
        "verified_insns": struct.unpack_from("<I", raw, OFF_VERIFIED)[0],
        "xlated_bytes": struct.unpack_from("<I", raw, OFF_XLATED_LEN)[0],
        "jited_bytes": struct.unpack_from("<I", raw, OFF_JITED_LEN)[0],
        "load_time_ns": struct.unpack_from("<Q", raw, OFF_LOAD_TIME)[0],
    }


def boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def new_programs(before: set[int], started_ns: int) -> list[dict[str, Any]]:
    """The programs loaded since ``before`` was taken, in load order, each
    with ``loaded_at_ms`` (its load began, since the scheduler started) and
    ``load_ms`` (until the next one's began: its verification and load; None
    for the last)."""
    progs = []
    for pid in sorted(prog_ids() - before):
        try:
            progs.append(prog_info(pid))
        except OSError:
            continue  # unloaded meanwhile
    progs.sort(key=lambda p: p["load_time_ns"])
    stamps = [p.pop("load_time_ns") for p in progs]
    for i, p in enumerate(progs):
        p["loaded_at_ms"] = round(max(0, stamps[i] - started_ns) / 1e6, 3)
        nxt = stamps[i + 1] if i + 1 < len(stamps) else None
        p["load_ms"] = None if nxt is None else round(max(0, nxt - stamps[i]) / 1e6, 3)
    return progs
