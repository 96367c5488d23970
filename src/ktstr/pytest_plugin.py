"""pytest plugin (entry point ``pytest11``): ``@ktstr_test`` functions become
VM test cases, one VM each, optionally expanded into the gauntlet.

Options: ``--gauntlet`` (topology presets x flag profiles), ``--pairwise``
(a covering array instead of every flag combination), ``--budget SECONDS``
(the subset covering the most presets and flags within that time),
``--ktstr-kernel``, ``--ktstr-accel``, ``--ktstr-results``,
``--ktstr-vcpu-budget``, ``--ktstr-allow-skip``.

A session that collected VM tests on a host without QEMU or a sched_ext
kernel fails at once with one line saying what is missing (CI must not go
green having run nothing); ``--ktstr-allow-skip`` (or ``KTSTR_ALLOW_SKIP=1``)
skips those tests instead, each naming what the host lacks.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from ktstr.authoring import TestSpec
from ktstr.cli.args import fraction
from ktstr.errors import KtstrError
from ktstr.evaluate.account import Expectation
from ktstr.evaluate.snapshots import Snapshot, snapshots_of
from ktstr.evaluate.verdict import Status
from ktstr.host import kconfig
from ktstr.host.kernel import Kernel, resolve_kernel
from ktstr.host.qemu import find_qemu
from ktstr.host.results import measured_costs, new_run_dir, results_root
from ktstr.host.signals import terminate_like_interrupt
from ktstr.host.slots import vcpu_slots
from ktstr.report import (
    RunRecord,
    Trial,
    over_flake_rate,
    pass_rate_line,
    phase_spent,
    phase_totals,
    to_text,
)
from ktstr.runner import (
    BootRequest,
    SchedulerRun,
    execute_job,
    scheduler_binary,
    with_scheduler,
)
from ktstr.runner.judge import ATTACH_TIMEOUT, READY_SLACK
from ktstr.spec.checks import defaults_for, merge
from ktstr.spec.gauntlet import Case, expand, select_for_budget, static_estimate
from ktstr.spec.scheduler import Profile, Scheduler

_state: dict[str, Any] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("ktstr", "ktstr scheduler tests")
    g.addoption(
        "--gauntlet",
        action="store_true",
        help="expand @ktstr_test across topology presets x flag profiles",
    )
    g.addoption(
        "--pairwise",
        action="store_true",
        help="gauntlet: a pairwise covering array of flag profiles",
    )
    g.addoption(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="gauntlet: run the subset covering most presets/flags in this time",
    )
    g.addoption(
        "--ktstr-kernel",
        action="append",
        default=[],
        metavar="KERNEL",
        help="kernel; repeat for a kernel matrix (default: $KTSTR_KERNEL, then the newest cached)",
    )
    g.addoption(
        "--ktstr-repeat",
        type=int,
        default=1,
        metavar="N",
        help="run every case N times (N VMs): pass rates with 95%% intervals, not retries",
    )
    g.addoption(
        "--ktstr-accept-flake-rate",
        type=fraction,
        default=0.0,
        metavar="R",
        help="with --ktstr-repeat: pass when every failing case failed at most R (0..1) "
        "of its runs",
    )
    g.addoption("--ktstr-accel", choices=("auto", "kvm", "tcg"), default="auto")
    g.addoption("--ktstr-results", metavar="DIR", help="where sidecars and evidence go")
    g.addoption(
        "--ktstr-vcpu-budget",
        type=int,
        metavar="N",
        help="max concurrent vCPUs across all workers (default 4 x host CPUs)",
    )
    g.addoption(
        "--ktstr-no-monitor",
        action="store_true",
        help="do not watch the guest kernel from the host during tests",
    )
    g.addoption(
        "--ktstr-allow-skip",
        action="store_true",
        help="skip VM tests on a host without QEMU or a kernel (default: fail the session)",
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Where the VMs' time went; with --ktstr-repeat, each case's pass rate
    and its failing checks."""
    spent: list[dict[str, float]] = _state.get("spent_all", [])
    if len(spent) > 1:
        terminalreporter.write_line("ktstr " + phase_totals(spent))
    trials: dict[str, list[Trial]] = _state.get("trials", {})
    if not trials:
        return
    terminalreporter.section("ktstr pass rates (95% Wilson interval)")
    for name, runs in sorted(trials.items()):
        terminalreporter.write_line(pass_rate_line(name, runs))
    if "flake_verdict" in _state:
        terminalreporter.write_line(_state["flake_verdict"])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    """A repeated case's trial travels on its report (so that under xdist
    the controller, which prints pass rates, sees every worker's trials)."""
    outcome = yield
    trial = _state.pop("trial", None)
    spent = _state.pop("pending_spent", None)
    if call.when == "call" and trial is not None:
        outcome.get_result().user_properties.append(("ktstr_trial", trial))
    if call.when == "call" and spent:
        outcome.get_result().user_properties.append(("ktstr_phases", spent))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    spent: Any = dict(report.user_properties).get("ktstr_phases")
    if isinstance(spent, dict):
        _state.setdefault("spent_all", []).append(spent)
    trial: Any = dict(report.user_properties).get("ktstr_trial")
    if trial is not None:
        name, failed, checks = trial
        runs = _state.setdefault("trials", {}).setdefault(str(name), [])
        runs.append(Trial(bool(failed), tuple(str(c) for c in checks)))
    elif report.failed:
        _state["other_failures"] = _state.get("other_failures", 0) + 1


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """--ktstr-accept-flake-rate R: a session whose only failures are
    repeated cases failing at most R of their runs passes."""
    rate = session.config.getoption("ktstr_accept_flake_rate")
    if exitstatus != pytest.ExitCode.TESTS_FAILED or not rate or _state.get("other_failures"):
        return
    trials: dict[str, list[Trial]] = _state.get("trials", {})
    over = over_flake_rate(trials, rate)
    if over:
        _state["flake_verdict"] = f"over the accepted flake rate {rate:.0%}: {'; '.join(over)}"
        return
    _state["flake_verdict"] = f"every failure is within the accepted flake rate {rate:.0%}"
    session.exitstatus = pytest.ExitCode.OK


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ktstr: a ktstr VM test (added by @ktstr_test)")
    _state["config"] = config
    terminate_like_interrupt()  # SIGTERM cleans up VMs like Ctrl-C


