"""``ktstr run``'s job runner: order, progress lines, the time estimate, and
parallel children (plain functions here; tests/vm runs VMs through it)."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import time

import pytest

from ktstr.cli.jobs import Board, Hooks, Progress, fmt_eta, run_jobs, terminal


def hooks(lines, done):
    return Hooks(cpus=lambda j: 1, describe=lambda j: f"job{j}", estimate=lambda j: 1.0,
                 on_start=lines.append, on_done=lambda j, r: done.append((j, r)))  # fmt: skip


def test_sequential_runs_in_order_with_an_estimate_after_the_first():
    lines, done = [], []
    out, lost = run_jobs([1, 2, 3], lambda j: j * 10, hooks(lines, done))
    assert out == [10, 20, 30] and lost == [] and done == [(1, 10), (2, 20), (3, 30)]
    assert lines[0] == "[1/3] job1" and lines[1].startswith("[2/3] job2 (~")


def slow(j):
    t = time.monotonic()
    time.sleep(0.3)
    if j == 3:
        os._exit(9)  # a child that dies without a result
    return (j, os.getpid(), t, time.monotonic())


def test_parallel_children_overlap_and_a_lost_one_is_named():
    lines, done = [], []
    out, lost = run_jobs([1, 2, 3, 4], slow, hooks(lines, done), parallel=2)
    assert [r[0] for r in out] == [1, 2, 4] and len({r[1] for r in out}) == 3
    assert os.getpid() not in {r[1] for r in out}
    (_, _, a0, a1), (_, _, b0, b1) = out[:2]
    assert b0 < a1 and a0 < b1  # jobs 1 and 2 ran at the same time
    assert lost == ["job3: its process died (exit 9); run it alone (without -j) to see why"]
    assert any("started job2 (2 running)" in ln for ln in lines)
    assert lines[-1] == "[4/4 done] all done"


def test_the_estimate_follows_the_measured_pace():
    p = Progress(estimate=lambda j: 10.0)
    assert p.eta([1, 2], [], 1) == pytest.approx(20.0)
    p.spent += [30.0, 30.0]  # runs take 3x the estimate here
    assert p.eta([1, 2], [], 2) == pytest.approx(30.0)
    assert fmt_eta(75) == "~1m15s left" and fmt_eta(9.6) == "~10s left"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_live_line_per_running_job_and_output_above_it(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    term = Tty()
    assert terminal(term) is term and terminal(io.StringIO()) is None
    monkeypatch.setenv("TERM", "dumb")
    assert terminal(term) is None
    lines: list = []
    h = dataclasses.replace(hooks(lines, []), live=term)
    out, lost = run_jobs([1, 2], lambda j: time.sleep(1.3) or j, h, parallel=2)
    assert out == [1, 2] and lost == []
    shown = term.getvalue()
    assert re.search(r"  > job1  \ds of ~1s\n  > job2  \ds of ~1s\n", shown)  # a line each, live
    # every redraw first moves up over the lines it drew and erases them
    assert shown.count("\x1b[2F\x1b[J") >= 1 and shown.endswith("\x1b[J")


def test_the_board_redraws_in_place():
    term = Tty()
    b = Board(term)
    b.draw(["a", "b"])
    b.draw(["c"])
    b.clear()
    assert term.getvalue() == "a\nb\n\x1b[2F\x1b[Jc\n\x1b[1F\x1b[J"


def test_a_lost_job_keeps_the_errors_first_line_and_where_its_evidence_is():
    from pathlib import Path

    from ktstr.cli.jobs import Lost
    from ktstr.errors import VmError

    exc = VmError("boot_timeout: guest not ready\nconsole tail", artifacts=Path("/r/x"))
    assert Lost.of("steady", exc).line() == "steady: boot_timeout: guest not ready (evidence: /r/x)"
    assert Lost.of("steady", VmError("lost")).line() == "steady: lost"
