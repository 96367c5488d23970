import gzip
from pathlib import Path

import pytest

from ktstr.errors import KconfigError, KernelError
from ktstr.host import kconfig
from ktstr.host.kernel import (
    cached_kernels,
    check_kernel,
    clean_cache,
    import_kernel,
    load_kernel,
    resolve_kernel,
)

GOOD = "\n".join(
    ["# Linux/x86 6.12.1 Kernel Configuration"]
    + [f"{opt}=y" for opt in kconfig.RUN_REQUIRED]
    + ["CONFIG_NR_CPUS=64", "# CONFIG_FW_CFG_SYSFS is not set"]
)


def make_kernel_dir(path: Path, config: str = GOOD) -> Path:
    path.mkdir(parents=True)
    (path / "bzImage").write_bytes(b"\x00" * 64)
    (path / "config").write_text(config)
    (path / "schedulers").mkdir()
    (path / "schedulers" / "scx_simple").write_bytes(b"\x7fELF")
    return path


def test_parse_config():
    cfg = kconfig.parse_config('CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="str"\nCONFIG_N=64\n')
    assert cfg == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "str", "CONFIG_N": "64"}
    assert kconfig.config_version(GOOD) == "6.12.1"


def test_missing_options_compares_nr_cpus_as_at_least():
    want = {"CONFIG_NR_CPUS": "256", "CONFIG_X": "y"}
    assert kconfig.missing_options({"CONFIG_NR_CPUS": "512", "CONFIG_X": "y"}, want) == []
    missing = kconfig.missing_options({"CONFIG_NR_CPUS": "64"}, want)
    assert missing == ["CONFIG_NR_CPUS (want >= 256, have 64)", "CONFIG_X (want y, have n)"]


def test_fragment_has_what_the_issue_requires():
    frag = kconfig.fragment()
    for opt in (
        "CONFIG_SCHED_CLASS_EXT",
        "CONFIG_DEBUG_INFO_BTF",
        "CONFIG_BPF_JIT",
        "CONFIG_KPROBE_EVENTS",
        "CONFIG_CPUSETS",
        "CONFIG_SCHED_MC",
        "CONFIG_SCHED_SMT",
        "CONFIG_NUMA",
        "CONFIG_PVH",
        "CONFIG_VIRTIO_FS",
        "CONFIG_9P_FS",
        "CONFIG_IKCONFIG_PROC",
        "CONFIG_SCHEDSTATS",
        "CONFIG_VMCORE_INFO",
        "CONFIG_FW_CFG_SYSFS",
        "CONFIG_DEVTMPFS",
        "CONFIG_ACPI",
    ):
        assert frag[opt] == "y", opt
    assert int(frag["CONFIG_NR_CPUS"]) >= 256


def test_extract_ikconfig():
    blob = b"junk" + b"IKCFG_ST" + gzip.compress(GOOD.encode()) + b"IKCFG_ED" + b"tail"
    assert kconfig.extract_ikconfig(blob) == GOOD
    assert kconfig.extract_ikconfig(b"no marker") is None


def test_check_kernel_passes_with_notes(tmp_path):
    k = load_kernel(make_kernel_dir(tmp_path / "k"))
    notes = check_kernel(k)
    assert any("CONFIG_NR_CPUS" in n for n in notes)
    assert k.nr_cpus == 64 and k.version == "6.12.1"
    assert k.schedulers_dir == tmp_path / "k" / "schedulers"


def test_kernel_without_sched_ext_is_rejected(tmp_path):
    cfg = GOOD.replace("CONFIG_SCHED_CLASS_EXT=y", "# CONFIG_SCHED_CLASS_EXT is not set")
    k = load_kernel(make_kernel_dir(tmp_path / "k", cfg))
    with pytest.raises(KconfigError) as exc:
        check_kernel(k)
    assert "CONFIG_SCHED_CLASS_EXT" in str(exc.value) and exc.value.missing


def test_load_kernel_errors(tmp_path):
    with pytest.raises(KernelError, match="does not exist"):
        load_kernel(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KernelError, match="no kernel image"):
        load_kernel(tmp_path / "empty")


