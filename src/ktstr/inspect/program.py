"""A drgn ``Program`` over guest memory: vmcoreinfo from the guest, debug
info from the kernel cache's vmlinux.

The guest names where its vmcoreinfo note is (KernAddrs); the host reads
the note itself, checks it (an ELF note named ``VMCOREINFO``, a sane size,
the release of the kernel it booted), and hands it to drgn, which walks the
guest's page tables for virtual addresses (KASLR and all) and matches the
vmlinux by build ID.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ktstr.inspect.memory import FaultError, GuestMemory

#: vmcoreinfo is a page of text in practice; a bound well above that.
MAX_VMCOREINFO = 1 << 16


class InspectError(Exception):
    """Guest memory cannot be inspected (why is in the message)."""


@dataclass(frozen=True, slots=True)
class VmcoreInfo:
    text: str
    fields: dict[str, str]

    @property
    def release(self) -> str:
        return self.fields.get("OSRELEASE", "")

    @property
    def kaslr_offset(self) -> int:
        return int(self.fields.get("KERNELOFFSET", "0"), 16)

    def number(self, name: str) -> int | None:
        value = self.fields.get(f"NUMBER({name})")
        return int(value, 0) if value is not None else None

    def symbol(self, name: str) -> int | None:
        value = self.fields.get(f"SYMBOL({name})")
        return int(value, 16) if value is not None else None


def parse_note(raw: bytes) -> VmcoreInfo:
    """The descriptor of an ELF note named VMCOREINFO, as key=value lines."""
    if len(raw) < 12:
        raise InspectError("vmcoreinfo note is shorter than its header")
    namesz, descsz, _ = struct.unpack_from("<III", raw)
    name_end = 12 + namesz
    desc = 12 + ((namesz + 3) & ~3)
    if raw[12:name_end].rstrip(b"\0") != b"VMCOREINFO" or descsz > MAX_VMCOREINFO:
        raise InspectError("no VMCOREINFO note where the guest said it is")
    text = raw[desc : desc + descsz].split(b"\0", 1)[0].decode("ascii", "replace")
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    if "OSRELEASE" not in fields or "PAGESIZE" not in fields:
        raise InspectError("vmcoreinfo lacks OSRELEASE or PAGESIZE")
    return VmcoreInfo(text=text, fields=fields)


def read_vmcoreinfo(mem: GuestMemory, phys: int, size: int) -> VmcoreInfo:
    if not 12 <= size <= MAX_VMCOREINFO + 64:
        raise InspectError(f"vmcoreinfo size {size} is not plausible")
    try:
        return parse_note(mem.read(phys, size))
    except FaultError as exc:
        raise InspectError(f"vmcoreinfo at {phys:#x}: {exc}") from None


def release_matches(release: str, version: str) -> bool:
    """OSRELEASE (``6.12.117-foo``) against the kernel's config version."""
    return (
        release == version
        or release.startswith(version + "-")
        or re.match(rf"^{re.escape(version)}\b", release) is not None
    )


def open_program(mem: GuestMemory, info: VmcoreInfo, vmlinux: Path) -> Any:
    """A live drgn Program over ``mem`` with ``vmlinux``'s debug info."""
    import drgn

    prog = drgn.Program(drgn.host_platform)
    for region in mem.regions:

        def read(address: int, count: int, offset: int, physical: bool) -> bytes:
            return mem.read(address, count)

        prog.add_memory_segment(region.phys, region.size, read, physical=True)
    prog.set_linux_kernel_custom(info.text.encode(), True)
    try:
        prog.load_debug_info([str(vmlinux)])
    except drgn.MissingDebugInfoError as exc:
        raise InspectError(f"{vmlinux} does not match the running kernel: {exc}") from None
    main = prog.main_module()
    if main.debug_file_status != drgn.ModuleFileStatus.HAVE:
        raise InspectError(f"{vmlinux}: no debug info for the running kernel (build ID?)")
    return prog
