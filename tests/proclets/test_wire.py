"""The bytes of a proclet call and its reply (proclets._wire): round trips, and hostile
bytes that end in microrpc's ProtocolError, never in another exception."""
import pytest
from hypothesis import given, settings, strategies as st

from microrpc.errors import ProtocolError
from proclets import _protocol as P
from proclets._wire import HEADER, decode_call, decode_reply, encode_call, encode_reply

BIG = (1 << 64) - 1


def test_a_call_round_trips():
    body = encode_call(BIG, "incr", (1, "x", None, [2.5]), None, 7, 8, 6)
    assert decode_call(body) == (BIG, "incr", [1, "x", None, [2.5]], None, 7, 8, 6)
    body = encode_call(1, "épée", [], {"k": b"v"}, 2, 3, 0)
    assert decode_call(body) == (1, "épée", [], {"k": b"v"}, 2, 3, 0)


def test_a_reply_round_trips_and_a_none_value_is_only_the_code():
    assert decode_reply(encode_reply(P.OK, {"a": [1]})) == (P.OK, {"a": [1]})
    assert encode_reply(P.RETRY, None) == bytes([P.RETRY])
    assert decode_reply(bytes([P.RETRY])) == (P.RETRY, None)


@pytest.mark.parametrize("method, args, error", [
    ("", (), "1 to 255 bytes"),
    ("m" * 256, (), "1 to 255 bytes"),
    (b"incr", (), "is a str"),
    ("incr", (object(),), "cannot be sent"),
])
def test_what_cannot_be_sent_is_a_type_error(method, args, error):
    with pytest.raises(TypeError, match=error):
        encode_call(1, method, args, None, 1, 1, 0)


def test_a_result_that_cannot_be_sent_is_a_type_error():
    with pytest.raises(TypeError, match="cannot be sent"):
        encode_reply(P.OK, {1, 2})


def valid():
    return encode_call(5, "incr", (1,), {"by": 2}, 9, 4, 3)


@pytest.mark.parametrize("body, error", [
    (b"", "its header has"),
    (valid()[:HEADER - 1], "its header has"),
    (valid()[:HEADER] + b"incr", "cut short"),
    (valid()[:33] + b"\x00" + valid()[34:], "cut short"),
    (valid()[:34] + b"\xff\xfe\xfd\xfc" + valid()[38:], "not UTF-8"),
    (valid()[:32] + b"\x00\x04incr\x81\xa1a\x01", "not an array"),
    (valid()[:32] + b"\x01" + valid()[33:-6] + b"\x90", "cut short|truncated|undecodable"),
    (encode_call(5, "incr", (1,), None, 9, 4, 3)[:32] + b"\x01"
     + encode_call(5, "incr", (1,), None, 9, 4, 3)[33:], "keyword arguments"),
])
def test_malformed_calls_are_protocol_errors(body, error):
    with pytest.raises(ProtocolError, match=error):
        decode_call(body)


def test_malformed_replies_are_protocol_errors():
    for body in (b"", None, [0, 1], bytes([P.OK]) + b"\xc1"):
        with pytest.raises(ProtocolError):
            decode_reply(body)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80))
def test_random_bytes_decode_or_raise_protocol_error(body):
    try:
        pid, method, args, kwargs, lease, seq, ack = decode_call(body)
    except ProtocolError:
        return
    assert type(method) is str and type(args) is list
    assert kwargs is None or type(kwargs) is dict


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 47), st.integers(1, 255))
def test_a_flipped_byte_decodes_or_raises_protocol_error(where, flip):
    body = bytearray(valid())
    where %= len(body)
    body[where] ^= flip
    try:
        decode_call(bytes(body))
    except ProtocolError:
        pass
