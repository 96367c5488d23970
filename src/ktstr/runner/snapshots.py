"""Snapshots of one VM: freeze the guest, read the scheduler's state through
``inspect/``, resume; and the host's writes into the scheduler's globals.

Triggers: a guest request (``ctx.snapshot(name)``, ``Op.snapshot``), the
periodic points of ``--snapshots N``, and two automatic ones for failing
runs: a breakpoint on sched_ext's disable path (QEMU's gdbstub stops the
guest there, after the exit reason is set and before the kernel tears the
scheduler down; only error exits are captured), and the monitor's
runnable-wait early warning. When the breakpoint is not available the
first SchedExit frame takes the exit snapshot instead (late: the kernel has
already torn the scheduler down, and the document says so).

The drgn attachment is the monitor's when it runs (one reader for both),
else one of our own made on first use.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ktstr.errors import VmError
from ktstr.host.gdbstub import Breakpoint, GdbError
from ktstr.host.kernel import Kernel
from ktstr.host.vm import Vm
from ktstr.inspect.attach import Attachment, Target, attach
from ktstr.inspect.globals import GlobalError, encode, locate, read_value, sections, write
from ktstr.inspect.snapshot import Snapshotter
from ktstr.protocol.messages import BpfWrite, KernAddrs
from ktstr.runner.monitoring import MonitorRun, target

log = logging.getLogger(__name__)

SCHEMA = "ktstr.snapshot/1"
#: Bytes of snapshot documents one run keeps (past it: metadata only).
MAX_KEPT = 256 << 20
#: sched_ext's disable work function (7.x, then 6.12).
DISABLE_FNS = ("scx_disable_workfn", "scx_ops_disable_workfn")
#: Exit kinds at or above this are errors (enum scx_exit_kind).
SCX_EXIT_ERROR = 1024
#: How long to wait for the monitor's attachment before attaching alone.
ATTACH_WAIT = 20.0
#: How often the host asks QEMU whether the guest sits at the breakpoint
#: unreported (a hit in the instant between a QMP ``cont`` and ``rearm``).
STATUS_CHECK = 1.0


@dataclass(slots=True)
class Taken:
    """One snapshot: what the result lists, and its document as JSON text."""

    meta: dict[str, Any]
    text: str = ""


@dataclass(slots=True)
class SnapshotRun:
    kernel: Kernel
    monitor: MonitorRun | None = None
    taken: list[Taken] = field(default_factory=list)
    writes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kept_bytes: int = 0
    exit_taken: bool = False
    wait_taken: bool = False
    #: Host seconds (since launch) the guest entered sched_ext's disable path.
    exit_at: float | None = None
    _target: Target | None = None
    _own: Attachment | None = None
    _failed: str = ""
    _bp: Breakpoint | None = None
    _next_check: float = 0.0
    _arm_pending: bool = False

    @property
    def hz(self) -> int:
        return int(self.kernel.config.get("CONFIG_HZ", "1000") or 1000)

    # -- attaching ------------------------------------------------------------
    def kern_addrs(self, vm: Vm, addrs: KernAddrs) -> None:
        """The guest said where its kernel is: snapshots can read it, and the
        exit breakpoint is set as soon as drgn is attached (``poll``), before
        the agent starts any scheduler."""
        if vm.memory_dir is None:
            self._failed = "guest RAM is not shared with the host"
        elif not (self.kernel.directory / "vmlinux").is_file():
            self._failed = f"no vmlinux in {self.kernel.directory}"
        else:
            self._target = target(self.kernel, vm.memory_dir, addrs)
            self._arm_pending = True

    def _attachment(self) -> Attachment | None:
        mon = self.monitor.monitor if self.monitor is not None else None
        if mon is not None:
            mon.attached.wait(ATTACH_WAIT)
            if mon.attachment is not None:
                return mon.attachment
        if self._own is None and self._target is not None and not self._failed:
            try:
                self._own = attach(self._target)
            except Exception as exc:
                self._failed = f"{type(exc).__name__}: {exc}"[:300]
                self.notes.append(f"snapshots read no kernel state: {self._failed}")
        return self._own

    def _snapshotter(self) -> Snapshotter | None:
        a = self._attachment()
        return Snapshotter(a.prog, self.hz) if a is not None else None

    def arm_exit(self, vm: Vm) -> None:
        """Stop the guest on sched_ext's disable path from now on."""
        sock = vm.spec.gdb_socket
        a = self._attachment() if vm.spec.gdb_stub else None
        if a is None or self._bp is not None or not sock.exists():
            return
        addr = None
        for name in DISABLE_FNS:
            with contextlib.suppress(LookupError):
                addr = int(a.prog.symbol(name).address)
                break
        if addr is None:
            self.notes.append("no sched_ext disable function: exit snapshots come late")
            return
        try:
            self._bp = Breakpoint(sock, addr)
            self._bp.arm()
        except (OSError, GdbError) as exc:
            self.notes.append(f"exit breakpoint unavailable ({exc}): exit snapshots come late")
            self._close_bp()

    # -- triggers ---------------------------------------------------------------
    def poll(self, vm: Vm, workload_s: float) -> None:
        """Between frames: arm the exit breakpoint once drgn is attached; its
        hit; the monitor's warning."""
        mon = self.monitor.monitor if self.monitor is not None else None
        if self._arm_pending and (mon is None or mon.attached.is_set()):
            self._arm_pending = False
            self.arm_exit(vm)
        bp = self._bp
        if bp is not None and not bp.hit.is_set() and time.monotonic() > self._next_check:
            self._next_check = time.monotonic() + STATUS_CHECK
            with contextlib.suppress(VmError, OSError):  # QEMU may be on its way out
                if vm.qmp is not None and vm.qmp.status() == "debug":  # a hit not reported
                    bp.mark_hit()
        if bp is not None and bp.hit.is_set():
            try:
                self._at_exit(vm, workload_s, bp.hit_at or time.monotonic())
            finally:
                bp.resume()
                self._close_bp()
        judge = self.monitor.judge if self.monitor is not None else None
        if judge is not None and not self.wait_taken and "runnable_wait" in judge.findings:
            self.wait_taken = True
            self.take(vm, "runnable_wait", workload_s=workload_s)

    def _at_exit(self, vm: Vm, workload_s: float, hit_at: float) -> None:
        snap = self._snapshotter()
        if snap is None:
            return
        state = _guarded(lambda: snap.scx_state(snap.root()))
        if state.get("exit_kind_value", 0) < SCX_EXIT_ERROR:
            return  # the scheduler unregistered normally
        self.exit_at = hit_at - vm.launched_at
        self.exit_taken = True
        self.take(vm, "scheduler_exit", workload_s=workload_s, stopped=True)

    def sched_exit_frame(self, vm: Vm, workload_s: float) -> None:
        """The guest reported the scheduler's death; no breakpoint caught it."""
        if not self.exit_taken:
            self.exit_taken = True
            self.take(vm, "scheduler_exit", workload_s=workload_s, late=True)

    # -- taking ---------------------------------------------------------------------
    def take(
        self,
        vm: Vm,
        trigger: str,
        *,
        name: str = "",
        workload_s: float = 0.0,
        request_id: int | None = None,
        memory: bool = True,
        stopped: bool = False,
        late: bool = False,
    ) -> dict[str, Any]:
        """Freeze (unless the breakpoint already did), capture, resume."""
        assert vm.qmp is not None
        index = len(self.taken) + 1
        name = _safe(name) or f"{trigger}-{index}"
        meta: dict[str, Any] = {"name": name, "trigger": trigger, "index": index}
        meta["at_s"] = round(time.monotonic() - vm.launched_at, 3)
        meta["workload_s"] = round(workload_s, 3)
        if request_id is not None:
            meta["request_id"] = request_id
        doc: dict[str, Any] = {"schema": SCHEMA, **meta, "kernel": self.kernel.version}
        if late:
            doc["late"] = "taken at the SchedExit frame: the kernel had torn the scheduler down"
        snap = self._snapshotter() if memory else None
        t = time.monotonic()
        try:
            how = "" if stopped else self._freeze(vm)
        except (VmError, OSError) as exc:  # QEMU went away: nothing to capture
            meta["error"] = f"not taken: {exc}"[:300]
            self.taken.append(Taken(meta=meta))
            return meta
        try:
            try:
                doc["registers"] = vm.qmp.registers()
            except (VmError, OSError) as exc:
                doc["registers_error"] = str(exc)[:300]
            if snap is not None:
                r = time.monotonic()
                doc.update(_guarded(snap.take))
                doc["read_s"] = round(time.monotonic() - r, 4)
        finally:
            with contextlib.suppress(VmError, OSError):
                self._thaw(vm, how)
        meta["frozen_s"] = doc["frozen_s"] = round(time.monotonic() - t, 4)
        if memory and snap is None:
            doc["error"] = meta["error"] = self._failed or "the guest's kernel was not located yet"
        self._keep(Taken(meta=_summary(meta, doc), text=json.dumps(doc, default=str)))
        return meta

    def _keep(self, taken: Taken) -> None:
        if self.kept_bytes + len(taken.text) > MAX_KEPT:
            taken.meta["dropped"] = f"over the run's {MAX_KEPT >> 20} MiB of snapshots"
            taken.text = ""
        self.kept_bytes += len(taken.text)
        self.taken.append(taken)

    # -- writes ---------------------------------------------------------------------
    def write(self, vm: Vm, req: BpfWrite) -> tuple[int, str]:
        """(errno, message) of writing ``req.value`` into ``req.var``; the guest
        is frozen for the write itself, so it never sees a torn value."""
        assert vm.qmp is not None
        snap = self._snapshotter()
        rel = round(time.monotonic() - vm.launched_at, 3)
        entry: dict[str, Any] = {"at_s": rel, "var": req.var, "value": req.value}
        try:
            if snap is None:
                raise GlobalError(errno.ENODEV, "the host cannot read guest memory")
            loc = locate(sections(snap), req.var)
            data = encode(loc, req.value)
            reader = self._attachment()
            assert reader is not None
            how = self._freeze(vm)
            try:
                entry["old"] = read_value(snap, loc)
                write(reader.reader, loc.address, data)
            finally:
                self._thaw(vm, how)
            entry.update(section=loc.section.name, type=loc.type_name, status=0)
            self.writes.append(entry)
            return 0, ""
        except GlobalError as exc:
            entry.update(status=exc.status, error=str(exc))
        except Exception as exc:  # the guest's structures did not read back: refuse, go on
            log.debug("BPF write failed", exc_info=True)
            entry.update(status=errno.EIO, error=f"{type(exc).__name__}: {exc}"[:300])
        self.writes.append(entry)
        return int(entry["status"]), str(entry["error"])

    def _freeze(self, vm: Vm) -> str:
        """Stop the guest: through the gdbstub while it is attached (see
        host/gdbstub.py), else QMP. Returns which, for ``_thaw``."""
        assert vm.qmp is not None
        if self._bp is not None and self._bp.freeze():
            return "gdb"
        vm.qmp.stop()
        return "qmp"

    def _thaw(self, vm: Vm, how: str) -> None:
        assert vm.qmp is not None
        if how == "gdb" and self._bp is not None:
            self._bp.thaw()
        elif how == "qmp":
            vm.qmp.cont()

    def close(self) -> None:
        self._close_bp()
        if self._own is not None:
            self._own.close()
            self._own = None

    def _close_bp(self) -> None:
        if self._bp is not None:
            self._bp.close()
            self._bp = None


