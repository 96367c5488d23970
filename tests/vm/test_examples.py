"""The examples a scheduler developer copies must keep passing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_examples_pass(kernel, isolated):
    env = {**os.environ, "TMPDIR": str(isolated / "tmp"), "KTSTR_KERNEL": str(kernel.directory)}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(EXAMPLES),
            "-p",
            "no:cacheprovider",
            "-q",
            f"--ktstr-results={isolated / 'res'}",
            f"--rootdir={EXAMPLES}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "5 passed" in p.stdout
