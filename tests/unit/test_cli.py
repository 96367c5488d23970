"""CLI failure paths that need no VM: one line with a hint, exit code 2."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ktstr.cli import main
from ktstr.host import kconfig

GOOD = "\n".join(
    ["# Linux/x86 6.12.1 Kernel Configuration"] + [f"{o}=y" for o in kconfig.RUN_REQUIRED]
)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("KTSTR_KERNEL", raising=False)
    monkeypatch.delenv("KTSTR_QEMU", raising=False)
    return tmp_path


def kernel_dir(path: Path, config: str) -> Path:
    path.mkdir()
    (path / "bzImage").write_bytes(b"\x00")
    (path / "config").write_text(config)
    return path


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_bad_topology(env, capsys):
    code, err = run(capsys, "probe", "--topology", "2n3l2c1t", "--kernel", str(env))
    assert code == 2
    first, hint = err.strip().splitlines()
    assert first.startswith("ktstr: error: topology 2n3l2c1t: llcs (3) must be a multiple")
    assert hint.startswith("hint: ")


def test_no_kernel(env, capsys):
    code, err = run(capsys, "probe")
    assert code == 2 and "no kernel" in err and "ktstr kernel build" in err
    assert "Traceback" not in err


def test_kernel_without_sched_ext(env, capsys):
    k = kernel_dir(env / "k", GOOD.replace("CONFIG_SCHED_CLASS_EXT=y", ""))
    code, err = run(capsys, "probe", "--kernel", str(k))
    assert code == 2 and "missing: CONFIG_SCHED_CLASS_EXT" in err and "hint:" in err


def test_qemu_missing(env, capsys, monkeypatch):
    monkeypatch.setenv("KTSTR_QEMU", "/nonexistent/qemu-system-x86_64")
    code, err = run(capsys, "probe", "--kernel", str(kernel_dir(env / "k", GOOD)))
    assert code == 2 and "QEMU not found" in err and "scripts/setup" in err


def test_qemu_too_old(env, capsys, monkeypatch):
    fake = env / "qemu-old"
    fake.write_text("#!/bin/sh\necho 'QEMU emulator version 6.2.0 (Debian)'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("KTSTR_QEMU", str(fake))
    code, err = run(capsys, "probe", "--kernel", str(kernel_dir(env / "k", GOOD)))
    assert code == 2 and "QEMU 6.2.0" in err and "too old" in err


def test_kernel_check_and_list(env, capsys):
    k = kernel_dir(env / "k", GOOD)
    assert main(["kernel", "check", str(k)]) == 0
    assert "usable by ktstr" in capsys.readouterr().out
    assert main(["kernel", "check", "--strict", str(k)]) == 2
    assert main(["kernel", "list"]) == 0
    assert "no kernels cached" in capsys.readouterr().out


def test_topologies_lists_presets(capsys):
    assert main(["topologies"]) == 0
    out = capsys.readouterr().out
    assert "huge-14llc" in out and "2n14l9c2t" in out and len(out.splitlines()) >= 24


def test_show_thresholds_with_a_scheduler_definition(env, capsys, tmp_path):
    defs = tmp_path / "defs.py"
    defs.write_text(
        "from ktstr import Scheduler, Thresholds\n"
        "Q = Scheduler('scx_qmap', thresholds=Thresholds(max_gap_ms=900.0))\n"
        "NOT_A_SCHED = 3\n"
    )
    assert (
        main(
            [
                "show-thresholds",
                "steady",
                "--scheduler",
                f"{defs}:Q",
                "--threshold",
                "max_spread_pct=off",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "max_gap_ms           900.0" in out and "max_spread_pct       off" in out
    code, err = run(capsys, "show-thresholds", "--scheduler", f"{defs}:NOT_A_SCHED")
    assert code == 2 and "is not a ktstr Scheduler" in err
    code, err = run(capsys, "show-thresholds", "--scheduler", f"{tmp_path}/missing.py:Q")
    assert code == 2 and "no file" in err and err.count("\n") == 1
    (tmp_path / "broken.py").write_text("import os\nX = os.environ['KTSTR_NOPE']\n")
    code, err = run(capsys, "show-thresholds", "--scheduler", f"{tmp_path}/broken.py:X")
    assert code == 2 and f"{tmp_path}/broken.py:2: KeyError: 'KTSTR_NOPE'" in err
    (tmp_path / "syntax.py").write_text("from ktstr import Scheduler\nS = (\n")
    code, err = run(capsys, "show-thresholds", "--scheduler", f"{tmp_path}/syntax.py:S")
    assert code == 2 and f"{tmp_path}/syntax.py:2: SyntaxError" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ("run", "--duration", "nan"),
        ("run", "--duration", "inf"),
        ("run", "--duration", "-1"),
        ("run", "--boot-timeout", "nan"),
        ("run", "--snapshots", "-1"),
        ("run", "--memory", "x"),
    ],
)
def test_non_finite_numbers_are_one_line_errors(env, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_thresholds_are_refused(env, capsys, value):
    code, err = run(capsys, "show-thresholds", "--threshold", f"max_gap_ms={value}")
    assert code == 2 and "must be a finite number" in err


@pytest.mark.parametrize("flag", ["--results", "--junit"])
def test_unusable_output_paths_fail_before_any_boot(env, capsys, flag):
    blocker = env / "a-file"
    blocker.write_text("")
    code, err = run(capsys, "run", flag, str(blocker / "x"), "--kernel", str(env / "nope"))
    assert code == 2 and "not a writable directory" in err and "Traceback" not in err


def test_internal_errors_are_one_line_and_exit_2(env, capsys, monkeypatch):
    from ktstr import cli

    def boom(args):
        raise ValueError("a bug")

    monkeypatch.setattr(cli, "cmd_list", boom)
    code, err = run(capsys, "list")
    assert code == 2 and err.startswith("ktstr: internal error: ValueError: a bug")
    assert "Traceback" not in err


def test_guest_exit_status_is_a_shell_status():
    from ktstr.guest.agent import shell_status

    assert [shell_status(c) for c in (0, 7, 255, 256, 4096, -9, -15)] == [
        0, 7, 255, 255, 255, 137, 143
    ]  # fmt: skip


def test_run_takes_several_topologies_or_every_preset_that_fits():
    from ktstr.cli.run import topologies
    from ktstr.spec.topology import PRESET_LIST

    two = topologies("1n2l2c1t, smt-2llc", None, None)
    assert [str(t) for t in two] == ["1n2l2c1t", "1n2l2c2t"]
    every = topologies("presets", 256, None)
    assert len(every) == len(PRESET_LIST) and every[-1].cpus == 252
    small = topologies("presets", 64, 16)
    assert small and all(t.cpus <= 16 for t in small)
    assert [t.cpus for t in topologies("presets", 64, None)][-1] == 64  # NR_CPUS bounds it