def _guarded(fn: Any) -> dict[str, Any]:
    try:
        return dict(fn())
    except Exception as exc:  # a half-read guest: keep what the registers say
        log.debug("snapshot read failed", exc_info=True)
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def _summary(meta: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """What result.json lists of a snapshot: its trigger, time and the exit."""
    out = dict(meta)
    scx = doc.get("scx") or {}
    for key in ("enable_state", "exit_kind", "exit_reason", "exit_msg"):
        if scx.get(key):
            out[key] = scx[key]
    if "late" in doc:
        out["late"] = True
    if "error" in doc:
        out["error"] = doc["error"]
    elif doc.get("errors"):  # parts that could not be read; the rest was
        out["error"] = "; ".join(f"{k}: {v}" for k, v in doc["errors"].items())[:500]
    out["maps"] = len(doc.get("maps") or [])
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", name)[:64]


def file_name(meta: dict[str, Any]) -> str:
    return f"snapshot-{meta['index']:02d}-{_safe(meta['name']).replace(':', '_')}.json"


def write_files(taken: list[Taken], directory: Path) -> None:
    """One JSON file per snapshot; each meta gets its ``file``."""
    from ktstr.host.results import write_private

    for t in taken:
        if t.text:
            name = file_name(t.meta)
            write_private(directory / name, t.text)
            t.meta["file"] = name
