import os

from ktstr.guest import agent
from ktstr.protocol.frames import decode_all
from ktstr.protocol.messages import MessageKind, WorkerReport, WorkerReports
from ktstr.protocol.validate import decode_payload


def test_port_send_survives_partial_writes(monkeypatch, tmp_path):
    """A virtio-serial write may take only part of a buffer: every frame
    must still arrive whole."""
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:1000])))
    path = tmp_path / "port"
    with open(path, "wb", buffering=0) as f:
        port = agent.Port(f)
        report = WorkerReport(cgroup="cg0", index=0, pid=1, wake_lat_us=list(range(20000)))
        big = WorkerReports(cgroup="cg0", reports=[report])
        port.send(port.enc.message(big))
        port.send(port.enc.sys_ready())
    frames = decode_all(path.read_bytes())
    assert [(f.kind, f.crc_ok) for f in frames] == [
        (MessageKind.WORKER_REPORTS, True),
        (MessageKind.SYS_READY, True),
    ]
    assert decode_payload(frames[0].kind, frames[0].payload) == big
