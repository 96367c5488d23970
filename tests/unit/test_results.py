"""Results directories and result files: unique, private, whole."""

from __future__ import annotations

import os
import stat

import pytest

from ktstr.errors import InternalError
from ktstr.host.results import new_run_dir, remove_if_unfinished, write_private


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_run_dirs_are_unique_and_private(tmp_path):
    """Two scenarios of one command, or two processes in the same second,
    never share a directory."""
    root = tmp_path / "results"
    dirs = [new_run_dir(root, "steady-1n2l2c1t") for _ in range(5)]
    assert len(set(dirs)) == 5 and all(d.is_dir() for d in dirs)
    assert all(mode(d) == 0o700 for d in dirs)
    assert dirs[1].name == dirs[0].name + "-2"
    assert new_run_dir(root, "a/../../b").parent == root  # labels cannot climb


def test_result_files_are_atomic_and_private(tmp_path):
    path = tmp_path / "deep" / "result.json"
    write_private(path, "{}")
    assert path.read_text() == "{}" and mode(path) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # no temp left


def test_an_interrupted_run_leaves_no_results_dir(tmp_path):
    d = new_run_dir(tmp_path, "x")
    (d / "console.log").write_text("partial")
    remove_if_unfinished(d)
    assert not d.exists()
    done = new_run_dir(tmp_path, "y")
    write_private(done / "result.json", "{}")
    remove_if_unfinished(done)
    assert done.exists()


def test_an_unexpected_exception_is_an_internal_error_with_evidence(tmp_path, monkeypatch):
    """Not a traceback with exit 1: exit 2, one line, the traceback kept."""
    from ktstr.evaluate.account import Expectation
    from ktstr.runner import judge as ex
    from ktstr.spec.checks import DEFAULTS
    from ktstr.spec.topology import Topology

    def broken(req):
        raise ZeroDivisionError("somewhere deep")

    monkeypatch.setattr(ex, "prepare", broken)
    topo = Topology.parse("1n1l2c1t")
    with pytest.raises(InternalError) as exc:
        ex.execute_job(
            None,  # type: ignore[arg-type]
            expect=Expectation(name="t", topology=topo, plans=()),
            scheduler=None,
            thresholds=DEFAULTS,
            results_dir=tmp_path / "r",
            test="t",
            scenario="t",
        )
    assert exc.value.exit_code == 2 and "ZeroDivisionError: somewhere deep" in str(exc.value)
    assert exc.value.evidence is not None
    assert "Traceback" in exc.value.evidence.read_text()
