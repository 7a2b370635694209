"""pytest-benchmark micro-benchmarks of the protocol core: frame encode and decode.

They run with the suite (a few hundred ms); `pytest tests/microrpc/test_bench_frames.py
--benchmark-only` prints the timing table. Each also checks what it measured is right.
"""
import struct

from microrpc import _core

BODY = b"x" * 32
ONE = _core.encode_frame(_core.REQUEST, 1, b"echo", BODY, codec=_core.RAW)
BATCH = b"".join(_core.encode_frame(_core.RESPONSE, i, b"", BODY) for i in range(64))


def test_encode_one_request(benchmark):
    out = benchmark(_core.encode_frame, _core.REQUEST, 1, b"echo", BODY, codec=_core.RAW)
    assert out == ONE


def test_encode_64_responses_into_one_buffer(benchmark):
    def encode():
        buf = _core.OutBuffer()
        for i in range(64):
            buf.append(_core.RESPONSE, i, b"", BODY)
        return buf.take()

    assert benchmark(encode) == BATCH


def test_decode_one_request(benchmark):
    parser = _core.FrameParser()

    def decode():
        parser.feed(ONE)
        return parser.next()

    frame = benchmark(decode)
    assert frame.name == b"echo" and frame.body == BODY


def test_decode_64_responses_from_one_read(benchmark):
    parser = _core.FrameParser()

    def decode():
        parser.feed(BATCH)
        return parser.frames()

    frames = benchmark(decode)
    assert [f.call_id for f in frames] == list(range(64))


def test_peer_struct_pack_of_the_same_header(benchmark):
    """The pure-Python way to build the same header, for comparison in the table."""
    header = struct.Struct("<2sBBBBHQIIII")

    def encode():
        return header.pack(b"\xb5R", 1, 1, 0, 0, 4, 1, 0, 0, 0, len(BODY)) + b"echo" + BODY

    assert benchmark(encode) == ONE
