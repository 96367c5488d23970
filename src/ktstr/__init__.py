"""ktstr: test Linux schedulers in real kernels at exact CPU topologies."""

from ktstr.spec.topology import PRESETS, Topology

__version__ = "0.1.0"
__all__ = ["PRESETS", "Topology", "__version__"]
