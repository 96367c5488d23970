"""Golden files for the QEMU command line (regenerate: KTSTR_REGEN_GOLDEN=1)."""

import os
import shlex
from pathlib import Path

import pytest

from ktstr.host.qemu_argv import Accel, VmSpec, kernel_cmdline, qemu_argv
from ktstr.spec.topology import Topology

DATA = Path(__file__).parent.parent / "data"


def spec(**kw):
    base = dict(
        kernel=Path("/k/vmlinux"),
        topology=Topology.parse("2n4l2c2t"),
        run_dir=Path("/run/ktstr-golden"),
        init=("/usr/bin/python3", "-m", "ktstr.guest.agent"),
        qemu="qemu-system-x86_64",
    )
    base.update(kw)
    return VmSpec(**base)


CASES = {
    "qemu10-tcg-2n4l2c2t": spec(),
    "qemu72-tcg-single-1n2l2c1t": spec(
        qemu_version=(7, 2, 0), tcg_multithread=False, topology=Topology.parse("1n2l2c1t")
    ),
    "qemu10-kvm-3n6l4c1t": spec(
        accel=Accel.KVM, topology=Topology.parse("3n6l4c1t"), memory_mb=3000
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    text = "\n".join(shlex.quote(a) for a in qemu_argv(CASES[name])) + "\n"
    path = DATA / f"{name}.argv"
    if os.environ.get("KTSTR_REGEN_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_llc_mapping_uses_smp_cache_only_where_supported():
    new = qemu_argv(spec())
    old = qemu_argv(spec(qemu_version=(9, 1, 0)))
    assert any("smp-cache.0.topology=die" in a for a in new)
    assert not any("smp-cache" in a for a in old)
    assert "sockets=2,dies=2,cores=2,threads=2" in new[new.index("-smp") + 1]


def test_memory_split_per_node_and_share_is_readonly():
    argv = qemu_argv(spec(memory_mb=3000, topology=Topology.parse("3n3l1c1t")))
    assert argv[argv.index("-m") + 1] == "3000M"
    assert sum(a.startswith("memory-backend-ram") and "size=1000M" in a for a in argv) == 3
    fsdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-fsdev"]
    assert fsdevs and all("readonly=on" in f for f in fsdevs)


def test_cmdline_passes_init_args_after_double_dash():
    line = kernel_cmdline(spec())
    assert line.endswith(
        "init=/usr/bin/python3 panic=-1 random.trust_cpu=on -- -m ktstr.guest.agent"
    )
