"""Agent entry for ``mode: test``: import the user's test module and call the
``@ktstr_test`` function with a TestContext, inside the VM.

The module runs with the host's environment (``job["env"]``, which the host
filtered), so module-level code that reads variables behaves as it did at
collection on the host. An exception while importing it is reported with
the test file's own line.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from typing import Any

from ktstr.guest.scenario import Executor, bpf_write, session, snapshot
from ktstr.protocol.messages import RunSummary
from ktstr.spec.cpuset import CpusetSpec
from ktstr.spec.plan import resolve
from ktstr.spec.scenario import CgroupDef, Scenario
from ktstr.spec.topology import Topology


class TestBodyError(Exception):
    """The test module or body failed in a way the user must fix."""


class TestContext:
    """What a test body gets: the topology, and ways to run scenarios."""

    def __init__(self, ex: Executor, topology: Topology, duration_s: float, name: str) -> None:
        self.topology = topology
        self.duration_s = duration_s
        self.name = name
        self._ex = ex
        self.results: list[RunSummary] = []

    def execute(self, scenario: Scenario, duration: float | None = None) -> RunSummary:
        """Run ``scenario`` now (under the test's scheduler). ``duration``
        defaults to the test's declared one and may not exceed it: the host's
        watchdog holds each scenario to that length."""
        plan = resolve(scenario, self.topology, duration or self.duration_s)
        total = sum(s.hold_s for s in plan.steps)
        if total > self.duration_s + 1e-6:
            raise TestBodyError(
                f"scenario {scenario.name} runs {total:g}s but the test declares "
                f"duration={self.duration_s:g}; declare the longest scenario it runs"
            )
        summary = self._ex.run(plan)
        self.results.append(summary)
        return summary

    def cpus(self, cpuset: CpusetSpec | None = None) -> tuple[int, ...]:
        """The CPUs ``cpuset`` names on this run's topology (all without one)."""
        return cpuset.resolve(self.topology) if cpuset else tuple(range(self.topology.cpus))

    def execute_defs(self, defs: list[CgroupDef], duration: float | None = None) -> RunSummary:
        """The common case: these cgroups for the whole duration."""
        return self.execute(Scenario.of_defs(self.name, defs), duration)

    def snapshot(self, name: str) -> bool:
        """Have the host freeze the guest now and keep a snapshot ``name``
        (read it after the run: ``result.snapshots[name]``). False if the
        host refused (too many, too fast)."""
        return snapshot(self._ex.port, name) == 0

    def bpf_write(self, var: str, value: int | bool) -> None:
        """Have the host write ``value`` into the scheduler's BPF global
        ``var`` (``.bss``/``.data``/arena; a name or a path, ``qa.cnt``),
        type-checked against its BTF. Raises HostRefused (e.g. ``.rodata``)."""
        bpf_write(self._ex.port, var, value)

    def summary(self) -> RunSummary:
        return RunSummary(
            runs=len(self.results),
            elapsed_s=sum(r.elapsed_s for r in self.results),
            leftover_cgroups=[c for r in self.results for c in r.leftover_cgroups],
            leftover_workers=sum(r.leftover_workers for r in self.results),
            scheduler_died=any(r.scheduler_died for r in self.results),
        )


def _where(module_file: str, exc: BaseException) -> str:
    """``file:line`` of the innermost frame in the test module, if any."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == module_file]
    if isinstance(exc, SyntaxError) and exc.filename == module_file:
        return f"{module_file}:{exc.lineno}"
    return f"{module_file}:{frames[-1].lineno}" if frames else module_file


def _load(module_file: str, function: str) -> Any:
    spec = importlib.util.spec_from_file_location(
        f"ktstr_user_{abs(hash(module_file))}", module_file
    )
    if spec is None or spec.loader is None:
        raise TestBodyError(f"cannot import test module {module_file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise TestBodyError(
            f"importing {_where(module_file, exc)} in the guest failed: {type(exc).__name__}: {exc}"
        ) from exc
    wrapper = getattr(module, function, None)
    if wrapper is None:
        raise TestBodyError(f"{module_file} has no function {function!r} in the guest")
    return getattr(wrapper, "ktstr_guest_fn", wrapper)


def apply_env(env: dict[str, str]) -> None:
    """The host's environment for the test module (PATH stays usable)."""
    for key, value in env.items():
        os.environ[key] = value
    os.environ.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")


def run_test(port: Any, job: dict[str, Any]) -> int:
    for entry in job.get("sys_path", []):  # the host's import path (site-packages, tests)
        if entry not in sys.path:
            sys.path.append(entry)
    apply_env(dict(job.get("env", {})))
    fn = _load(job["module_file"], job["function"])
    topo = Topology.parse(job["topology"])

    def body(ex: Executor) -> RunSummary:
        ctx = TestContext(ex, topo, float(job["duration_s"]), job["function"])
        fn(ctx)
        if not ctx.results:
            raise TestBodyError(
                f"test {job['function']} ran no scenario (call ctx.execute_defs or ctx.execute)"
            )
        return ctx.summary()

    return session(port, job, job["function"], body)