def vm_host_problem(config: pytest.Config) -> str | None:
    """What this host lacks to boot ktstr VMs, or None."""
    if "problem" not in _state:
        problem = None
        try:
            find_qemu()
            _state["kernels"] = labelled(
                [resolve_kernel(k) for k in config.getoption("ktstr_kernel") or [None]]
            )
        except KtstrError as exc:
            problem = f"host lacks what VM tests need: {exc}" + (
                f" ({exc.hint})" if exc.hint else ""
            )
        _state["problem"] = problem
    return _state["problem"]  # type: ignore[no-any-return]


def require_vm_host(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fail the session (or, when allowed, skip ``items``) on a host that
    cannot boot VMs. Also used by projects for their own VM-marked tests."""
    if not items:
        return
    problem = vm_host_problem(config)
    if problem is None:
        return
    if config.getoption("ktstr_allow_skip") or os.environ.get("KTSTR_ALLOW_SKIP") == "1":
        for item in items:
            item.add_marker(pytest.mark.skip(reason=problem))
        return
    pytest.exit(
        f"ktstr: {len(items)} VM test(s) collected but {problem}; run ./scripts/setup, "
        "or pass --ktstr-allow-skip to skip them",
        returncode=2,
    )


def labelled(kernels: list[Kernel]) -> dict[str, Kernel]:
    """Kernels by label: the version, or the cache entry where two share one."""
    versions = [k.version for k in kernels]
    return {(k.version if versions.count(k.version) == 1 else k.directory.name): k for k in kernels}


def _kernels(config: pytest.Config) -> dict[str, Kernel]:
    """The matrix's kernels (none resolvable: a placeholder, so collection
    still yields the tests that then skip or fail, saying why)."""
    if vm_host_problem(config) is not None:
        return {}
    kernels = _state["kernels"]
    assert isinstance(kernels, dict)
    return kernels


def _kernel(label: str) -> Kernel:
    problem = vm_host_problem(_state["config"])
    if problem is not None:
        pytest.skip(problem)
    kernels = _kernels(_state["config"])
    return kernels[label] if label in kernels else next(iter(kernels.values()))


def _cases(spec: TestSpec, config: pytest.Config) -> list[Case]:
    kernels: dict[str, Kernel | None] = {**_kernels(config)} or {"": None}
    out: list[Case] = []
    for label, k in kernels.items():
        if k is not None and spec.scheduler is not None and not spec.scheduler.runs_on(k.version):
            continue
        name = label if len(kernels) > 1 or config.getoption("gauntlet") else ""
        if config.getoption("gauntlet"):
            out += expand(
                spec.name,
                spec.constraints,
                spec.scheduler,
                pairwise=config.getoption("pairwise"),
                max_cpus=k.nr_cpus if k is not None else None,
                kernel=name,
            )
        else:
            out.append(Case(test=spec.name, preset=spec.topology.name, topology=spec.topology,
                            profile=Profile(), kernel=name))  # fmt: skip
    return out


def _case_id(case: Case, gauntlet: bool) -> str:
    if gauntlet:
        return case.id
    base = f"{case.preset}-{case.kernel}" if case.kernel else case.preset
    return f"{base}#{case.trial}" if case.trial else base


def _repeated(cases: list[Case], n: int) -> list[Case]:
    if n <= 1:
        return cases
    return [dataclasses.replace(c, trial=t) for c in cases for t in range(1, n + 1)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    spec = getattr(metafunc.function, "ktstr_spec", None)
    if spec is None:
        return
    cases = _repeated(_cases(spec, metafunc.config), metafunc.config.getoption("ktstr_repeat"))
    gauntlet = metafunc.config.getoption("gauntlet")
    metafunc.parametrize("ktstr_case", cases, ids=[_case_id(c, gauntlet) for c in cases])


def _results_root(config: pytest.Config) -> Path:
    opt = config.getoption("ktstr_results")
    return Path(opt) if opt else results_root()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cases: dict[str, tuple[Case, TestSpec]] = {}
    for item in items:
        spec = getattr(getattr(item, "function", None), "ktstr_spec", None)
        if spec is None:
            continue
        item.add_marker(pytest.mark.ktstr)
        case = item.callspec.params["ktstr_case"]  # type: ignore[attr-defined]
        cases[item.nodeid] = (case, spec)
    require_vm_host(config, [i for i in items if i.nodeid in cases])
    budget = config.getoption("budget")
    if not budget or not config.getoption("gauntlet"):
        return
    measured = measured_costs(_results_root(config))
    cost = {c.id: measured.get(c.id, static_estimate(c, s.duration_s)) for c, s in cases.values()}
    keep = {c.id for c in select_for_budget([c for c, _ in cases.values()], budget, cost)}
    selected = [i for i in items if i.nodeid not in cases or cases[i.nodeid][0].id in keep]
    deselected = [i for i in items if i not in selected]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


def run_case(spec: TestSpec, case: Case) -> None:
    """The host side of one @ktstr_test case (called by its pytest function)."""
    config = _state["config"]
    kernel = _kernel(case.kernel)
    if kernel.nr_cpus is not None and case.topology.cpus > kernel.nr_cpus:
        pytest.skip(
            f"{case.topology} needs {case.topology.cpus} CPUs; kernel has "
            f"CONFIG_NR_CPUS={kernel.nr_cpus}"
        )
    lacking = kconfig.lacks(kernel.config, spec.constraints.kernel_config)
    if lacking:
        pytest.skip(f"kernel {kernel.version} lacks {', '.join(lacking)}")
    test_file = Path(spec.module_file)
    sched: SchedulerRun | None = None
    scheduler: Scheduler | None = spec.scheduler
    if scheduler is not None:
        try:
            binary = scheduler_binary(scheduler.binary, kernel, near=test_file.parent)
        except KtstrError as exc:
            pytest.fail(f"{exc}\nhint: {exc.hint}", pytrace=False)
        sched = SchedulerRun(
            binary=binary,
            args=scheduler.argv_for(case.profile),
        )
    host_paths = [str(test_file.parent)] + [p for p in sys.path if p.startswith("/tmp/")]
    job = with_scheduler(
        {
            "mode": "test",
            "module_file": str(test_file),
            "function": spec.name,
            "topology": case.topology.name,
            "duration_s": spec.duration_s,
            "sys_path": [p for p in sys.path if p],
            "host_paths": host_paths,
            "attach_timeout": ATTACH_TIMEOUT,
            "env": guest_env(spec.env_exclude),
        },
        sched,
    )
    accel = config.getoption("ktstr_accel")
    req = BootRequest(
        kernel=kernel,
        topology=case.topology,
        job=job,
        memory_mb=spec.memory_mb,
        accel=None if accel == "auto" else accel,
        name=spec.name,
        scenario_s=spec.duration_s,
        ready_timeout=min(spec.timeout_s, ATTACH_TIMEOUT + READY_SLACK + 60.0),
        hard_cap=spec.timeout_s,  # after the boot budget (with_boot_budget)
    )
    test_id = case.id if config.getoption("gauntlet") else f"{spec.name}[{_case_id(case, False)}]"
    expect = Expectation(
        name=spec.name,
        topology=case.topology,
        plans=None,
        max_scenario_s=spec.duration_s,
        scheduler=sched is not None,
    )
    sched_layer = scheduler.thresholds if scheduler else None
    thresholds = merge(defaults_for(sched is not None), sched_layer, spec.thresholds)
    try:
        with vcpu_slots(case.topology.cpus, config.getoption("ktstr_vcpu_budget")):
            out = new_run_dir(_results_root(config), test_id)
            rec = execute_job(
                req,
                expect=expect,
                scheduler=sched,
                thresholds=thresholds,
                results_dir=out,
                test=test_id,
                scenario=spec.name,
                monitor_hz=None if config.getoption("ktstr_no_monitor") else 10.0,
            )
    except KtstrError as exc:
        _note_trial(spec, case, True, ["infrastructure"])
        pytest.fail(
            f"ktstr infrastructure error: {exc}" + (f"\nhint: {exc.hint}" if exc.hint else ""),
            pytrace=False,
        )
    t = Trial.of(rec)
    _note_trial(spec, case, t.failed, list(t.checks))
    _state["pending_spent"] = phase_spent(rec.phases)
    if rec.status is Status.FAIL:
        pytest.fail(to_text(rec) + f"\nresult: {out / 'result.json'}", pytrace=False)
    if rec.status is Status.SKIP:
        pytest.skip(rec.verdict.findings[0].message)
    if spec.after is not None:
        spec.after(RunResult(record=rec, directory=out, snapshots=snapshots_of(out)))


def _note_trial(spec: TestSpec, case: Case, failed: bool, checks: list[str]) -> None:
    """Keep a repeated case's outcome for its report (pytest_runtest_makereport)."""
    if case.trial:
        key = _case_id(dataclasses.replace(case, trial=0), _state["config"].getoption("gauntlet"))
        _state["trial"] = (f"{spec.name}[{key}]", failed, checks)


