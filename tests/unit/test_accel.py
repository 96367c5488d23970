from pathlib import Path

import pytest

from ktstr.errors import QemuError
from ktstr.host import qemu as q
from ktstr.host.qemu import AccelChoice, tcg_lpj
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


def test_tcg_lpj_is_one_jiffy_of_the_host_clock(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\ncpu MHz\t\t: 2596.144\n\nprocessor\t: 1\ncpu MHz\t: 2400.0\n")
    assert tcg_lpj(1000, info) == 2596144  # the fastest CPU, HZ=1000
    assert tcg_lpj(250, info) == 10384576
    info.write_text("processor\t: 0\n")  # no frequency: no preset, the kernel measures
    assert tcg_lpj(1000, info) is None
    assert tcg_lpj(1000, tmp_path / "missing") is None


def test_boot_budget_scales_with_vcpus_and_serialization():
    kvm = AccelChoice(Accel.KVM, False, "")
    mt = AccelChoice(Accel.TCG, True, "")
    st = AccelChoice(Accel.TCG, False, "")
    for a in (kvm, mt, st):
        sizes = [a.boot_budget(n) for n in (4, 16, 64, 252)]
        assert sizes == sorted(sizes) and sizes[0] >= 60
    # one TCG thread: 64 vCPUs took 50-456 s to ready here (with and without lpj); room for it
    assert st.boot_budget(64) > 3 * 456 * 0.9
    assert st.boot_budget(4) < 120 and mt.boot_budget(252) < st.boot_budget(64)


def test_auto_boot_timeout_extends_the_hard_cap_by_the_same_budget(tmp_path):
    from ktstr.host.kernel import Kernel
    from ktstr.runner.boot import BootRequest, with_boot_budget
    from ktstr.spec.topology import Topology

    k = Kernel(directory=tmp_path, image=tmp_path / "vmlinux", config_text=None, version="x")
    st = AccelChoice(Accel.TCG, False, "")
    req = BootRequest(kernel=k, topology=Topology.parse("1n1l4c1t"), job={}, hard_cap=100.0)
    got = with_boot_budget(req, st)
    assert got.boot_timeout == st.boot_budget(4) and got.hard_cap == 100.0 + got.boot_timeout
    fixed = BootRequest(kernel=k, topology=req.topology, job={}, boot_timeout=9.0, hard_cap=100.0)
    assert with_boot_budget(fixed, st) is fixed


def test_only_an_int3_oops_before_ready_under_mttcg_is_relaunched():
    """QEMU's MTTCG races the kernel's int3 text patching as vCPUs come up:
    relaunched like a QEMU abort. A panic after ready, any other oops, or
    one under KVM or a single TCG thread stays the run's finding."""
    from ktstr.runner.boot import GuestRun, Timings
    from ktstr.runner.guest import tcg_boot_artifact

    mt = AccelChoice(Accel.TCG, True, "")
    booting = GuestRun(accel=mt, qemu=NEW)
    oops = "guest kernel crashed: Oops: int3: 0000 [#1] SMP"
    assert tcg_boot_artifact(oops, mt, booting)
    assert not tcg_boot_artifact("guest kernel crashed: BUG: kernel NULL pointer", mt, booting)
    assert not tcg_boot_artifact(oops, AccelChoice(Accel.TCG, False, ""), booting)
    assert not tcg_boot_artifact(oops, AccelChoice(Accel.KVM, False, ""), booting)
    ready = GuestRun(accel=mt, qemu=NEW, timings=Timings(ready=4.2))
    assert not tcg_boot_artifact(oops, mt, ready)


def test_tcg_guests_trust_their_tsc_and_skip_calibration_kvm_guests_get_nothing():
    """Under TCG every vCPU's TSC is QEMU's host clock: the 7.x clocksource
    watchdog's cross-CPU check (interrupts off, waiting on another vCPU)
    hung boots under one TCG thread. KVM guests keep the kernel's defaults."""
    from types import SimpleNamespace

    from ktstr.runner.boot import _tcg_params

    req = SimpleNamespace(kernel=SimpleNamespace(config={"CONFIG_HZ": "1000"}))
    tcg = _tcg_params(req, AccelChoice(Accel.TCG, False, ""))  # type: ignore[arg-type]
    assert "tsc=reliable" in tcg and any(p.startswith("lpj=") for p in tcg) == bool(tcg_lpj(1000))
    assert _tcg_params(req, AccelChoice(Accel.KVM, False, "")) == ()  # type: ignore[arg-type]
