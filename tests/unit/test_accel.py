from pathlib import Path

import pytest

from ktstr.errors import QemuError
from ktstr.host import qemu as q
from ktstr.host.qemu_argv import Accel

NEW = q.QemuInfo("/usr/bin/qemu-system-x86_64", (10, 0, 2))
OLD = q.QemuInfo("/usr/bin/qemu-system-x86_64", (7, 2, 0))


def fake_kvm(tmp_path: Path, *, pvm: bool, mode: int = 0o666) -> tuple[Path, Path]:
    dev = tmp_path / "kvm"
    dev.write_bytes(b"")
    dev.chmod(mode)
    mods = tmp_path / "module"
    (mods / "kvm_intel").mkdir(parents=True)
    if pvm:
        (mods / "kvm_pvm").mkdir()
    return dev, mods


def test_pvm_is_detected_without_probing(tmp_path):
    dev, mods = fake_kvm(tmp_path, pvm=True)
    assert "PVM" in (q.kvm_blocker(dev, mods) or "")


def test_missing_dev_kvm(tmp_path):
    assert "does not exist" in (q.kvm_blocker(tmp_path / "nope", tmp_path) or "")


def test_plain_kvm_is_worth_a_probe(tmp_path):
    dev, mods = fake_kvm(tmp_path, pvm=False)
    assert q.kvm_blocker(dev, mods) is None


def test_auto_falls_back_to_tcg_without_probing_when_blocked(monkeypatch):
    monkeypatch.setattr(q, "kvm_blocker", lambda: "/dev/kvm is PVM (kvm_pvm module)")
    monkeypatch.setattr(q, "probe_kvm_boot", lambda *a, **k: pytest.fail("must not probe"))
    choice = q.choose_accel(NEW, Path("/k"))
    assert choice.accel is Accel.TCG and choice.tcg_multithread
    assert "PVM" in choice.describe() and "multi-threaded" in choice.describe()


def test_auto_uses_kvm_only_after_a_successful_probe(monkeypatch):
    monkeypatch.setattr(q, "kvm_blocker", lambda: None)
    monkeypatch.setattr(q, "probe_kvm_boot", lambda *a, **k: None)
    assert q.choose_accel(NEW, Path("/k")).accel is Accel.KVM
    monkeypatch.setattr(q, "probe_kvm_boot", lambda *a, **k: "probe boot timed out")
    choice = q.choose_accel(NEW, Path("/k"))
    assert choice.accel is Accel.TCG and "probe boot timed out" in choice.reason


def test_old_qemu_gets_single_threaded_tcg(monkeypatch):
    monkeypatch.setattr(q, "kvm_blocker", lambda: "no kvm")
    choice = q.choose_accel(OLD, Path("/k"))
    assert not choice.tcg_multithread and "7.2.0 < 8.1" in choice.reason
    assert not q.choose_accel(OLD, Path("/k"), "tcg").tcg_multithread


def test_forced_kvm_without_access_is_an_error(monkeypatch):
    monkeypatch.setattr(q, "kvm_blocker", lambda: "/dev/kvm does not exist")
    with pytest.raises(QemuError, match="--accel kvm"):
        q.choose_accel(NEW, Path("/k"), "kvm")


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)", (10, 0, 2)),
        ("QEMU emulator version 8.2", (8, 2, 0)),
    ],
)
def test_parse_version(text, version):
    assert q.parse_version(text) == version
