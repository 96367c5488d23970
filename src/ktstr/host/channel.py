"""Host end of the virtio-serial port: raw bytes -> frames, plus a transcript.

Sends have a deadline: a guest that never reads its port cannot block the
host's main loop or watchdog.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import threading
import time
from pathlib import Path

from ktstr.host.capped import LOG_CAP, CappedFile
from ktstr.protocol.frames import Frame, FrameDecoder

#: Longest a host -> guest frame may wait for room in the port.
SEND_TIMEOUT = 5.0


class Channel:
    """Reads a connected socket on a thread; frames arrive on ``frames``.

    Everything received is also appended to ``transcript`` (the raw stream,
    decodable later with ``ktstr.protocol.frames.decode_all``), up to a cap.
    """

    EOF = None

    def __init__(self, sock: socket.socket, transcript: Path, cap: int = LOG_CAP) -> None:
        self._sock = sock
        self.transcript = transcript
        self.log = CappedFile(transcript, cap, text_note=False)
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
            while True:
                try:
                    data = self._sock.recv(1 << 18)
                except OSError as exc:
                    if not self._closing:
                        self.error = exc
                    break
                if not data:
                    break
                self.log.write(data)
                for frame in self.decoder.feed(data):
                    self.frames.put(frame)
            for frame in self.decoder.finish():
                self.frames.put(frame)
        except Exception as exc:  # stored and re-raised by the owner
            self.error = exc
        finally:
            self.log.close()
            self.done.set()
            self.frames.put(self.EOF)

    def send(self, data: bytes, timeout: float = SEND_TIMEOUT) -> bool:
        """Send a whole frame within ``timeout``; False if the guest does not
        make room for it in time (the rest of the frame is not sent)."""
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        with self._send_lock:
            while view:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                _, writable, _ = select.select([], [self._sock], [], left)
                if not writable:
                    return False
                try:
                    n = self._sock.send(view, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                view = view[n:]
        return True

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        if self._thread.ident is not None:  # started
            self._thread.join(5.0)
