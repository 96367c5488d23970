"""``@ktstr_test``: a scheduler test as a few lines of data.

The decorated function runs *inside the VM*: the host boots one VM per test
case and the guest agent imports the test module and calls the function with
a context (``guest/testctx.py``) whose ``execute_defs`` / ``execute`` run
scenarios. What the function returns is ignored; the verdict (docs/results.md)
decides. This module imports no pytest: the guest imports it too.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ktstr.errors import ConfigError
from ktstr.spec.checks import Thresholds
from ktstr.spec.gauntlet import Constraints
from ktstr.spec.scheduler import Scheduler
from ktstr.spec.topology import Topology

DEFAULT_SHAPE = {"numa": 1, "llcs": 1, "cores": 2, "threads": 1}
_THRESHOLD_NAMES = {f.name for f in dataclasses.fields(Thresholds)}
_CONSTRAINT_NAMES = {f.name for f in dataclasses.fields(Constraints)}


@dataclass(frozen=True, slots=True, kw_only=True)
class TestSpec:
    name: str
    module_file: str
    scheduler: Scheduler | None
    topology: Topology
    duration_s: float
    thresholds: Thresholds = field(default_factory=Thresholds)
    constraints: Constraints = field(default_factory=Constraints)
    memory_mb: int = 0
    #: Longest the whole test body may take, from SysReady: however many
    #: scenarios it runs, the host ends the run after this.
    timeout_s: float = 300.0
    #: Host environment variables the guest does not get (besides the defaults).
    env_exclude: tuple[str, ...] = ()
    #: Called on the host after a passing run with its ``RunResult``: asserts
    #: on scheduler state (``result.snapshots["name"].var(...)``).
    after: Callable[[Any], None] | None = None


def _topology(
    topology: str | Topology | None, shape: dict[str, int | None], scheduler: Scheduler | None
) -> Topology:
    if topology is not None:
        return topology if isinstance(topology, Topology) else Topology.parse(topology)
    if any(v is not None for v in shape.values()):
        s = {k: (v if v is not None else DEFAULT_SHAPE[k]) for k, v in shape.items()}
        return Topology(
            numa_nodes=s["numa"],
            llcs=s["llcs"],
            cores_per_llc=s["cores"],
            threads_per_core=s["threads"],
        )
    if scheduler is not None and scheduler.topology:
        return Topology.parse(scheduler.topology)
    return Topology(numa_nodes=1, llcs=1, cores_per_llc=2, threads_per_core=1)


def ktstr_test(
    *,
    scheduler: Scheduler | None = None,
    topology: str | Topology | None = None,
    numa: int | None = None,
    llcs: int | None = None,
    cores: int | None = None,
    threads: int | None = None,
    duration: float = 2.0,
    memory_mb: int = 0,
    timeout: float = 300.0,
    env_exclude: tuple[str, ...] | list[str] = (),
    after: Callable[[Any], None] | None = None,
    **options: Any,
) -> Callable[[Callable[..., Any]], Callable[..., None]]:
    """Declare a ktstr test. Extra keyword arguments are threshold overrides
    (``max_gap_ms=500``, ``isolation=False``) or gauntlet constraints
    (``min_llcs=2``, ``requires_smt=True``, ``required_flags=["llc"]``).

    ``duration`` is the default and the longest length of each scenario the
    body runs; ``timeout`` bounds the whole body (default 300 s after the
    guest is up). The body runs with the host's environment, minus
    ``env_exclude`` and ``$KTSTR_ENV_EXCLUDE`` (comma-separated)."""
    unknown = sorted(set(options) - _THRESHOLD_NAMES - _CONSTRAINT_NAMES)
    if unknown:
        raise ConfigError(
            f"ktstr_test: unknown option(s) {unknown}; thresholds are "
            f"{sorted(_THRESHOLD_NAMES)}, constraints {sorted(_CONSTRAINT_NAMES)}"
        )
    thresholds = Thresholds(**{k: v for k, v in options.items() if k in _THRESHOLD_NAMES})
    cons: dict[str, Any] = {
        k: (tuple(v) if isinstance(v, list) else v)
        for k, v in options.items()
        if k in _CONSTRAINT_NAMES
    }
    constraints = Constraints(**cons)
    for what, value in (("duration", duration), ("timeout", timeout)):
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"ktstr_test: {what} must be a finite number > 0, got {value}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., None]:
        spec = TestSpec(
            name=fn.__name__,
            module_file=inspect.getfile(fn),
            scheduler=scheduler,
            topology=_topology(
                topology,
                {"numa": numa, "llcs": llcs, "cores": cores, "threads": threads},
                scheduler,
            ),
            duration_s=duration,
            thresholds=thresholds,
            constraints=constraints,
            memory_mb=memory_mb,
            timeout_s=timeout,
            env_exclude=tuple(env_exclude),
            after=after,
        )

        def host_test(ktstr_case: Any) -> None:
            from ktstr.pytest_plugin import run_case  # host side only

            run_case(spec, ktstr_case)

        host_test.__name__ = fn.__name__
        host_test.__qualname__ = fn.__qualname__
        host_test.__module__ = fn.__module__
        host_test.__doc__ = fn.__doc__
        host_test.ktstr_spec = spec  # type: ignore[attr-defined]
        host_test.ktstr_guest_fn = fn  # type: ignore[attr-defined]
        return host_test

    return decorate