@dataclasses.dataclass(frozen=True, slots=True)
class RunResult:
    """What ``@ktstr_test(after=...)`` gets: the run's record, its results
    directory, and its snapshots by name."""

    record: RunRecord
    directory: Path
    snapshots: dict[str, Snapshot]

    @property
    def payloads(self) -> dict[str, dict[str, float]]:
        """Metrics of each payload run by name (the last run of a name wins)."""
        return {p.name: dict(p.metrics) for p in self.record.verdict.payloads}


#: Host variables a guest must not inherit: temp and working directories that
#: do not exist there, and session plumbing of the host's desktop and agents.
ENV_EXCLUDE = frozenset(
    {"TMPDIR", "TMP", "TEMP", "PWD", "OLDPWD", "SHLVL", "_", "DISPLAY", "XAUTHORITY",
     "SSH_AUTH_SOCK", "SSH_AGENT_PID", "DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR",
     "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_TESTRUNUID"}
)  # fmt: skip


def guest_env(exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """The host environment a test body runs with in the guest."""
    extra = {x.strip() for x in os.environ.get("KTSTR_ENV_EXCLUDE", "").split(",") if x.strip()}
    drop = ENV_EXCLUDE | extra | set(exclude)
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture(scope="session")
def ktstr_kernel() -> Kernel:
    """The kernel ktstr tests boot (the first of a matrix)."""
    return _kernel("")


@pytest.fixture
def ktstr_topology(ktstr_case: Case) -> Any:
    return ktstr_case.topology


@pytest.fixture
def ktstr_profile(ktstr_case: Case) -> Profile:
    return ktstr_case.profile


@pytest.fixture
def ktstr_scheduler(request: pytest.FixtureRequest) -> Scheduler | None:
    """The Scheduler definition of this @ktstr_test (None = EEVDF)."""
    spec = getattr(request.function, "ktstr_spec", None)
    return spec.scheduler if spec is not None else None
