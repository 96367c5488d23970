"""Raw reads of guest kernel memory by virtual address, without drgn.

Kernel image addresses translate by ``phys_base``, direct-map addresses by
``page_offset_base``; anything else (vmalloc, per-CPU chunks beyond the
first) walks the guest's page tables from ``swapper_pg_dir`` (4- or 5-level,
with 2 MiB and 1 GiB pages).
"""

from __future__ import annotations

import struct

from ktstr.inspect.layout import KIMAGE_BASE, Layout
from ktstr.inspect.memory import FaultError, PhysMemory

_PRESENT, _HUGE = 1, 1 << 7
_ADDR = 0x000F_FFFF_FFFF_F000
_I32 = struct.Struct("<i")


class Reader:
    def __init__(self, mem: PhysMemory, layout: Layout) -> None:
        self.mem = mem
        self.layout = layout
        self._po = layout.page_offset
        self._pb = layout.phys_base
        self._end = layout.page_offset + layout.phys_end  # of the direct map

    def phys(self, virt: int) -> int:
        if virt >= KIMAGE_BASE:
            return virt - KIMAGE_BASE + self._pb
        if self._po <= virt < self._end:
            return virt - self._po
        return self._walk(virt)

    def _walk(self, virt: int) -> int:
        table = self.layout.pgd_phys
        shifts = (48, 39, 30, 21, 12) if self.layout.level5 else (39, 30, 21, 12)
        for level, shift in enumerate(shifts):
            entry = self.mem.u64(table + ((virt >> shift) & 511) * 8)
            if not entry & _PRESENT:
                raise FaultError(f"virtual {virt:#x} is not mapped")
            last = level == len(shifts) - 1
            if last or (shift in (30, 21) and entry & _HUGE):
                size = 1 << shift
                return (entry & _ADDR & ~(size - 1)) | (virt & (size - 1))
            table = entry & _ADDR
        raise AssertionError("unreachable")

    def read(self, virt: int, size: int) -> bytes:
        """``size`` bytes at ``virt``, page by page (they need not be
        physically contiguous outside the direct map)."""
        if virt >= KIMAGE_BASE or self._po <= virt < self._end:
            return self.mem.read(self.phys(virt), size)
        out = bytearray()
        while size > 0:
            n = min(size, 4096 - (virt & 4095))
            out += self.mem.read(self._walk(virt), n)
            virt, size = virt + n, size - n
        return bytes(out)

    def u64(self, virt: int) -> int:
        return self.mem.u64(self.phys(virt))

    def u32(self, virt: int) -> int:
        return self.mem.u32(self.phys(virt))

    def i32(self, virt: int) -> int:
        return int(_I32.unpack(self.read(virt, 4))[0])

    def cstr(self, virt: int, limit: int = 64) -> str:
        return self.read(virt, limit).split(b"\0", 1)[0].decode("utf-8", "replace")

    def write_u64(self, virt: int, value: int) -> None:
        self.mem.write(self.phys(virt), struct.pack("<Q", value))
