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
a frame with a bad payload CRC as torn: it is reported (``crc_ok=False``,
with at most ``TORN_EXCERPT`` bytes of its payload) and scanning restarts
right after its header, so intact frames that a torn one swallowed are
still recovered. After ``MAX_TORN_RUN`` torn frames in a row the decoder
skips a torn frame's whole claimed length instead: nested headers that each
claim a large payload would otherwise cost quadratic CRC work.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

MAGIC = b"KTSF"
PROTOCOL_VERSION = 3
HEADER = struct.Struct("<4sBBHIII")  # magic, version, flags, kind, seq, length, pcrc
_FULL_HEADER = struct.Struct("<4sBBHIIII")  # ... + header CRC
HEADER_SIZE = _FULL_HEADER.size
#: Default bound on one payload; larger frames are counted and skipped.
MAX_PAYLOAD = 1 << 20
#: Bytes of a torn frame's payload that are kept as evidence.
TORN_EXCERPT = 256
#: Torn frames in a row after which rescanning inside them stops.
MAX_TORN_RUN = 8


class Frame(NamedTuple):
    """One decoded frame. A tuple: constructing it is on the hot path.
    A torn frame (``crc_ok`` False) carries only an excerpt of its payload."""

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
    """What the decoder met besides good frames, by kind."""

    frames: int = 0
    crc_errors: int = 0
    garbage_bytes: int = 0
    bad_headers: int = 0
    oversized: int = 0
    bad_version: int = 0
    truncated: int = 0
    #: Bytes inside torn frames skipped without rescanning (``MAX_TORN_RUN``).
    skipped_torn: int = 0


@dataclass(slots=True)
class FrameDecoder:
    """Incremental, resynchronizing decoder. ``feed()`` yields frames."""

    max_payload: int = MAX_PAYLOAD
    stats: DecoderStats = field(default_factory=DecoderStats)
    _buf: bytearray = field(default_factory=bytearray)
    _pos: int = 0
    _torn_run: int = 0

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes, return every frame now complete (possibly none)."""
        if self._pos > 65536 or self._pos > len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data
        return self._scan(final=False)

    def finish(self) -> list[Frame]:
        """End of stream: report a pending partial frame as truncated and
        recover any intact frames after its header."""
        out = self._scan(final=True)
        self._buf.clear()
        self._pos = 0
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def _scan(self, *, final: bool) -> list[Frame]:
        buf = self._buf
        out: list[Frame] = []
        size, pos, good = len(buf), self._pos, 0
        crc32, unpack, hsize = zlib.crc32, _FULL_HEADER.unpack_from, HEADER_SIZE
        while True:
            start = buf.find(MAGIC, pos)
            if start != pos:
                if start < 0:
                    keep = 0 if final else min(len(MAGIC) - 1, size - pos)
                    self.stats.garbage_bytes += size - pos - keep
                    pos = size - keep
                    break
                self.stats.garbage_bytes += start - pos
                pos = start
            if size - start < hsize:
                if final:
                    self.stats.truncated += 1
                    self.stats.garbage_bytes += size - start
                    pos = size
                break
            _, version, _flags, kind, seq, length, pcrc, hcrc = unpack(buf, start)
            end = start + hsize + length
            sane = (
                crc32(buf[start : start + hsize - 4]) == hcrc
                and version == PROTOCOL_VERSION
                and length <= self.max_payload
            )
            if not sane or size < end:
                if sane and not final:
                    break  # a valid header whose payload has not arrived yet
                pos = self._reject(start, version, length, out)
                continue
            payload = bytes(buf[start + hsize : end])
            if crc32(payload) == pcrc:
                good += 1
                pos = end
                out.append(Frame(kind, seq, payload, True))
                self._torn_run = 0
            else:  # torn: report it, then rescan right after its header
                out.append(Frame(kind, seq, payload[:TORN_EXCERPT], False))
                pos = self._torn(start, end)
        self.stats.frames += good
        self._pos = pos
        return out

    def _torn(self, start: int, end: int) -> int:
        """Count a torn frame; returns where scanning resumes."""
        st = self.stats
        st.crc_errors += 1
        self._torn_run += 1
        if self._torn_run > MAX_TORN_RUN:
            st.skipped_torn += end - start
            st.garbage_bytes += end - start
            return end
        st.garbage_bytes += HEADER_SIZE
        return start + HEADER_SIZE

    def _reject(self, start: int, version: int, length: int, out: list[Frame]) -> int:
        """Rare paths of ``_scan``; returns where scanning resumes."""
        buf, st, hsize = self._buf, self.stats, HEADER_SIZE
        (hcrc,) = struct.unpack_from("<I", buf, start + hsize - 4)
        if zlib.crc32(buf[start : start + hsize - 4]) != hcrc:
            st.bad_headers += 1  # garbage that happened to contain the magic
            st.garbage_bytes += 1
            return start + 1
        if version != PROTOCOL_VERSION:
            st.bad_version += 1
        elif length > self.max_payload:
            st.oversized += 1
        else:  # end of stream, and the payload never fully arrived
            st.truncated += 1
            kind, seq = struct.unpack_from("<HI", buf, start + 6)
            excerpt = bytes(buf[start + hsize : start + hsize + TORN_EXCERPT])
            out.append(Frame(kind, seq, excerpt, False))
        st.garbage_bytes += hsize
        return start + hsize


def decode_all(data: bytes, max_payload: int = MAX_PAYLOAD) -> list[Frame]:
    """Decode a complete captured stream."""
    dec = FrameDecoder(max_payload=max_payload)
    return dec.feed(data) + dec.finish()
