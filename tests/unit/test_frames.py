import os
import random
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ktstr.protocol.frames import (
    HEADER_SIZE,
    MAGIC,
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    decode_all,
    encode_frame,
)
from ktstr.protocol.messages import (
    Encoder,
    Exit,
    Lifecycle,
    MessageKind,
    SchedExit,
    SnapshotRequest,
    Stimulus,
)

DATA = Path(__file__).parent.parent / "data"


def sample_stream() -> tuple[bytes, list[Frame]]:
    enc = Encoder()
    parts = [
        enc.sys_ready(),
        enc.message(Lifecycle(phase="ready", detail={"uptime_s": 1.5})),
        enc.text(MessageKind.STDOUT, "hello\n" * 40),
        enc.message(Stimulus(t_ms=12.5, op="add_cgroup", detail={"name": "cg0"})),
        enc.message(SnapshotRequest(request_id=7, capture=1)),
        enc.message(SchedExit(exit_kind="error", reason="scx_bpf_error", dump="x" * 3000)),
        enc.message(Exit(code=0)),
    ]
    frames = []
    for raw in parts:
        kind, seq, _length = struct.unpack_from("<HII", raw, 6)
        frames.append(Frame(kind, seq, raw[HEADER_SIZE:], True))
    return b"".join(parts), frames


def test_wire_format_is_pinned():
    raw = encode_frame(MessageKind.SYS_READY, b"", seq=1)
    assert raw.hex() == (DATA / "sys_ready_seq1.hex").read_text().strip()
    assert raw[:4] == MAGIC and len(raw) == HEADER_SIZE == 24


def test_golden_stream_decodes():
    stream, frames = sample_stream()
    golden = DATA / "stream.bin"
    if os.environ.get("KTSTR_REGEN_GOLDEN"):
        golden.write_bytes(stream)
    assert golden.read_bytes() == stream
    assert decode_all(stream) == frames


def test_split_at_every_offset():
    stream, frames = sample_stream()
    for cut in range(len(stream) + 1):
        dec = FrameDecoder()
        got = dec.feed(stream[:cut]) + dec.feed(stream[cut:]) + dec.finish()
        assert got == frames, cut


def test_byte_by_byte():
    stream, frames = sample_stream()
    dec = FrameDecoder()
    got = [f for b in stream for f in dec.feed(bytes([b]))]
    assert got == frames


def test_oversized_length_is_skipped_not_buffered():
    dec = FrameDecoder(max_payload=1024)
    huge = encode_frame(MessageKind.STDOUT, b"a" * 4096, 1)
    good = encode_frame(MessageKind.EXIT, b'{"code":0}', 2)
    got = dec.feed(huge + good) + dec.finish()
    assert dec.stats.oversized == 1
    assert [f.kind for f in got if f.crc_ok] == [MessageKind.EXIT]


def test_torn_frame_is_flagged_and_following_frame_recovered():
    a = encode_frame(MessageKind.STDOUT, b"x" * 100, 1)
    b = encode_frame(MessageKind.EXIT, b'{"code":3}', 2)
    torn = a[: HEADER_SIZE + 10]  # writer died mid-payload, then b follows
    got = decode_all(torn + b)
    assert any(f.kind == MessageKind.STDOUT and not f.crc_ok for f in got)
    assert [f for f in got if f.crc_ok] == [Frame(MessageKind.EXIT, 2, b'{"code":3}', True)]


def test_bad_header_crc_resyncs():
    a = bytearray(encode_frame(MessageKind.STDOUT, b"abc", 1))
    a[10] ^= 0xFF  # corrupt the length field: header CRC catches it
    b = encode_frame(MessageKind.STDOUT, b"def", 2)
    dec = FrameDecoder()
    got = dec.feed(bytes(a) + b) + dec.finish()
    assert [f.payload for f in got if f.crc_ok] == [b"def"]
    assert dec.stats.bad_headers == 1


def test_payload_bitflip_marks_crc_bad():
    raw = bytearray(encode_frame(MessageKind.SCHED_EXIT, b'{"reason":"x"}', 1))
    raw[-2] ^= 0x01
    (frame,) = [f for f in decode_all(bytes(raw)) if f.kind == MessageKind.SCHED_EXIT]
    assert not frame.crc_ok


frames_st = st.lists(
    st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=300)), min_size=0, max_size=8
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    garbage=st.lists(st.binary(max_size=200), min_size=1, max_size=9),
    frames=frames_st,
    seed=st.integers(0, 2**32),
)
def test_fuzz_intact_frames_survive_garbage(garbage, frames, seed):
    """Frames interleaved with random garbage, random chunking: every intact
    frame is recovered, in order, and nothing raises."""
    rnd = random.Random(seed)
    stream = bytearray()
    expected = []
    for i, (kind, payload) in enumerate(frames):
        stream += garbage[i % len(garbage)]
        stream += encode_frame(kind, payload, i + 1)
        expected.append(Frame(kind, i + 1, payload, True))
    stream += garbage[-1]
    dec = FrameDecoder(max_payload=4096)
    got = []
    pos = 0
    while pos < len(stream):
        n = rnd.randint(1, 64)
        got += dec.feed(bytes(stream[pos : pos + n]))
        pos += n
        assert dec.buffered <= 4096 + HEADER_SIZE + 64
    got += dec.finish()
    intact = [f for f in got if f.crc_ok]
    # garbage may by chance contain a valid frame; ours must appear in order
    it = iter(intact)
    assert all(any(g == e for g in it) for e in expected)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000), st.integers(1, 97))
