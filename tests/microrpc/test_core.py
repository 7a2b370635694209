"""The sans-I/O protocol core: frame encoding, the incremental parser, the call table."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microrpc import ProtocolError, _core

frames_st = st.lists(
    st.one_of(
        st.builds(
            lambda cid, name, body, codec, session, dl, credit: _core.encode_frame(
                _core.REQUEST, cid, name, body, codec=codec, session=session,
                deadline_us=dl, credit=credit),
            st.integers(0, 2**64 - 1), st.binary(min_size=1, max_size=40),
            st.binary(max_size=300), st.integers(0, 2), st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
        st.builds(
            lambda kind, cid, body, flags: _core.encode_frame(kind, cid, b"", body, flags=flags),
            st.sampled_from([_core.RESPONSE, _core.ERROR, _core.CREDIT, _core.CANCEL,
                             _core.PING, _core.PONG]),
            st.integers(0, 2**64 - 1), st.binary(max_size=300), st.integers(0, 1)),
    ),
    max_size=12,
)


def parse_chunks(chunks, max_size=_core.DEFAULT_MAX_MESSAGE_SIZE):
    parser = _core.FrameParser(max_size)
    out = []
    for chunk in chunks:
        parser.feed(chunk)
        out.extend(parser.frames())
    assert parser.buffered() == 0
    return out


def test_fields_round_trip():
    data = _core.encode_frame(_core.REQUEST, 2**64 - 1, b"method", b"body", codec=_core.MSGPACK,
                              session=7, deadline_us=1500, credit=3)
    assert len(data) == _core.HEADER + len(b"method") + len(b"body")
    (f,) = parse_chunks([data])
    assert (f.kind, f.codec, f.call_id, f.session, f.deadline_us, f.credit, f.name, f.body) == (
        _core.REQUEST, _core.MSGPACK, 2**64 - 1, 7, 1500, 3, b"method", b"body")


def test_header_layout_is_little_endian_as_documented():
    data = _core.encode_frame(_core.RESPONSE, 0x0102030405060708, b"", b"xy",
                              flags=_core.HAS_CREDIT, session=0x0A0B0C0D, credit=5)
    assert data[:4] == b"\xb5R\x01\x02"
    assert data[4] == _core.HAS_CREDIT
    assert data[8:16] == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert data[16:20] == bytes([0x0D, 0x0C, 0x0B, 0x0A])
    assert data[24:28] == b"\x05\x00\x00\x00"
    assert data[28:32] == b"\x02\x00\x00\x00"


@settings(max_examples=150, deadline=None)
@given(frames=frames_st, data=st.data())
def test_any_split_gives_the_same_frames(frames, data):
    stream = b"".join(frames)
    whole = parse_chunks([stream])
    assert len(whole) == len(frames)
    assert parse_chunks([bytes([b]) for b in stream]) == whole
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    assert parse_chunks(pieces) == whole


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(min_size=1, max_size=200), prefix=frames_st)
def test_malformed_input_raises_only_protocol_error(junk, prefix):
    parser = _core.FrameParser(4096)
    parser.feed(b"".join(prefix) + junk)
    try:
        while parser.next() is not None:
            pass
    except ProtocolError:
        # Once broken, the parser refuses to go on: lengths can no longer be trusted.
        with pytest.raises(ProtocolError):
            parser.next()


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"XX" + b[2:], "bad magic"),
    (lambda b: b[:2] + b"\x09" + b[3:], "version"),
    (lambda b: b[:3] + b"\x63" + b[4:], "kind"),
    (lambda b: b[:4] + b"\x80" + b[5:], "flag"),
    (lambda b: b[:5] + b"\x07" + b[6:], "codec"),
    (lambda b: b[:6] + b"\x00\x00" + b[8:], "name length"),
])
def test_each_header_check(mutate, message):
    good = _core.encode_frame(_core.REQUEST, 1, b"m", b"body")
    parser = _core.FrameParser()
    parser.feed(mutate(good))
    with pytest.raises(ProtocolError, match=message):
        parser.next()


def test_oversized_frame_refused_from_its_header_alone():
    parser = _core.FrameParser(1000)
    header = _core.encode_frame(_core.RESPONSE, 1, b"", b"x" * 2000)[:_core.HEADER]
    parser.feed(header)        # the body never arrives: the header is enough to refuse it
    with pytest.raises(ProtocolError, match="max_message_size"):
        parser.next()


def test_name_on_a_response_is_refused():
    data = bytearray(_core.encode_frame(_core.RESPONSE, 1, b"", b"abc"))
    data[6] = 1                # name_len = 1 on a response
    parser = _core.FrameParser()
    parser.feed(bytes(data))
    with pytest.raises(ProtocolError, match="method name"):
        parser.next()


def test_encode_rejects_bad_arguments():
    with pytest.raises(ValueError):
        _core.encode_frame(_core.REQUEST, 1, b"", b"")          # requests need a name
    with pytest.raises(ValueError):
        _core.encode_frame(_core.RESPONSE, 1, b"name", b"")     # only requests have one
    with pytest.raises(ValueError):
        _core.encode_frame(99, 1)


def test_parser_buffer_grows_for_large_frames_and_compacts():
    parser = _core.FrameParser()
    big = _core.encode_frame(_core.RESPONSE, 5, b"", b"z" * 300_000)
    small = _core.encode_frame(_core.PONG, 6)
    for i in range(0, len(big), 7000):
        parser.feed(big[i:i + 7000])
    parser.feed(small)
    frames = parser.frames()
    assert [f.call_id for f in frames] == [5, 6]
    assert frames[0].body == b"z" * 300_000


def test_out_buffer_batches_frames():
    out = _core.OutBuffer(16)            # starts tiny: must grow
    for i in range(100):
        out.append(_core.RESPONSE, i, b"", b"r" * i)
    data = out.take()
    assert len(out) == 0
    assert [f.call_id for f in parse_chunks([data])] == list(range(100))


def test_error_codes_are_declared_once_and_documented():
    """codecs re-exports the core's numbers, and docs/wire.md's table shows the same ones."""
    import re
    from pathlib import Path

    from microrpc import codecs

    names = ["REMOTE_ERROR", "METHOD_NOT_FOUND", "DEADLINE_EXCEEDED", "MESSAGE_TOO_LARGE",
             "OVERLOADED", "BAD_REQUEST", "UNAVAILABLE", "WRONG_TARGET", "RETRY_ELSEWHERE",
             "LOST", "IN_PROGRESS", "LEASE_EXPIRED", "UNAUTHENTICATED"]
    core = {n: getattr(_core, n) for n in names}
    assert {n: getattr(codecs, n) for n in names} == core
    assert sorted(core.values()) == list(range(1, len(names) + 1))    # no gap, no repeat
    doc = (Path(__file__).resolve().parents[2] / "docs" / "wire.md").read_text()
    table = {m[2]: int(m[1]) for m in re.finditer(r"^\| (\d+) \| ([A-Z_]+) \|", doc, re.M)}
    assert table == core


def _big_stream():
    """Small frames around two bodies large enough to be read in place (and one just
    under that size), with the byte strings a reader must get back."""
    big1 = bytes(range(256)) * 1024                    # 256 KiB
    big2 = b"\x90" * (3 * 1024 * 1024 + 7)
    medium = b"m" * (128 * 1024 - 1)
    frames = [
        _core.encode_frame(_core.PING, 1),
        _core.encode_frame(_core.REQUEST, 2, b"put", big1, codec=_core.RAW, session=5),
        _core.encode_frame(_core.RESPONSE, 3, b"", b"small"),
        _core.encode_frame(_core.REQUEST, 4, b"x", big2, codec=_core.MSGPACK, credit=9),
        _core.encode_frame(_core.REQUEST, 5, b"y", medium),
        _core.encode_frame(_core.CANCEL, 6),
    ]
    return b"".join(frames), [(1, b""), (2, big1), (3, b"small"), (4, big2), (5, medium),
                              (6, b"")]


@pytest.mark.parametrize("chunk", [1, 31, 33, 4096, 65536, 100_003, 1 << 30])
def test_large_bodies_are_read_in_place_in_any_split(chunk):
    data, expected = _big_stream()
    frames = parse_chunks([data[i:i + chunk] for i in range(0, len(data), chunk)])
    assert [(f.call_id, f.body) for f in frames] == expected
    assert frames[1].name == b"put" and frames[1].session == 5
    assert frames[3].credit == 9 and frames[3].codec == _core.MSGPACK


def test_a_large_body_arriving_counts_as_buffered_until_its_frame_is_taken():
    data, _ = _big_stream()
    parser = _core.FrameParser()
    cut = len(_core.encode_frame(_core.PING, 1)) + 40 + 200_000  # inside the first big body
    parser.feed(data[:cut])
    assert [f.call_id for f in parser.frames()] == [1]
    assert parser.buffered() == cut - _core.HEADER    # the rest of the stream, not yet a frame
    parser.feed(data[cut:])
    assert [f.call_id for f in parser.frames()] == [2, 3, 4, 5, 6]
    assert parser.buffered() == 0