def test_cache_import_resolve_clean(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("KTSTR_KERNEL", raising=False)
    with pytest.raises(KernelError, match="no kernel"):
        resolve_kernel(None)
    src = make_kernel_dir(tmp_path / "src")
    entry = import_kernel(src)
    assert (entry / "bzImage").is_file() and (entry / "schedulers" / "scx_simple").is_file()
    assert resolve_kernel(None).directory == entry
    assert resolve_kernel(entry.name).directory == entry  # by cache entry name
    monkeypatch.setenv("KTSTR_KERNEL", str(src))
    assert resolve_kernel(None).directory == src  # env beats cache
    assert resolve_kernel(str(entry)).directory == entry  # --kernel beats env
    monkeypatch.setenv("KTSTR_KERNEL", str(tmp_path / "missing"))
    with pytest.raises(KernelError, match=r"\$KTSTR_KERNEL"):
        resolve_kernel(None)
    other = make_kernel_dir(tmp_path / "src2", GOOD.replace("6.12.1", "6.13.0"))
    import_kernel(other)
    assert len(cached_kernels()) == 2
    removed, busy = clean_cache(keep=1)
    assert len(removed) == 1 and busy == [] and len(cached_kernels()) == 1
    assert not list((tmp_path / "cache" / "ktstr" / "kernels").glob(".*tmp"))


def test_import_needs_an_image(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "config").write_text(GOOD)
    with pytest.raises(KernelError, match="no vmlinux"):
        import_kernel(src)
    root = tmp_path / "cache" / "ktstr" / "kernels"
    assert not root.exists() or [p.name for p in root.iterdir()] == [".lock"]  # nothing left


def test_another_build_of_the_same_version_is_another_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    a = import_kernel(make_kernel_dir(tmp_path / "a"))
    b_dir = make_kernel_dir(tmp_path / "b")
    (b_dir / "bzImage").write_bytes(b"\x01" * 64)  # a patched kernel, same config
    b = import_kernel(b_dir)
    assert a != b and a.name.startswith("6.12.1-imported-")
    assert import_kernel(tmp_path / "a") == a  # the same source again: the same entry


def test_a_crafted_version_stays_inside_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    evil = GOOD.replace("6.12.1", "../../../../evil/x")
    entry = import_kernel(make_kernel_dir(tmp_path / "src", evil))
    assert entry.parent == tmp_path / "cache" / "ktstr" / "kernels"
    assert "/" not in entry.name and ".." not in entry.name
    assert not (tmp_path / "evil").exists()


def test_an_unusable_kernel_is_never_cached_or_default(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("KTSTR_KERNEL", raising=False)
    good = import_kernel(make_kernel_dir(tmp_path / "good"))
    no_scx = GOOD.replace("CONFIG_SCHED_CLASS_EXT=y", "# CONFIG_SCHED_CLASS_EXT is not set")
    with pytest.raises(KconfigError):
        import_kernel(make_kernel_dir(tmp_path / "bad", no_scx.replace("6.12.1", "6.14.0")))
    assert cached_kernels() == [good] and resolve_kernel(None).directory == good
    root = tmp_path / "cache" / "ktstr" / "kernels"
    assert sorted(p.name for p in root.iterdir()) == [".lock", good.name]


def _import_in_child(args):
    import os

    os.environ["XDG_CACHE_HOME"] = args[0]
    return str(import_kernel(Path(args[1])))


def test_parallel_imports_of_one_kernel_all_succeed(tmp_path):
    import multiprocessing

    src = make_kernel_dir(tmp_path / "src")
    with multiprocessing.get_context("fork").Pool(3) as pool:
        got = pool.map(_import_in_child, [(str(tmp_path / "cache"), str(src))] * 3)
    assert len(set(got)) == 1 and (Path(got[0]) / "meta.json").is_file()
    root = tmp_path / "cache" / "ktstr" / "kernels"
    assert [p.name for p in root.iterdir() if p.name != ".lock"] == [Path(got[0]).name]


def test_clean_keeps_a_kernel_a_running_vm_uses(tmp_path, monkeypatch):
    from ktstr.host.kernel import kernel_in_use

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    old = import_kernel(make_kernel_dir(tmp_path / "old"))
    import_kernel(make_kernel_dir(tmp_path / "new", GOOD.replace("6.12.1", "6.13.0")))
    with kernel_in_use(load_kernel(old)):
        removed, busy = clean_cache(keep=0)
    assert busy == [old] and old.is_dir() and len(removed) == 1
    assert clean_cache(keep=0) == ([old], [])
