"""Guest physical memory, read live from the VM's shared RAM files.

QEMU backs each NUMA node's RAM with a file (``memory-backend-file,
share=on``); the host maps those files read-only, so a read is a memory
copy: no QMP round trip, no guest stop. ``GuestMemory`` translates guest
physical addresses to (file, offset) across the nodes and the PC memory
map's split around the 32-bit PCI hole.

Layout of the ``pc`` machine (QEMU's ``pc_piix``): the nodes' backends are
concatenated, node 0 first, into one RAM of ``total`` bytes. The first
``below_4g`` bytes appear at guest physical 0, the rest at 4 GiB. With the
default ``max-ram-below-4g`` of 3.5 GiB, ``below_4g`` is all of RAM when it
fits under 3.5 GiB, else 3 GiB (gigabyte aligned).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

GiB = 1 << 30
#: QEMU's default max-ram-below-4g, and the gigabyte-aligned split above it.
_LOWMEM_DEFAULT = 0xE0000000
_LOWMEM_ALIGNED = 0xC0000000
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class FaultError(Exception):
    """A guest physical address outside guest RAM."""


class PhysMemory(Protocol):
    """What the raw readers need of guest physical memory."""

    def read(self, phys: int, size: int) -> bytes: ...
    def u64(self, phys: int) -> int: ...
    def u32(self, phys: int) -> int: ...
    def write(self, phys: int, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Region:
    """``size`` bytes at guest physical ``phys``: RAM offset ``ram``."""

    phys: int
    size: int
    ram: int


def pc_regions(total: int) -> tuple[Region, ...]:
    """Where RAM of ``total`` bytes appears in the guest's physical space."""
    below = total if total < _LOWMEM_DEFAULT else _LOWMEM_ALIGNED
    regions = [Region(0, below, 0)]
    if total > below:
        regions.append(Region(4 * GiB, total - below, below))
    return tuple(regions)


class GuestMemory:
    """Read-only maps of a VM's RAM files (node order), with a separate,
    explicit path for the few host writes ktstr makes."""

    def __init__(self, files: list[Path]) -> None:
        if not files:
            raise ValueError("no guest memory files")
        self._files = [f.open("rb") for f in files]
        self._maps = [mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) for f in self._files]
        self._starts: list[int] = []
        total = 0
        for m in self._maps:
            self._starts.append(total)
            total += len(m)
        self.total = total
        self.regions = pc_regions(total)
        self.paths = list(files)

    def _ram(self, phys: int) -> int:
        for r in self.regions:
            if r.phys <= phys < r.phys + r.size:
                return r.ram + (phys - r.phys)
        raise FaultError(f"guest physical {phys:#x} is not RAM")

    def _locate(self, ram: int) -> tuple[mmap.mmap, int, int]:
        """(map, offset in it, bytes left in it) for RAM offset ``ram``."""
        for start, m in zip(reversed(self._starts), reversed(self._maps), strict=True):
            if ram >= start:
                return m, ram - start, len(m) - (ram - start)
        raise FaultError(f"RAM offset {ram:#x} out of range")

    def read(self, phys: int, size: int) -> bytes:
        """``size`` bytes at guest physical ``phys`` (may span nodes)."""
        out = bytearray()
        while size > 0:
            m, off, left = self._locate(self._ram(phys))
            n = min(size, left)
            out += m[off : off + n]
            phys, size = phys + n, size - n
        return bytes(out)

    def u64(self, phys: int) -> int:
        m, off, left = self._locate(self._ram(phys))
        if left >= 8:
            return int(_U64.unpack_from(m, off)[0])
        return int(_U64.unpack(self.read(phys, 8))[0])

    def u32(self, phys: int) -> int:
        m, off, left = self._locate(self._ram(phys))
        if left >= 4:
            return int(_U32.unpack_from(m, off)[0])
        return int(_U32.unpack(self.read(phys, 4))[0])

    def write(self, phys: int, data: bytes) -> None:
        """Write into guest RAM (the guest sees it at once): only for the
        few knobs ktstr sets on purpose, e.g. the sched_ext watchdog."""
        ram = self._ram(phys)
        for i, start in reversed(list(enumerate(self._starts))):
            if ram >= start:
                fd = os.open(self.paths[i], os.O_WRONLY)
                try:
                    os.pwrite(fd, data, ram - start)
                finally:
                    os.close(fd)
                return

    def close(self) -> None:
        for m in self._maps:
            m.close()
        for f in self._files:
            f.close()


PAGE = 4096


class PageImage:
    """Guest physical pages held in memory: a capture of the pages a reader
    touched (``Recorder``), replayed without a VM. Missing pages fault."""

    def __init__(self, pages: dict[int, bytes]) -> None:
        self.pages = pages

    def read(self, phys: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            page, off = divmod(phys, PAGE)
            if page not in self.pages:
                raise FaultError(f"guest physical {phys:#x} is not in the image")
            n = min(size, PAGE - off)
            out += self.pages[page][off : off + n]
            phys, size = phys + n, size - n
        return bytes(out)

    def u64(self, phys: int) -> int:
        return int(_U64.unpack(self.read(phys, 8))[0])

    def u32(self, phys: int) -> int:
        return int(_U32.unpack(self.read(phys, 4))[0])

    def write(self, phys: int, data: bytes) -> None:
        page, off = divmod(phys, PAGE)
        buf = bytearray(self.pages[page])
        buf[off : off + len(data)] = data
        self.pages[page] = bytes(buf)


class Recorder:
    """Wraps guest memory and keeps a copy of every page read through it."""

    def __init__(self, mem: PhysMemory) -> None:
        self.mem = mem
        self.pages: dict[int, bytes] = {}

    def _touch(self, phys: int, size: int) -> None:
        for page in range(phys // PAGE, (phys + max(size, 1) - 1) // PAGE + 1):
            if page not in self.pages:
                self.pages[page] = self.mem.read(page * PAGE, PAGE)

    def read(self, phys: int, size: int) -> bytes:
        self._touch(phys, size)
        return self.mem.read(phys, size)

    def u64(self, phys: int) -> int:
        self._touch(phys, 8)
        return self.mem.u64(phys)

    def u32(self, phys: int) -> int:
        self._touch(phys, 4)
        return self.mem.u32(phys)

    def write(self, phys: int, data: bytes) -> None:
        raise FaultError("a recording is read-only")
