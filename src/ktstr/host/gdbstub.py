"""A breakpoint in the guest kernel through QEMU's gdbstub: the host's way to
freeze the guest at an exact kernel function (sched_ext's disable path),
before the kernel changes the state a snapshot must show.

Only what that needs of the GDB remote protocol: packets (``$data#ck``,
acknowledged with ``+``), ``Z0``/``z0`` to set and clear a breakpoint,
``c`` to continue, ``D`` to detach (QEMU resumes the guest), and stop
replies (``T05``: the breakpoint; ``T02``: paused). QEMU pauses the guest
when a client connects; ``arm`` sets the breakpoint and continues at once.

Two rules of QEMU's stub shape the rest. Any byte it receives while the
guest runs stops the guest, so nothing but the interrupt byte (0x03) is
sent then; and it sends one stop reply per continue. So while a client is
attached the stub is the only way the host freezes the guest: ``freeze``
(0x03, wait for the stop reply) and ``thaw`` (``c``). A QMP ``stop`` would
use up the stop reply; the owner also asks QMP now and then whether the
guest sits at the breakpoint unreported (status ``debug``).

A reader thread parses everything QEMU sends; a malformed or oversized
packet ends the session (the breakpoint is then simply never reported).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from pathlib import Path

#: Longest packet accepted from QEMU (its replies here are a few bytes).
MAX_PACKET = 64 * 1024


class GdbError(Exception):
    """The gdbstub refused a command or went away."""


def _checksum(data: bytes) -> bytes:
    return b"%02x" % (sum(data) & 0xFF)


def encode(data: str) -> bytes:
    raw = data.encode("ascii")
    return b"$" + raw + b"#" + _checksum(raw)


class PacketParser:
    """Bytes from the stub -> packets (str); acks and noise are dropped."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        out: list[str] = []
        while True:
            start = self._buf.find(b"$")
            if start < 0:
                self._buf.clear()
                return out
            end = self._buf.find(b"#", start)
            if end < 0 or len(self._buf) < end + 3:
                del self._buf[:start]
                if len(self._buf) > MAX_PACKET:
                    raise GdbError(f"gdbstub packet over {MAX_PACKET} bytes")
                return out
            body = bytes(self._buf[start + 1 : end])
            ck = bytes(self._buf[end + 1 : end + 3])
            del self._buf[: end + 3]
            if ck.lower() != _checksum(body):
                raise GdbError("gdbstub packet with a bad checksum")
            out.append(body.decode("ascii", "replace"))


class Breakpoint:
    """One software breakpoint at ``address`` for the life of a VM."""

    def __init__(self, path: Path, address: int, timeout: float = 5.0) -> None:
        self.address = address
        self.timeout = timeout
        self.hit = threading.Event()
        self.hit_at: float | None = None
        self.error = ""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(str(path))
        self._sock.settimeout(None)
        self._replies: queue.Queue[str | None] = queue.Queue()
        self._stops: queue.Queue[int] = queue.Queue()
        self._send_lock = threading.Lock()
        self._running = False  # QEMU paused the guest when we connected
        self._thread = threading.Thread(target=self._read, name="ktstr-gdb", daemon=True)
        self._thread.start()

    def arm(self) -> None:
        """Set the breakpoint and let the guest run (it paused on connect)."""
        kind = 1
        reply = self.call(f"Z0,{self.address:x},{kind}")
        if reply != "OK":
            raise GdbError(f"gdbstub refused a breakpoint at {self.address:#x}: {reply!r}")
        self._continue()

    def freeze(self, timeout: float = 2.0) -> bool:
        """Stop the guest through the stub (True once it is stopped)."""
        if not self._running:
            return True
        while not self._stops.empty():
            self._stops.get_nowait()
        try:
            with self._send_lock:
                self._sock.sendall(b"\x03")
            self._stops.get(timeout=timeout)
        except (OSError, queue.Empty):
            return False
        return True

    def thaw(self) -> None:
        """Let the guest run again, unless it stopped at the breakpoint (the
        owner handles that hit, then ``resume``s)."""
        if not self.hit.is_set():
            self._continue()

    def resume(self) -> None:
        """After a hit: clear the breakpoint and detach (QEMU lets the guest
        go on)."""
        with contextlib.suppress(GdbError, OSError):
            self.call(f"z0,{self.address:x},1")
        self.detach()

    def mark_hit(self) -> None:
        """The guest sits at the breakpoint though no stop reply said so."""
        self._running = False
        self.hit_at = time.monotonic()
        self.hit.set()

    def detach(self) -> None:
        with contextlib.suppress(GdbError, OSError):
            self.call("D")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(2.0)

    # -- the protocol ---------------------------------------------------------
    def _send(self, data: str) -> None:
        with self._send_lock:
            self._sock.sendall(encode(data))

    def _continue(self) -> None:
        self._running = True
        self._send("c")

    def call(self, data: str) -> str:
        """Send a command; its reply (stop replies go elsewhere)."""
        while not self._replies.empty():
            self._replies.get_nowait()
        self._send(data)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                reply = self._replies.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise GdbError(f"gdbstub did not answer {data[:16]!r}") from None
            if reply is None:
                raise GdbError("gdbstub closed the connection")
            return reply

    def _read(self) -> None:
        parser = PacketParser()
        try:
            while True:
                data = self._sock.recv(4096)
                if not data:
                    break
                for packet in parser.feed(data):
                    with self._send_lock:
                        self._sock.sendall(b"+")
                    self._dispatch(packet)
        except (OSError, GdbError) as exc:
            self.error = str(exc)
        finally:
            self._replies.put(None)

    def _dispatch(self, packet: str) -> None:
        if packet[:1] in ("T", "S") and len(packet) >= 3:
            signal = int(packet[1:3], 16) if _hex(packet[1:3]) else -1
            self._running = False
            if signal == 5:  # SIGTRAP: our breakpoint
                self.hit_at = time.monotonic()
                self.hit.set()
            self._stops.put(signal)
            return
        self._replies.put(packet)


def _hex(s: str) -> bool:
    return len(s) > 0 and all(c in "0123456789abcdefABCDEF" for c in s)
