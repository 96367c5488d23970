"""cgroup v2 owner for one run: create, cpuset, move, remove; always undone.

Everything lives under ``/sys/fs/cgroup/ktstr``. cgroup v2 forbids processes
in a cgroup that hands controllers to its children, so a cgroup with both
children and workers keeps its workers in a ``_workers`` leaf.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

from ktstr.spec.scenario import CPU_MAX_PERIOD_US

CGROUP_ROOT = Path("/sys/fs/cgroup")
WORKER_LEAF = "_workers"


def _write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


class CgroupTree:
    def __init__(self, root: Path = CGROUP_ROOT, name: str = "ktstr") -> None:
        self.base = root / name
        self._root = root
        self._made: list[Path] = []
        self._has_children: set[str] = set()

    def __enter__(self) -> CgroupTree:
        if not (self._root / "cgroup.controllers").exists():
            raise RuntimeError(f"no cgroup v2 hierarchy at {self._root}")
        self._enable(self._root)
        self.base.mkdir(exist_ok=True)
        self._made.append(self.base)
        self._enable(self.base)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _enable(self, cg: Path) -> None:
        available = (cg / "cgroup.controllers").read_text().split()
        wanted = [c for c in ("cpuset", "cpu") if c in available]
        if wanted:
            _write(cg / "cgroup.subtree_control", " ".join("+" + c for c in wanted))

    def path(self, name: str) -> Path:
        return self.base / name

    def create(self, name: str, cpus: tuple[int, ...] | None, *, has_children: bool) -> None:
        """Create ``name`` (its parent must exist); with children, also its
        controllers for them."""
        cg = self.path(name)
        cg.mkdir()
        self._made.append(cg)
        if has_children:
            self._enable(cg)
            self._has_children.add(name)
        self.set_cpus(name, cpus)

    def procs_dir(self, name: str) -> Path:
        """Where ``name``'s own workers live."""
        if name in self._has_children:
            leaf = self.path(name) / WORKER_LEAF
            if not leaf.exists():
                leaf.mkdir()
                self._made.append(leaf)
            return leaf
        return self.path(name)

    def set_weight(self, name: str, weight: int) -> None:
        """``cpu.weight`` of ``name`` (the cpu controller must be enabled)."""
        _write(self.path(name) / "cpu.weight", str(weight))

    def set_cpu_max(self, name: str, milli_cpus: int) -> None:
        """``cpu.max`` of ``name``: milli-CPUs per 100 ms period, 0 = no limit."""
        path = self.path(name) / "cpu.max"
        if not path.exists():
            raise OSError(errno.ENOENT, "no cpu.max: the kernel lacks CONFIG_CFS_BANDWIDTH", path)
        quota = "max" if milli_cpus <= 0 else str(milli_cpus * CPU_MAX_PERIOD_US // 1000)
        _write(path, f"{quota} {CPU_MAX_PERIOD_US}")

    def set_cpus(self, name: str, cpus: tuple[int, ...] | None) -> None:
        text = "" if cpus is None else ",".join(map(str, cpus))
        cpuset = self.path(name) / "cpuset.cpus"
        if not cpuset.exists():
            return
        try:
            _write(cpuset, text if text else "\n")
        except OSError as exc:
            # Linux 6.12 refuses to empty the cpuset of a populated cgroup
            # (ENOSPC); inheriting is then spelled as the parent's CPUs.
            if text or exc.errno != errno.ENOSPC:
                raise
            parent = (cpuset.parent.parent / "cpuset.cpus.effective").read_text().strip()
            _write(cpuset, parent)

    def cpus(self, name: str) -> str:
        f = self.path(name) / "cpuset.cpus.effective"
        return f.read_text().strip() if f.exists() else ""

    def pids(self, name: str) -> list[int]:
        """Every process in ``name``'s subtree."""
        out: list[int] = []
        for dirpath, _dirs, files in os.walk(self.path(name)):
            if "cgroup.procs" in files:
                text = Path(dirpath, "cgroup.procs").read_text()
                out += [int(p) for p in text.split()]
        return out

    def move_pid(self, pid: int, dst: str) -> int:
        """Move one task into ``dst``: 1 if it moved, 0 if it was gone."""
        try:
            _write(self.procs_dir(dst) / "cgroup.procs", str(pid))
        except (ProcessLookupError, OSError):
            return 0
        return 1

    def move_all(self, src: str, dst: str) -> int:
        target = self.procs_dir(dst) / "cgroup.procs"
        moved = 0
        for pid in self.pids(src):
            with contextlib.suppress(ProcessLookupError, OSError):
                _write(target, str(pid))
                moved += 1
        return moved

    def remove(self, name: str) -> None:
        """Remove ``name`` and its subtree (its processes must be gone)."""
        top = self.path(name)
        for cg in sorted(
            (p for p in self._made if p == top or top in p.parents),
            key=lambda p: len(p.parts),
            reverse=True,
        ):
            self._rmdir(cg)
            self._made.remove(cg)

    def _rmdir(self, cg: Path) -> None:
        for _ in range(50):  # a just-killed task may linger a moment
            try:
                cg.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                kill = cg / "cgroup.kill"
                if kill.exists():
                    with contextlib.suppress(OSError):
                        _write(kill, "1")
                time.sleep(0.02)
        cg.rmdir()

    def close(self) -> None:
        """Kill whatever is left and remove every cgroup made. Idempotent."""
        for cg in sorted(self._made, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                self._rmdir(cg)
        self._made.clear()

    def leftovers(self) -> list[str]:
        """Cgroups still present under the base (for the no-leftovers check)."""
        if not self.base.exists():
            return []
        return [str(p) for p in self.base.rglob("*") if p.is_dir()]
