"""Agent entry for ``mode: test``: import the user's test module and call the
``@ktstr_test`` function with a TestContext, inside the VM."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from ktstr.guest.scenario import Executor, session
from ktstr.spec.scenario import CgroupDef, Scenario, resolve
from ktstr.spec.topology import Topology


class TestContext:
    """What a test body gets: the topology, and ways to run scenarios."""

    def __init__(self, ex: Executor, topology: Topology, duration_s: float, name: str) -> None:
        self.topology = topology
        self.duration_s = duration_s
        self.name = name
        self._ex = ex
        self.results: list[dict[str, Any]] = []

    def execute(self, scenario: Scenario, duration: float | None = None) -> dict[str, Any]:
        """Run ``scenario`` now (under the test's scheduler); returns a summary."""
        plan = resolve(scenario, self.topology, duration or self.duration_s)
        summary = self._ex.run(plan)
        self.results.append(summary)
        return summary

    def execute_defs(self, defs: list[CgroupDef], duration: float | None = None) -> dict[str, Any]:
        """The common case: these cgroups for the whole duration."""
        return self.execute(Scenario.of_defs(self.name, defs), duration)

    def summary(self) -> dict[str, Any]:
        return {
            "runs": len(self.results),
            "workers": sum(r["workers"] for r in self.results),
            "leftover_cgroups": [c for r in self.results for c in r["leftover_cgroups"]],
            "leftover_workers": sum(r["leftover_workers"] for r in self.results),
            "scheduler_died": any(r["scheduler_died"] for r in self.results),
            "elapsed_s": sum(r["elapsed_s"] for r in self.results),
        }


def _load(module_file: str, function: str) -> Any:
    spec = importlib.util.spec_from_file_location(
        f"ktstr_user_{abs(hash(module_file))}", module_file
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import test module {module_file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    wrapper = getattr(module, function)
    return getattr(wrapper, "ktstr_guest_fn", wrapper)


def run_test(port: Any, job: dict[str, Any]) -> int:
    for entry in job.get("sys_path", []):  # the host's import path (site-packages, tests)
        if entry not in sys.path:
            sys.path.append(entry)
    fn = _load(job["module_file"], job["function"])
    topo = Topology.parse(job["topology"])

    def body(ex: Executor) -> dict[str, Any]:
        ctx = TestContext(ex, topo, float(job["duration_s"]), job["function"])
        fn(ctx)
        if not ctx.results:
            raise RuntimeError(
                f"test {job['function']} ran no scenario (call ctx.execute_defs or ctx.execute)"
            )
        return ctx.summary()

    return session(port, job, job["function"], body)
