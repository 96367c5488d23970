"""Run the kernel's sched_ext selftests (``runner``) and send each test's
block of output as it ends. The host parses and judges them.

The runner prints one block per test (``===== START =====`` ... the KTAP-ish
result line ... ``=====  END  =====``) and a ``RESULTS:`` summary. Its stdout
is line-buffered here (``stdbuf``): with a pipe it would be block-buffered,
and every test that forks would print the earlier tests' lines again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from typing import Any

from ktstr.protocol.messages import TestResult

START, END = "===== START =====", "=====  END  ====="
#: Characters of one test's block sent (the host's bound for a string).
BLOCK_MAX = 60_000
TAIL_MAX = 4_000


def _argv(runner: str, filt: str | None) -> list[str]:
    argv = [runner] + (["-t", filt] if filt else [])
    stdbuf = shutil.which("stdbuf")
    return [stdbuf, "-oL", "-eL", *argv] if stdbuf else argv


def run_one(port: Any, runner: str, filt: str | None, timeout: float) -> int:
    """One runner process (all tests, or those matching ``filt``)."""
    proc = subprocess.Popen(
        _argv(runner, filt),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=os.path.dirname(runner),
        start_new_session=True,
    )
    killed: list[bool] = []

    def kill() -> None:
        killed.append(True)
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    block: list[str] | None = None
    tail: list[str] = []
    started = 0.0
    current = ""
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        tail = [*tail[-200:], line]
        if line == START:
            block, started, current = [], time.monotonic(), ""
            continue
        if block is None:
            continue
        if line.startswith("TEST: ") and not current:
            current = line[6:].strip()[:200]
        if line == END:
            text = "\n".join(block)[-BLOCK_MAX:]
            data = {"block": text, "duration_s": time.monotonic() - started, "filter": filt}
            port.send(
                port.enc.message(TestResult(name=f"selftest:{current}", passed=False, data=data))
            )
            block, current = None, ""
            continue
        block.append(line)
    code = proc.wait()
    timer.cancel()
    timed_out = bool(killed)
    summary = {
        "filter": filt,
        "exit_code": code,
        "timed_out": timed_out,
        "unfinished": current if block is not None else "",
        "tail": "\n".join(tail)[-TAIL_MAX:],
    }
    port.send(port.enc.message(TestResult(name="selftest-run", passed=code == 0, data=summary)))
    return code


def run_kselftest(port: Any, job: dict[str, Any]) -> int:
    """Agent entry for ``mode: kselftest``: one runner process per filter."""
    runner = str(job["runner"])
    timeout = float(job.get("timeout_s", 1200.0))
    filters = list(job.get("filters") or [None])
    deadline = time.monotonic() + timeout
    for filt in filters:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        run_one(port, runner, filt, left)
    return 0
