"""One attachment to a running guest's kernel, shared by the monitor and the
snapshots: the RAM files mapped, vmcoreinfo read and checked against the
booted kernel, a drgn Program over them, and the resolved ``Layout`` with
its raw ``Reader``. The monitor thread only uses the Reader after attaching;
the drgn Program is used by one thread at a time (the runner's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ktstr.inspect.layout import Layout, resolve
from ktstr.inspect.memory import GuestMemory
from ktstr.inspect.program import (
    InspectError,
    VmcoreInfo,
    open_program,
    read_vmcoreinfo,
    release_matches,
)
from ktstr.inspect.reader import Reader


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """Where a guest's kernel is and what it should be."""

    files: tuple[Path, ...]  # the VM's RAM files, node order
    vmlinux: Path
    version: str  # the booted kernel's, to check vmcoreinfo against
    config_hz: int  # CONFIG_HZ
    vmcoreinfo: tuple[int, int]  # guest physical address and size (from KernAddrs)


@dataclass(slots=True)
class Attachment:
    mem: GuestMemory
    info: VmcoreInfo
    prog: Any  # drgn.Program
    layout: Layout
    reader: Reader

    def close(self) -> None:
        self.mem.close()


def attach(t: Target) -> Attachment:
    mem = GuestMemory(list(t.files))
    try:
        info = read_vmcoreinfo(mem, *t.vmcoreinfo)
        if not release_matches(info.release, t.version):
            raise InspectError(
                f"the guest runs {info.release}, not the kernel {t.version} that was booted"
            )
        prog = open_program(mem, info, t.vmlinux)
        phys_end = max(r.phys + r.size for r in mem.regions)
        layout = resolve(prog, info, t.config_hz, phys_end)
    except BaseException:
        mem.close()
        raise
    return Attachment(mem=mem, info=info, prog=prog, layout=layout, reader=Reader(mem, layout))