def test_fuzz_random_bytes_never_raise_and_stay_bounded(data, chunk):
    dec = FrameDecoder(max_payload=512)
    for i in range(0, len(data), chunk):
        dec.feed(data[i : i + chunk])
        assert dec.buffered <= 512 + HEADER_SIZE + chunk
    dec.finish()


@settings(max_examples=200, deadline=None)
@given(
    frames=frames_st, flips=st.lists(st.integers(0, 10**6), max_size=5), cut=st.integers(0, 10**6)
)
def test_fuzz_bitflips_and_truncation(frames, flips, cut):
    stream = bytearray(b"".join(encode_frame(k, p, i) for i, (k, p) in enumerate(frames)))
    for f in flips:
        if stream:
            stream[f % len(stream)] ^= 1 << (f % 8)
    if stream:
        del stream[cut % len(stream) :]
    originals = {(k, i, p) for i, (k, p) in enumerate(frames)}
    for frame in decode_all(bytes(stream)):
        if frame.crc_ok:  # damage never yields a "valid" frame nobody sent
            assert (frame.kind, frame.seq, frame.payload) in originals


def test_flooding_garbage_without_magic_keeps_memory_flat():
    dec = FrameDecoder()
    for _ in range(200):
        dec.feed(b"\x00" * 65536)
        assert dec.buffered < 8
    assert dec.stats.garbage_bytes >= 200 * 65536 - 8


@pytest.mark.parametrize("kind", [-1, 0x10000])
def test_encode_rejects_bad_kind(kind):
    with pytest.raises(ValueError):
        encode_frame(kind, b"")


def test_stats_classify_rejections():
    good = encode_frame(MessageKind.EXIT, b'{"code":0}', 9)
    v2 = bytearray(encode_frame(MessageKind.EXIT, b"{}", 1))
    v2[4] = PROTOCOL_VERSION + 1  # another protocol version, header CRC made valid again
    v2[20:24] = struct.pack("<I", zlib.crc32(bytes(v2[:20])))
    corrupt_big = bytearray(encode_frame(MessageKind.STDOUT, b"", 2))
    corrupt_big[12:16] = struct.pack("<I", 10**9)  # huge length, header CRC now wrong
    dec = FrameDecoder(max_payload=64)
    got = dec.feed(bytes(v2) + bytes(corrupt_big) + good) + dec.finish()
    assert [f for f in got if f.crc_ok] == [Frame(MessageKind.EXIT, 9, b'{"code":0}', True)]
    assert dec.stats.bad_version == 1
    assert dec.stats.bad_headers >= 1 and dec.stats.oversized == 0
    assert dec.stats.frames == 1


def _nested_claims(headers: int, length: int) -> bytes:
    """``headers`` valid headers back to back, each claiming ``length`` bytes
    of payload (bad payload CRC), then filler: every header swallows the next."""
    head = b"".join(
        encode_frame(MessageKind.STDOUT, b"", i + 1)[:12] + struct.pack("<II", length, 0)
        for i in range(headers)
    )
    out = bytearray()
    for i in range(headers):
        h = bytearray(head[i * 20 : i * 20 + 20])
        out += h + struct.pack("<I", zlib.crc32(bytes(h)))
    return bytes(out) + b"\x00" * length


def test_nested_length_claims_return_bounded_output_quickly():
    """200 headers each claiming 1 MiB, then 1 MiB of filler: the torn frames
    come back as small excerpts (not 200 MiB of copies), in bounded time."""
    import time

    from ktstr.protocol.frames import MAX_PAYLOAD, TORN_EXCERPT

    stream = _nested_claims(200, MAX_PAYLOAD)
    dec = FrameDecoder()
    t0 = time.monotonic()
    got = []
    for i in range(0, len(stream), 1 << 16):
        got += dec.feed(stream[i : i + (1 << 16)])
    got += dec.finish()
    assert time.monotonic() - t0 < 2.0
    assert all(not f.crc_ok and len(f.payload) <= TORN_EXCERPT for f in got)
    assert sum(len(f.payload) for f in got) <= len(stream)
    assert dec.stats.crc_errors >= 1 and dec.stats.skipped_torn > 0


def test_torn_frames_carry_an_excerpt_only():
    from ktstr.protocol.frames import TORN_EXCERPT

    raw = bytearray(encode_frame(MessageKind.WORKER_REPORTS, b"r" * 100_000, 1))
    raw[-1] ^= 1
    (frame,) = decode_all(bytes(raw))
    assert not frame.crc_ok and frame.payload == b"r" * TORN_EXCERPT


@settings(max_examples=100, deadline=None)
@given(headers=st.integers(1, 60), length=st.integers(0, 4096), chunk=st.integers(1, 5000))
def test_fuzz_nested_claims_output_is_linear_in_input(headers, length, chunk):
    """Overlapping torn frames repeat bytes, but only a bounded number of
    times: what comes out stays within a constant factor of what went in."""
    from ktstr.protocol.frames import MAX_TORN_RUN

    stream = _nested_claims(headers, length)
    dec = FrameDecoder(max_payload=4096)
    out = 0
    for i in range(0, len(stream), chunk):
        out += sum(len(f.payload) for f in dec.feed(stream[i : i + chunk]))
    out += sum(len(f.payload) for f in dec.finish())
    assert out <= (MAX_TORN_RUN + 1) * len(stream)
