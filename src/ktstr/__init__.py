"""ktstr: test Linux schedulers in real kernels at exact CPU topologies.

Re-exports are lazy: the guest agent imports ``ktstr.protocol`` as PID 1
under emulation, where every avoided import is boot time.
"""

from __future__ import annotations

import time as _time

#: When the package was first imported, in seconds since the kernel started:
#: in the guest, where Python's own start ends and ktstr's imports begin.
IMPORTED_AT = _time.clock_gettime(_time.CLOCK_BOOTTIME)

import os as _os  # noqa: E402

if _os.environ.get("KTSTR_CODE_CACHE"):  # the guest: see ktstr.codecache
    from ktstr.codecache import install as _install

    _install(_os.environ["KTSTR_CODE_CACHE"])

from typing import TYPE_CHECKING, Any  # noqa: E402

__version__ = "0.1.0"

_EXPORTS = {
    "Topology": "ktstr.spec.topology",
    "PRESETS": "ktstr.spec.topology",
    "ktstr_test": "ktstr.authoring",
    "CgroupDef": "ktstr.spec.scenario",
    "CpusetSpec": "ktstr.spec.cpuset",
    "Size": "ktstr.spec.cpuset",
    "Op": "ktstr.spec.scenario",
    "Step": "ktstr.spec.scenario",
    "HoldSpec": "ktstr.spec.scenario",
    "Scenario": "ktstr.spec.scenario",
    "Work": "ktstr.spec.work",
    "SchedPolicy": "ktstr.spec.work",
    "Affinity": "ktstr.spec.work",
    "AffinityMode": "ktstr.spec.work",
    "Scheduler": "ktstr.spec.scheduler",
    "Flag": "ktstr.spec.scheduler",
    "Thresholds": "ktstr.spec.checks",
    "HostRefused": "ktstr.errors",
    "Snapshot": "ktstr.evaluate.snapshots",
    "Payload": "ktstr.spec.payload",
    "Until": "ktstr.spec.payload",
    "PayloadGate": "ktstr.spec.checks",
    "payload_parser": "ktstr.evaluate.payloads",
}

if TYPE_CHECKING:
    from ktstr.authoring import ktstr_test
    from ktstr.errors import HostRefused
    from ktstr.evaluate.payloads import payload_parser
    from ktstr.evaluate.snapshots import Snapshot
    from ktstr.spec.checks import PayloadGate, Thresholds
    from ktstr.spec.cpuset import CpusetSpec, Size
    from ktstr.spec.payload import Payload, Until
    from ktstr.spec.scenario import CgroupDef, HoldSpec, Op, Scenario, Step
    from ktstr.spec.scheduler import Flag, Scheduler
    from ktstr.spec.topology import PRESETS, Topology
    from ktstr.spec.work import Affinity, AffinityMode, SchedPolicy, Work


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ktstr' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "PRESETS",
    "Affinity",
    "AffinityMode",
    "CgroupDef",
    "CpusetSpec",
    "Flag",
    "HoldSpec",
    "HostRefused",
    "Op",
    "Payload",
    "PayloadGate",
    "Scenario",
    "SchedPolicy",
    "Scheduler",
    "Size",
    "Snapshot",
    "Step",
    "Thresholds",
    "Topology",
    "Until",
    "Work",
    "__version__",
    "ktstr_test",
    "payload_parser",
]
