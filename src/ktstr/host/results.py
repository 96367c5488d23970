"""Where results and evidence go: unique, private, written atomically.

Every run gets its own directory (two scenarios of one command, or two
processes in the same second, never share one), created 0700; files are
0600 and ``result.json`` appears whole or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

from ktstr.errors import ConfigError


def results_root() -> Path:
    """$KTSTR_RESULTS, else the XDG state directory."""
    env = os.environ.get("KTSTR_RESULTS")
    if env:
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "ktstr" / "results"


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)[:120] or "run"


def check_writable_dir(path: Path, what: str) -> None:
    """Fail before any VM boots if ``path`` cannot hold results."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{what} {path}: {probe} is not a writable directory",
            hint=f"pass a {what} in a directory you can write",
        )


def check_writable_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory", hint="give a file path")
    check_writable_dir(path.parent, f"{what} directory for")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{what} {path} is not writable")


def new_run_dir(root: Path, label: str) -> Path:
    """A fresh ``<root>/<timestamp>-<label>[-N]`` directory, mode 0700."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{safe_name(label)}"
    for n in range(1, 10_000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return path
    raise ConfigError(f"cannot create a results directory under {root}")


def write_private(path: Path, data: str | bytes) -> None:
    """Write atomically (temp file + rename), mode 0600."""
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_if_unfinished(path: Path) -> None:
    """An interrupted run leaves no half-written results directory behind."""
    if path.is_dir() and not (path / "result.json").exists():
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def measured_costs(root: Path) -> dict[str, float]:
    """Case id -> seconds from earlier sidecars (newest wins)."""
    out: dict[str, float] = {}
    if not root.is_dir():
        return out
    for path in sorted(root.glob("*/result.json")):
        try:
            doc = json.loads(path.read_text())
            out[str(doc["test"])] = float(doc["durations"]["total_s"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out
