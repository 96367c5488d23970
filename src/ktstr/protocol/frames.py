"""Frame layer: bytes <-> (kind, seq, payload, crc_ok). Stdlib only.

Wire format (little-endian, 24-byte header, see docs/protocol.md)::

    0  magic    4  b"KTSF"
    4  version  1  PROTOCOL_VERSION
    5  flags    1  0 (reserved)
    6  kind     2  MessageKind
    8  seq      4  sender's frame counter (gaps reveal loss)
   12  length   4  payload length
   16  pcrc     4  CRC32 of the payload
   20  hcrc     4  CRC32 of bytes 0..19 (so a garbage length is never trusted)
   24  payload

The decoder is fed arbitrary chunks. It never buffers more than one maximal
frame plus one chunk, resynchronizes on the magic after garbage, and treats
a frame with a bad payload CRC as torn: it is reported (``crc_ok=False``) and
scanning restarts right after its header, so intact frames that a torn one
swallowed are still recovered.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

MAGIC = b"KTSF"
PROTOCOL_VERSION = 1
HEADER = struct.Struct("<4sBBHIII")  # magic, version, flags, kind, seq, length, pcrc
HEADER_SIZE = HEADER.size + 4  # + header CRC
#: Default bound on one payload; larger frames are counted and skipped.
MAX_PAYLOAD = 1 << 20


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    seq: int
    payload: bytes
    crc_ok: bool = True


def encode_frame(kind: int, payload: bytes = b"", seq: int = 0) -> bytes:
    """Encode one frame. ``kind`` and ``seq`` must fit u16 and u32."""
    if not 0 <= kind <= 0xFFFF:
        raise ValueError(f"frame kind {kind} does not fit in 16 bits")
    head = HEADER.pack(
        MAGIC, PROTOCOL_VERSION, 0, kind, seq & 0xFFFFFFFF, len(payload), zlib.crc32(payload)
    )
    return head + struct.pack("<I", zlib.crc32(head)) + payload


@dataclass(slots=True)
class DecoderStats:
    frames: int = 0
    crc_errors: int = 0
    garbage_bytes: int = 0
    bad_headers: int = 0
    oversized: int = 0
    bad_version: int = 0
    truncated: int = 0


@dataclass(slots=True)
class FrameDecoder:
    """Incremental, resynchronizing decoder. ``feed()`` yields frames."""

    max_payload: int = MAX_PAYLOAD
    stats: DecoderStats = field(default_factory=DecoderStats)
    _buf: bytearray = field(default_factory=bytearray)
    _pos: int = 0

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes, return every frame now complete (possibly none)."""
        if self._pos > 65536 or self._pos > len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data
        return list(self._scan(final=False))

    def finish(self) -> list[Frame]:
        """End of stream: report a pending partial frame as truncated and
        recover any intact frames after its header."""
        out = list(self._scan(final=True))
        self._buf.clear()
        self._pos = 0
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def _scan(self, *, final: bool) -> Iterator[Frame]:
        buf, st = self._buf, self.stats
        while True:
            start = buf.find(MAGIC, self._pos)
            if start < 0:
                # Keep a possible partial magic at the end.
                keep = min(len(MAGIC) - 1, len(buf) - self._pos)
                if final:
                    keep = 0
                st.garbage_bytes += len(buf) - self._pos - keep
                self._pos = len(buf) - keep
                return
            st.garbage_bytes += start - self._pos
            self._pos = start
            if len(buf) - start < HEADER_SIZE:
                if final:
                    st.truncated += 1
                    st.garbage_bytes += len(buf) - start
                    self._pos = len(buf)
                return
            _, version, _flags, kind, seq, length, pcrc = HEADER.unpack_from(buf, start)
            (hcrc,) = struct.unpack_from("<I", buf, start + HEADER.size)
            if zlib.crc32(memoryview(buf)[start : start + HEADER.size]) != hcrc:
                st.bad_headers += 1
                self._skip(1)
                continue
            if version != PROTOCOL_VERSION:
                st.bad_version += 1
                self._skip(HEADER_SIZE)
                continue
            if length > self.max_payload:
                st.oversized += 1
                self._skip(HEADER_SIZE)
                continue
            end = start + HEADER_SIZE + length
            if len(buf) < end:
                if not final:
                    return
                st.truncated += 1
                yield Frame(kind, seq, bytes(buf[start + HEADER_SIZE :]), crc_ok=False)
                self._skip(HEADER_SIZE)
                continue
            payload = bytes(buf[start + HEADER_SIZE : end])
            if zlib.crc32(payload) == pcrc:
                st.frames += 1
                self._pos = end
                yield Frame(kind, seq, payload, crc_ok=True)
            else:
                st.crc_errors += 1
                yield Frame(kind, seq, payload, crc_ok=False)
                self._skip(HEADER_SIZE)

    def _skip(self, n: int) -> None:
        self._pos += n
        self.stats.garbage_bytes += n


def decode_all(data: bytes, max_payload: int = MAX_PAYLOAD) -> list[Frame]:
    """Decode a complete captured stream."""
    dec = FrameDecoder(max_payload=max_payload)
    return dec.feed(data) + dec.finish()
