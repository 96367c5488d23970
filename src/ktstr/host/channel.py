"""Host end of the virtio-serial port: raw bytes -> frames, plus a transcript."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from pathlib import Path

from ktstr.protocol.frames import Frame, FrameDecoder


class Channel:
    """Reads a connected socket on a thread; frames arrive on ``frames``.

    Everything received is also appended to ``transcript`` (the raw stream,
    decodable later with ``ktstr.protocol.frames.decode_all``).
    """

    EOF = None

    def __init__(self, sock: socket.socket, transcript: Path) -> None:
        self._sock = sock
        self.transcript = transcript
        self.decoder = FrameDecoder()
        self.frames: queue.Queue[Frame | None] = queue.Queue()
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._closing = False
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ktstr-channel", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            with self.transcript.open("ab") as out:
                while True:
                    try:
                        data = self._sock.recv(1 << 18)
                    except OSError as exc:
                        if not self._closing:
                            self.error = exc
                        break
                    if not data:
                        break
                    out.write(data)
                    for frame in self.decoder.feed(data):
                        self.frames.put(frame)
                for frame in self.decoder.finish():
                    self.frames.put(frame)
        except Exception as exc:  # stored and re-raised by the owner
            self.error = exc
        finally:
            self.done.set()
            self.frames.put(self.EOF)

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self._sock.sendall(data)

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5.0)
