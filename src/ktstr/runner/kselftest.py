"""``ktstr kselftest``: the kernel's sched_ext selftests in one VM, each
selftest its own result (terminal, JUnit, KTAP, result.json).

The runner comes with the kernel (``selftests/sched_ext/runner`` in its
cache entry). Where the runner can list its tests (``runner -l``, 7.x) the
host runs that first, on the host, so it knows what it is owed; 6.12's
runner cannot, and its own ``RESULTS:`` counts stand in.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from pathlib import Path

from ktstr.errors import ConfigError, GuestLostError, GuestPanicError
from ktstr.evaluate.kselftest import SelftestResult, judge
from ktstr.evaluate.verdict import Finding, Outcome, RunData, Status, Verdict, evaluate
from ktstr.host.kernel import Kernel
from ktstr.host.results import safe_name
from ktstr.protocol.messages import TestResult
from ktstr.report import RunRecord, write_sidecar
from ktstr.runner.boot import BootRequest, GuestRun
from ktstr.runner.guest import run_guest
from ktstr.runner.judge import kernel_info
from ktstr.spec.checks import Thresholds

#: Longest the runner may take in one VM (all 33 tests of 7.3 take about
#: 3 minutes under TCG on 4 vCPUs).
TIMEOUT_S = 1200.0
#: Where the VM's evidence goes in the results directory (no selftest name,
#: which starts with a letter or digit, can be this).
EVIDENCE = "_vm"


def runner_path(kernel: Kernel) -> Path:
    path = kernel.directory / "selftests" / "sched_ext" / "runner"
    if not path.is_file():
        raise ConfigError(
            f"kernel {kernel.version} has no sched_ext selftests runner ({path})",
            hint="'ktstr kernel build --schedulers' builds it; 'ktstr kernel import DIR' "
            "takes DIR/selftests/sched_ext/runner",
        )
    return path


def listed(runner: Path, filters: list[str]) -> list[str] | None:
    """The tests the runner will run (None: it cannot list them)."""
    try:
        p = subprocess.run(
            [str(runner), "-l"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [ln.strip() for ln in p.stdout.splitlines() if ln.strip()]
    if p.returncode != 0 or not names:
        return None
    return [n for n in names if not filters or any(f in n for f in filters)]


def _verdict(r: SelftestResult) -> Verdict:
    if r.status == "skip":
        data = RunData(outcome=Outcome(skip_reason=r.message))
    elif r.status == "fail":
        data = RunData(
            completeness=(
                Finding("selftest", "fail", f"{r.name}: {r.message}", {"output": r.output[-8000:]}),
            )
        )
    else:
        data = RunData()
    return evaluate(data, Thresholds())


def _crashed(run: GuestRun | None, exc: Exception, expected: list[str] | None) -> list[TestResult]:
    """What came back before the guest died, plus the death as the runner's end."""
    got = list(run.results) if run is not None else []
    started = {r.name.removeprefix("selftest:") for r in got if r.name.startswith("selftest:")}
    missing = [n for n in expected or () if n not in started]
    data = {
        "exit_code": None,
        "timed_out": False,
        "unfinished": missing[0] if missing else "",
        "tail": f"the guest died: {exc}",
    }
    return [*got, TestResult(name="selftest-run", passed=False, data=data)]


def run_kselftest(
    base: BootRequest, results_root: Path, filters: list[str], timeout_s: float = TIMEOUT_S
) -> tuple[list[RunRecord], Path]:
    """Boot one VM, run the selftests, return a record per selftest and the
    directory the results went to."""
    runner = runner_path(base.kernel)
    expected = listed(runner, filters)
    if expected is not None and not expected:
        raise ConfigError(f"no selftest matches {', '.join(filters)} (runner -l lists them)")
    job = {
        "mode": "kselftest",
        "runner": str(runner),
        "filters": filters,
        "timeout_s": timeout_s,
        "host_paths": [str(runner.parent)],
    }
    req = dataclasses.replace(
        base,
        job=job,
        ready_timeout=timeout_s + 60.0,
        hard_cap=base.boot_timeout + timeout_s + 120.0,
    )
    out = results_root / f"{time.strftime('%Y%m%d-%H%M%S')}-kselftest-{base.kernel.version}"
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    t0 = time.monotonic()
    run: GuestRun | None = None
    try:
        run = run_guest(req, evidence_dir=out / EVIDENCE, keep_if=lambda r: True)
        results = list(run.results)
    except (GuestPanicError, GuestLostError) as exc:
        run = exc.partial if isinstance(exc.partial, GuestRun) else None
        results = _crashed(run, exc, expected)
    judged = judge(results, expected)
    if not judged:  # a runner that cannot list ran none: the filters matched nothing
        shutil.rmtree(out, ignore_errors=True)
        raise ConfigError(f"no selftest matches {', '.join(filters) or 'anything'}")
    records = [_record(req, r, run, out, total=time.monotonic() - t0) for r in judged]
    return records, out


def _record(
    req: BootRequest, r: SelftestResult, run: GuestRun | None, out: Path, total: float
) -> RunRecord:
    rec = RunRecord(
        test=r.name,
        scenario="kselftest",
        topology=str(req.topology),
        kernel=kernel_info(req.kernel),
        scheduler=None,
        accel=run.accel.describe() if run else "",
        qemu=run.qemu.version_str if run else "",
        durations={
            "boot_s": round(run.timings.ready or 0.0, 3) if run else 0.0,
            "workload_s": round(r.duration_s, 3),
            "total_s": round(total, 3),
        },
        verdict=_verdict(r),
        artifacts=str(out / EVIDENCE) if r.status == "fail" else None,
        artifacts_dir=str(out / safe_name(r.name)),
    )
    d = out / safe_name(r.name)
    write_sidecar(rec, d)
    if r.status == "fail" and r.output:
        (d / "output.txt").write_text(r.output)
    return rec


def summary_line(records: list[RunRecord]) -> str:
    n = {s: sum(r.status is s for r in records) for s in Status}
    return (
        f"{n[Status.PASS]} passed, {n[Status.SKIP]} skipped, {n[Status.FAIL]} failed "
        f"(kernel {records[0].kernel['version'] if records else '?'})"
    )
