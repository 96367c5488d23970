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


def test_fragment_survives_olddefconfig(source):
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
