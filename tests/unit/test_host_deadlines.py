"""Every host-side send and QMP call has a deadline: a guest that never reads
its port, or a QEMU that stops answering, cannot block the host."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from ktstr.errors import VmError
from ktstr.host.channel import Channel
from ktstr.host.qmp import Qmp


def test_a_send_to_a_guest_that_never_reads_gives_up(tmp_path):
    host, guest = socket.socketpair()
    ch = Channel(host, tmp_path / "frames.bin")
    ch.start()
    try:
        for _ in range(200):  # until the socket buffer is full
            t0 = time.monotonic()
            if not ch.send(b"x" * 65536, timeout=0.5):
                break
        else:
            pytest.fail("200 sends of 64 KiB never filled the socket")
        assert 0.4 < time.monotonic() - t0 < 2
    finally:
        guest.close()
        ch.close()


def _fake_qemu(path, *, greet: bool, answer: bool) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)

    def receive(conn: socket.socket) -> dict:
        buf = b""
        while True:
            buf += conn.recv(4096)
            try:
                return json.JSONDecoder().raw_decode(buf.decode())[0]
            except ValueError:
                continue

    def serve() -> None:
        conn, _ = srv.accept()
        if greet:
            greeting = {"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 2},
                                            "package": ""}, "capabilities": []}}  # fmt: skip
            conn.sendall(json.dumps(greeting).encode() + b"\n")
            request = receive(conn)  # qmp_capabilities
            reply = {"return": {}} | ({"id": request["id"]} if "id" in request else {})
            conn.sendall(json.dumps(reply).encode() + b"\n")
            receive(conn)  # the command, never answered
            if answer:
                conn.sendall(b'{"return": {}}\n')
        time.sleep(5)
        conn.close()
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_qmp_connect_to_a_silent_qemu_fails_in_time(tmp_path):
    sock = tmp_path / "qmp.sock"
    _fake_qemu(sock, greet=False, answer=False)
    q = Qmp(sock)
    t0 = time.monotonic()
    with pytest.raises(VmError, match="cannot connect to QMP"):
        q.connect(timeout=1.0)
    assert time.monotonic() - t0 < 5
    q.close()


def test_a_qmp_command_qemu_never_answers_fails_in_time(tmp_path):
    sock = tmp_path / "qmp.sock"
    _fake_qemu(sock, greet=True, answer=False)
    q = Qmp(sock, timeout=0.5)
    q.connect(timeout=3.0)
    t0 = time.monotonic()
    with pytest.raises(VmError, match=r"QMP stop: no answer from QEMU within 0\.5s"):
        q.stop()
    assert time.monotonic() - t0 < 2
    q.close()
