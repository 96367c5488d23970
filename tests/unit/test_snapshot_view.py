"""Reading snapshots after a run: the accessor tests use and what
``ktstr snapshot show`` prints, on snapshots kept from real runs
(tests/vm/test_snapshots.py: scx_qmap on 6.12 and 7.3, scx_simple with
12 spinners on 4 CPUs)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ktstr.cli import main
from ktstr.evaluate.snapshots import Snapshot, SnapshotError
from ktstr.host.gdbstub import GdbError, PacketParser, encode
from ktstr.snapshot_report import render

DATA = Path(__file__).parents[1] / "data"


def load(name: str) -> Snapshot:
    return Snapshot(json.loads(gzip.open(DATA / f"snapshot-{name}.json.gz").read()))


def test_qmap_on_612_by_name_path_map_and_cpu():
    s = load("qmap-6.12")
    assert s.scx["ops"] == "qmap" and s.trigger == "request"
    assert s.var("nr_enqueued") > 0 and s.var("slice_ns") == 20_000_000
    ctx = s.map("cpu_ctx_stor")
    assert ctx.type == "PERCPU_ARRAY" and set(ctx.cpu(2)) >= {"dsp_idx", "dsp_cnt"}
    queues = s.map("queue_arr")
    assert [e["map"]["name"] for e in queues.entries] == [f"queue{i}" for i in range(5)]
    assert all(isinstance(p, int) for e in queues.entries for p in e["map"]["entries"])
    pid = next(e["key"]["pid"] for e in s.map("task_ctx_stor").entries if e["key"].get("pid"))
    assert "core_sched_seq" in s.map("task_ctx_stor")[pid]
    assert s.map("bss").name == "scx_qmap.bss"  # the section's short name
    with pytest.raises(SnapshotError, match="per-CPU"):
        s.map("monitor_timer").cpu(0)
    with pytest.raises(SnapshotError, match=r"no map 'cpu_ctx'.*cpu_ctx_stor"):
        s.map("cpu_ctx")


def test_qmap_on_73_keeps_its_counters_in_the_arena():
    s = load("qmap-7.3")
    assert s.var("qa.nr_enqueued") >= s.var("qa.nr_dispatched") > 0
    assert "dsp_cnt" in s.var("qa.cpu_ctxs[2]")
    with pytest.raises(SnapshotError, match=r"inside: qa\.nr_enqueued"):
        s.var("nr_enqueued")
    with pytest.raises(SnapshotError, match="no 'nope'"):
        s.var("qa.nope")


def test_simple_dsqs_local_and_shared():
    s = load("simple-7.3")
    assert [s.dsq(local=c).nr for c in range(4)] == [len(s.dsq(local=c).tasks) for c in range(4)]
    shared = s.dsq(0)
    assert shared.nr == len(shared.pids()) >= 4
    assert all(t["comm"] == "python" and t["weight"] for t in shared.tasks)
    with pytest.raises(SnapshotError, match="no DSQ 7"):
        s.dsq(7)
    with pytest.raises(SnapshotError, match="no cpu 9"):
        s.dsq(local=9)


def test_show_prints_queues_per_cpu_and_maps_as_tables(tmp_path, capsys):
    text = render(load("simple-7.3"))
    assert "sched_ext: simple SCX_ENABLED" in text and "DSQ 0x0:" in text
    assert text.count("\n  ") >= 4 and "maps (" in text
    table = render(load("qmap-6.12"), map_name="cpu_ctx_stor", cpu=2)
    assert table.splitlines()[1].split() == ["key", "dsp_idx", "dsp_cnt", "avg_weight",
                                             "cpuperf_target"]  # fmt: skip
    assert [ln.split()[:2] for ln in table.splitlines()[2:]] == [["0", "cpu2"]]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(load("qmap-7.3").doc))
    assert main(["snapshot", "show", str(path), "--map", "arena"]) == 0
    assert "qa.nr_enqueued" in capsys.readouterr().out
    assert main(["snapshot", "show", str(path), "--map", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ktstr: error: no map 'nope'") and "Traceback" not in err
    path.write_text("{}")
    assert main(["snapshot", "show", str(path)]) == 2


def test_gdb_packets_parse_in_any_chunks_and_bad_ones_end_the_session():
    wire = b"+" + encode("T05thread:01;") + b"+" + encode("OK")
    for cut in range(len(wire)):
        p = PacketParser()
        assert p.feed(wire[:cut]) + p.feed(wire[cut:]) == ["T05thread:01;", "OK"]
    with pytest.raises(GdbError, match="checksum"):
        PacketParser().feed(b"$OK#00")
    with pytest.raises(GdbError, match="over"):
        PacketParser().feed(b"$" + b"x" * (70 * 1024))


def test_a_part_that_faults_loses_only_that_part():
    """At a scheduler's exit the kernel frees its DSQs while its exit state
    is still there (6.12: 'address is not mapped' in the DSQ table): the
    snapshot keeps the exit, names what it could not read, and shows it."""
    from ktstr.inspect.memory import FaultError
    from ktstr.inspect.snapshot import Snapshotter

    class Value:
        def value_(self) -> int:
            return 4242

    class TornDown(Snapshotter):
        def scx_state(self, sch):
            return {"enable_state": "SCX_DISABLING", "exit_kind": "SCX_EXIT_ERROR_BPF"}

        def dsqs(self, sch):
            raise FaultError("virtual 0xffffc9000025c0f8 is not mapped")

        def maps(self):
            return []

    doc = TornDown({"jiffies_64": Value()}).take()  # no CPUs to walk either
    assert doc["scx"]["exit_kind"] == "SCX_EXIT_ERROR_BPF" and doc["dsqs"] == []
    assert doc["errors"]["dsqs"] == "FaultError: virtual 0xffffc9000025c0f8 is not mapped"
    assert set(doc["errors"]) == {"dsqs", "cpus"}
    meta = {"schema": "ktstr.snapshot/1", "name": "exit", "trigger": "scheduler_exit"}
    text = render(Snapshot({**doc, **meta}))
    assert "not read: dsqs: FaultError: virtual 0xffffc9000025c0f8 is not mapped" in text
