"""Failure paths with a real VM: each gives one clear error, keeps evidence
where a run failed, and leaves no QEMU, socket or temp dir behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ktstr
from ktstr.errors import BootTimeoutError, GuestPanicError, QemuAbortError
from ktstr.runner import BootRequest, run_guest
from ktstr.spec.topology import Topology

ONE = Topology.parse("1n1l2c1t")


def run_cli(*args: str, env: dict[str, str], **kw) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ktstr", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_exec_returns_status_and_output(kernel, isolated):
    proc = run_cli(
        "shell",
        "--exec",
        "echo hello-from-guest; uname -r; echo oops >&2; exit 7",
        env={"TMPDIR": str(isolated / "tmp")},
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 7, err
    assert "hello-from-guest" in out and kernel.version in out
    assert "oops" in err


def test_guest_cannot_write_to_host(kernel, isolated):
    # /tmp is the guest's own tmpfs; the package dir is the host's, via the share
    target = Path(ktstr.__file__).parent / "written-by-guest"
    proc = run_cli(
        "shell", "--exec", f"touch {target} && echo WROTE", env={"TMPDIR": str(isolated / "tmp")}
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "WROTE" not in out
    assert "Read-only file system" in err
    assert not target.exists()


def test_guest_kernel_panic_is_reported_with_console_tail(kernel, isolated):
    req = BootRequest(
        kernel=kernel, topology=ONE, job={"mode": "exec", "command": "echo c > /proc/sysrq-trigger"}
    )
    with pytest.raises(GuestPanicError) as exc:
        run_guest(req)
    text = str(exc.value)
    assert "guest kernel crashed" in text and "sysrq" in text.lower()
    assert exc.value.artifacts is not None
    assert (exc.value.artifacts / "console.log").read_text().count("Kernel panic") >= 1
    assert (exc.value.artifacts / "qemu.argv").is_file()
    assert (exc.value.artifacts / "frames.bin").is_file()


def test_boot_timeout(kernel, isolated):
    req = BootRequest(kernel=kernel, topology=ONE, job={"mode": "probe"}, boot_timeout=0.5)
    with pytest.raises(BootTimeoutError) as exc:
        run_guest(req)
    assert "boot_timeout" in str(exc.value) and "--boot-timeout" in exc.value.hint
    assert exc.value.artifacts is not None and exc.value.artifacts.is_dir()
    # where each vCPU was: the one clue a boot that hangs silently leaves
    assert "RIP=" in (exc.value.artifacts / "registers.txt").read_text()


def test_boot_timeout_from_cli_is_one_line_and_no_traceback(kernel, isolated):
    proc = run_cli(
        "probe",
        "--topology",
        "1n1l2c1t",
        "--boot-timeout",
        "0.5",
        env={"TMPDIR": str(isolated / "tmp"), "KTSTR_RESULTS": str(isolated / "res")},
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.startswith("ktstr: error: boot_timeout: guest not ready")
    assert "Traceback" not in err and "hint:" in err


def test_a_run_that_never_boots_is_named_with_its_reason_and_the_rest_go_on(kernel, isolated):
    """ktstr run over several jobs: a VM that never boots is not a verdict;
    it is named with why and where its evidence is, and the next job runs."""
    proc = run_cli(
        "run", "steady", "cpuset_disjoint", "--boot-timeout", "0.5",
        env={"TMPDIR": str(isolated / "tmp"), "KTSTR_RESULTS": str(isolated / "res")},
    )  # fmt: skip
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (out, err)
    lost = [line for line in out.splitlines() if line.startswith("NO RESULT ")]
    names = [line.split(":")[0].removeprefix("NO RESULT ") for line in lost]
    assert names == ["steady", "cpuset_disjoint"]
    assert all("boot_timeout" in line and "(evidence: " in line for line in lost), lost
    assert err.count("ktstr: no result: ") == 2 and "Traceback" not in err


def test_ctrl_c_during_boot_cleans_up(kernel, isolated, qemu_pids):
    tmp = isolated / "tmp"
    proc = run_cli(
        "probe",
        "--topology",
        "1n2l2c1t",
        env={"TMPDIR": str(tmp), "KTSTR_RESULTS": str(isolated / "res")},
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not qemu_pids(str(tmp)):  # wait until QEMU is up
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert qemu_pids(str(tmp)) == []
    assert os.listdir(tmp) == []
    assert not (isolated / "res").exists()  # Ctrl-C is not a failed run: no evidence dir


def test_topology_beyond_kernel_nr_cpus_fails_before_boot(kernel, isolated):
    if kernel.nr_cpus is None or kernel.nr_cpus >= 252:
        pytest.skip(f"kernel NR_CPUS={kernel.nr_cpus} fits every preset")
    proc = run_cli("probe", "--topology", "huge-14llc", env={"TMPDIR": str(isolated / "tmp")})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and f"CONFIG_NR_CPUS={kernel.nr_cpus}" in err
    assert Path(isolated / "tmp").exists() and os.listdir(isolated / "tmp") == []


def test_private_tmp_keeps_needed_host_paths(kernel, isolated):
    """/tmp is the guest's own tmpfs, yet host paths a run needs (a checkout or
    pytest's tmp dirs under /tmp) stay visible, read-only, at the same path."""
    host_file = isolated / "data" / "hello.txt"
    host_file.parent.mkdir()
    host_file.write_text("from-the-host\n")
    out: list[str] = []
    cmd = (
        f"cat {host_file} && echo scratch > /tmp/scratch && cat /tmp/scratch && "
        f"(echo x > {host_file} 2>/dev/null && echo HOST-WRITTEN || echo host-read-only)"
    )
    run = run_guest(
        BootRequest(
            kernel=kernel,
            topology=ONE,
            job={"mode": "exec", "command": cmd, "host_paths": [str(host_file)]},
        ),
        on_text=lambda kind, text: out.append(text),
    )
    text = "".join(out)
    assert run.exit_code == 0, text
    assert "from-the-host" in text and "scratch" in text and "host-read-only" in text
    assert host_file.read_text() == "from-the-host\n"


