"""`ktstr kernel build --config-only` on a real kernel tree: the fragment is
applied on tinyconfig + kvm_guest and every option must survive olddefconfig.
(A full build takes ~25 min on 2 cores; the configure stage is where the
fragment can break, and it runs here for real.)"""

from __future__ import annotations

import glob

import pytest

from ktstr.errors import KconfigError
from ktstr.host import kconfig
from ktstr.host.kernel_build import BuildRequest, build_kernel


@pytest.fixture(scope="module")
def source() -> str:
    found = sorted(glob.glob("/usr/src/linux-source-6.1[2-9]*.tar.*"))
    if not found:
        pytest.skip("host lacks a kernel source tarball (apt-get install linux-source-6.12)")
    return found[-1]


@pytest.fixture(scope="module", params=["6.12", "7.3"])
def any_source(request) -> str:
    """Both kernel generations' sources: 7.x moved sched_ext to kernel/sched/ext/."""
    found = sorted(glob.glob(f"/usr/src/linux-source-{request.param}*.tar.*"))
    if not found:
        pytest.skip(f"host lacks linux-source-{request.param} (./scripts/setup installs it)")
    return found[-1]


def test_fragment_survives_olddefconfig(any_source):
    source = any_source
    config = build_kernel(BuildRequest(source=source, config_only=True))
    cfg = kconfig.parse_config(config.read_text())
    assert kconfig.missing_options(cfg, kconfig.fragment()) == []
    assert kconfig.required_missing(cfg) == []
    assert int(cfg["CONFIG_NR_CPUS"]) >= 256


def test_option_that_cannot_survive_is_named(source, monkeypatch):
    text = kconfig.fragment_text() + "CONFIG_KVM_AMD_SEV=y\n"  # needs KVM, which is off
    monkeypatch.setattr(kconfig, "fragment_text", lambda: text)
    with pytest.raises(KconfigError) as exc:
        build_kernel(BuildRequest(source=source, config_only=True))
    assert exc.value.missing == ["CONFIG_KVM_AMD_SEV (want y, have n)"]
    assert "CONFIG_KVM_AMD_SEV" in str(exc.value)


def test_selftests_runner_builds_and_runs(source, kernels, tmp_path):
    """``kernel build --schedulers`` also builds the sched_ext selftests'
    runner: here from the 6.12 source against the shared 6.12 vmlinux's BTF
    (the step after a kernel build), then run in a guest of that kernel."""
    import shutil

    from ktstr.host.kernel_build import build_selftests, llvm_suffix, resolve_source
    from ktstr.runner import BootRequest
    from ktstr.runner.kselftest import run_kselftest
    from ktstr.spec.topology import Topology
    from tests.vm.conftest import kernel_for

    try:
        llvm_suffix()
    except Exception as exc:
        pytest.skip(f"host lacks clang for BPF: {exc} (KTSTR_SCHED_TOOLCHAIN=1 ./scripts/setup)")
    k612 = kernel_for(kernels, "6.12")
    out = tmp_path / "out"
    out.mkdir()
    (out / "vmlinux").symlink_to(k612.directory / "vmlinux")
    runner = build_selftests(resolve_source(source, None), out, tmp_path / "dest", 2)
    entry = tmp_path / "kernel"
    shutil.copytree(
        k612.directory, entry, symlinks=True, ignore=shutil.ignore_patterns("selftests")
    )
    (entry / "selftests" / "sched_ext").mkdir(parents=True)
    shutil.copy2(runner, entry / "selftests" / "sched_ext" / "runner")
    from ktstr.host.kernel import load_kernel

    req = BootRequest(kernel=load_kernel(entry), topology=Topology.parse("1n1l2c1t"), job={})
    records, _ = run_kselftest(req, tmp_path / "res", ["minimal"])
    assert [(r.test, r.status.value) for r in records] == [("minimal", "pass")]
