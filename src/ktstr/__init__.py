"""ktstr: test Linux schedulers in real kernels at exact CPU topologies.

Re-exports are lazy: the guest agent imports ``ktstr.protocol`` as PID 1
under emulation, where every avoided import is boot time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Topology": "ktstr.spec.topology",
    "PRESETS": "ktstr.spec.topology",
}

if TYPE_CHECKING:
    from ktstr.spec.topology import PRESETS, Topology


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ktstr' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = ["PRESETS", "Topology", "__version__"]