def aborting_qemu(tmp_path: Path, aborts: int) -> Path:
    """Real QEMU, except that the first ``aborts`` launches die of SIGABRT a
    second after QEMU connected its sockets, as QEMU's TCG race does."""
    real = shutil.which("qemu-system-x86_64")
    assert real
    count = tmp_path / "launches"
    script = tmp_path / "qemu-aborting"
    script.write_text(f"""#!/bin/bash
[ "$1" = --version ] && exec {real} --version
n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}
if [ "$n" -lt {aborts} ]; then
    {real} "$@" & pid=$!
    sleep 1; kill -KILL $pid; wait $pid 2>/dev/null
    kill -ABRT $$
fi
exec {real} "$@"
""")
    script.chmod(0o755)
    return script


def test_qemu_abort_before_ready_is_relaunched(kernel, isolated, monkeypatch):
    monkeypatch.setenv("KTSTR_QEMU", str(aborting_qemu(isolated, aborts=1)))
    run = run_guest(BootRequest(kernel=kernel, topology=ONE, job={"mode": "probe"}))
    assert run.exit_code == 0 and run.result("topology") is not None
    assert any("relaunched" in w for w in run.warnings)
    assert (isolated / "launches").read_text().strip() == "2"


def test_qemu_that_keeps_aborting_is_reported(kernel, isolated, monkeypatch):
    monkeypatch.setenv("KTSTR_QEMU", str(aborting_qemu(isolated, aborts=99)))
    with pytest.raises(QemuAbortError, match="aborted"):
        run_guest(BootRequest(kernel=kernel, topology=ONE, job={"mode": "probe"}))
    assert (isolated / "launches").read_text().strip() == "3"


def test_qemu_dies_with_a_killed_ktstr(kernel, isolated, qemu_pids):
    """Even SIGKILL (no cleanup possible) takes QEMU down: PR_SET_PDEATHSIG."""
    tmp = isolated / "tmp"
    proc = run_cli("probe", env={"TMPDIR": str(tmp)}, start_new_session=True)
    deadline = time.monotonic() + 60
    while not qemu_pids(str(tmp)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while qemu_pids(str(tmp)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert qemu_pids(str(tmp)) == [], "QEMU outlived the ktstr process"
    for leftover in tmp.iterdir():  # a SIGKILLed process cannot remove its run dir
        shutil.rmtree(leftover)


@pytest.mark.parametrize(
    "case",
    [((signal.SIGTERM,), 143, "terminated"), ((signal.SIGINT, signal.SIGINT), 130, "interrupted")],
    ids=["sigterm", "ctrl-c-twice"],
)
def test_signals_mid_run_clean_up(kernel, isolated, qemu_pids, case):
    """SIGTERM is handled like Ctrl-C, and a second Ctrl-C that lands during
    cleanup does not cut it short: no QEMU, no run dir, no results dir."""
    signals, code, word = case
    tmp = isolated / "tmp"
    proc = run_cli(
        "run",
        "steady",
        "--duration",
        "30",
        "--topology",
        "1n1l2c1t",
        env={"TMPDIR": str(tmp), "KTSTR_RESULTS": str(isolated / "res")},
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not qemu_pids(str(tmp)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(6)  # into the workload
    for sig in signals:
        os.kill(proc.pid, sig)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert word in err and "Traceback" not in err
    assert qemu_pids(str(tmp)) == []
    assert os.listdir(tmp) == []
    assert not (isolated / "res").exists() or not any((isolated / "res").iterdir())


def test_parallel_runs_overlap_and_sigterm_cleans_up_every_vm(kernel, isolated, qemu_pids):
    """``ktstr run -j 2`` over two topologies: two VMs at once with progress lines; SIGTERM to
    the parent reaches both children, and each cleans up its own VM."""
    env = {"TMPDIR": str(isolated / "tmp"), "KTSTR_RESULTS": str(isolated / "ok")}
    done = subprocess.run(
        [sys.executable, "-m", "ktstr", "run", "steady", "--duration", "1",
         "--topology", "1n1l2c1t,1n2l2c1t", "-j", "2"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "== [1/2] started steady" in done.stdout and "== [2/2 done] all done" in done.stdout
    assert "time over 2 runs:" in done.stdout
    docs = [json.loads(p.read_text()) for p in (isolated / "ok").glob("*/result.json")]
    spans = sorted((d["durations"]["started_at"], d["durations"]["total_s"]) for d in docs)
    assert len(spans) == 2 and spans[1][0] < spans[0][0] + spans[0][1], "the VMs did not overlap"
    assert {d["topology"] for d in docs} == {"1n1l2c1t", "1n2l2c1t"}  # one run per topology

    tmp = isolated / "tmp"
    proc = run_cli("run", "steady", "steady", "--duration", "30", "--topology", "1n1l2c1t",
                   "-j", "2", env={**env, "KTSTR_RESULTS": str(isolated / "res")},
                   start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 90
    while len(qemu_pids(str(tmp))) < 2:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    time.sleep(5)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert qemu_pids(str(tmp)) == []
    assert os.listdir(tmp) == []
    assert not (isolated / "res").exists() or not any((isolated / "res").iterdir())
