"""What the BPF verifier spent on a scheduler's programs, per kernel: the
agent's reading of bpf_prog_info checked against the verifier's own count,
and ``ktstr verifier`` across both shared kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ktstr.runner import BootRequest, run_guest
from ktstr.spec.topology import Topology
from tests.vm.conftest import kernel_for

SRC = Path(__file__).resolve().parents[2] / "src"
SCRIPT = Path(__file__).parent / "guest" / "verified_insns.py"


@pytest.mark.parametrize("series", ["6.12", "7.3"])
def test_verified_insns_agree_with_the_verifier_log(kernels, isolated, series):
    kernel = kernel_for(kernels, series)
    out: list[str] = []
    job = {"mode": "exec", "command": f"{sys.executable} {SCRIPT} {SRC}"}
    run = run_guest(
        BootRequest(kernel=kernel, topology=Topology.parse("1n1l2c1t"), job=job),
        on_text=lambda kind, text: out.append(text),
    )
    assert run.exit_code == 0, "".join(out)
    line = next(ln for ln in "".join(out).splitlines() if ln.startswith("VERIFIED"))
    assert line == "VERIFIED 39 PROCESSED 39 TYPE 1 XLATED 312"


def test_verifier_table_across_kernels(kernels, isolated):
    if len(kernels) < 2:
        pytest.skip("host lacks a second shared kernel")
    old, new = kernel_for(kernels, "6.12"), kernel_for(kernels, "7.3")
    p = subprocess.run(
        [sys.executable, "-m", "ktstr", "verifier", "scx_simple", "--json",
         "--kernel", str(old.directory), "--kernel", str(new.directory)],
        env={**os.environ, "TMPDIR": str(isolated / "tmp")},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)["scx_simple"]
    for version in (old.version, new.version):
        progs = {x["name"]: x for x in doc[version]}
        assert progs["simple_enqueue"]["type"] == "struct_ops"
        assert all(x["verified_insns"] > 0 for x in progs.values())
        assert progs["simple_enqueue"]["load_ms"] is not None
    table = subprocess.run(
        [sys.executable, "-m", "ktstr", "verifier", "scx_simple"],
        env={**os.environ, "TMPDIR": str(isolated / "tmp")},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert "simple_enqueue" in table.stdout and "total" in table.stdout
