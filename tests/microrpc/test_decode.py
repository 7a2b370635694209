"""Bounded msgpack decoding (microrpc/_decode.pyx): the walk accepts exactly what msgpack
decodes, within the limits, and refuses bombs before building anything."""
import time

import msgpack
import pytest

import microrpc
from microrpc import DecodeLimits
from microrpc._decode import DEFAULT_DECODE_LIMITS

BIG = 16 * 1024 * 1024 - 64

VALUES = [
    None, True, False, 0, 127, 128, 255, 256, 65535, 65536, 2**32, 2**64 - 1, -1, -32, -33,
    -128, -129, -2**15, -2**31 - 1, -2**63, 0.5, 1e300, "", "x" * 31, "x" * 32, "é" * 300,
    "x" * 70_000, b"", b"y" * 255, b"y" * 256, b"y" * 70_000, [], [1] * 15, [1] * 16,
    [1] * 70_000, {}, {"a": 1}, {str(i): i for i in range(16)},
    {str(i): [i] for i in range(70_000)}, [[[[[]]]]], {"k": {"k": {"k": [None, 1.5]}}},
    msgpack.ExtType(1, b""), msgpack.ExtType(2, b"a"), msgpack.ExtType(3, b"ab"),
    msgpack.ExtType(4, b"abcd"), msgpack.ExtType(5, b"a" * 8), msgpack.ExtType(6, b"a" * 16),
    msgpack.ExtType(7, b"a" * 17), msgpack.ExtType(8, b"a" * 300),
    msgpack.ExtType(9, b"a" * 70_000),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_everything_msgpack_encodes_decodes_the_same(value):
    body = msgpack.packb(value, use_single_float=False)
    assert DEFAULT_DECODE_LIMITS.unpack(body) == msgpack.unpackb(body)


def test_single_floats_and_every_prefix_of_a_mixed_body():
    body = msgpack.packb([1.5, {"a": [None, b"x", msgpack.ExtType(1, b"abc")]}, -7, "s"],
                         use_single_float=True)
    assert DEFAULT_DECODE_LIMITS.unpack(body) == msgpack.unpackb(body)
    for cut in range(len(body)):                     # truncated anywhere: refused, no crash
        with pytest.raises(microrpc.ProtocolError, match="truncated"):
            DEFAULT_DECODE_LIMITS.unpack(body[:cut])


@pytest.mark.parametrize("body, why", [
    (msgpack.packb([0] * 11), "max_array_len=10"),
    (msgpack.packb({str(i): 0 for i in range(11)}), "max_map_len=10"),
    (msgpack.packb([[0] * 5] * 5), "max_items=20"),
    (msgpack.packb([[[[0]]]]), "max_depth=3"),
    (msgpack.packb("x" * 11), "max_str_len=10"),
    (msgpack.packb(b"x" * 11), "max_bin_len=10"),
    (msgpack.packb(msgpack.ExtType(1, b"x" * 11)), "max_ext_len=10"),
    (b"\xc1", "reserved byte"),
    (msgpack.packb(1) + b"\x00", "extra bytes"),
    (b"\xdd\xff\xff\xff\xff", "max_array_len"),      # a length no body could hold
    (b"\xdb\x00\x00\x00\x05" + b"x", "truncated"),
])
def test_over_a_limit_or_malformed_is_a_protocol_error(body, why):
    limits = DecodeLimits(max_depth=3, max_items=20, max_array_len=10, max_map_len=10,
                          max_str_len=10, max_bin_len=10, max_ext_len=10)
    with pytest.raises(microrpc.ProtocolError, match=why):
        limits.unpack(body)


def test_the_bombs_of_issue_10_are_refused_fast():
    flat = b"\xdd" + BIG.to_bytes(4, "big") + b"\x90" * BIG      # 16.7M empty arrays
    # The same count split so that no container is over max_array_len.
    nested = b"\xdc\x01\x00" + (b"\xdd" + (65536).to_bytes(4, "big") + b"\x90" * 65536) * 256
    for bomb in (flat, nested):
        t = time.perf_counter()
        with pytest.raises(microrpc.ProtocolError, match="max_array_len|max_items"):
            DEFAULT_DECODE_LIMITS.unpack(bomb)
        # Refused after at most max_items header reads (~1 ms); unbounded it was 17.5 s.
        assert time.perf_counter() - t < 0.5


def test_depth_limit_and_its_cap():
    assert DecodeLimits(max_depth=2).unpack(msgpack.packb([[1]])) == [[1]]
    with pytest.raises(microrpc.ProtocolError, match="max_depth=2"):
        DecodeLimits(max_depth=2).unpack(msgpack.packb([[[1]]]))
    deep = b"\x91" * 2000 + b"\xc0"                   # deeper than msgpack's own 1024
    with pytest.raises(microrpc.ProtocolError, match="max_depth=1024"):
        DecodeLimits(max_depth=1024).unpack(deep)
    with pytest.raises(ValueError):
        DecodeLimits(max_depth=1025)
    with pytest.raises(ValueError):
        DecodeLimits(max_items=-1)


def test_limits_are_plain_data_in_statistics():
    limits = DecodeLimits(max_items=5)
    assert limits.as_dict()["max_items"] == 5 and limits.as_dict()["max_array_len"] == 5
    assert "max_items=5" in repr(limits)
