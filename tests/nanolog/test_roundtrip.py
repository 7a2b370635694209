"""Round trips through the compiled writer and the pure-Python reference decoder."""
import io
import math
import threading
from decimal import Decimal
from enum import IntEnum

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import nanolog
from nanolog import read_reference
from nanolog.reference import format_text

ints = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**200), 2**200))
floats = st.floats(allow_nan=True, allow_infinity=True)
texts = st.text(alphabet=st.characters(), max_size=40)  # includes lone surrogates
any_arg = st.one_of(ints, floats, texts, st.binary(max_size=40), st.booleans(), st.none())


def conversion_for(value):
    """A %-conversion that accepts ``value``, chosen from the value's type."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, bytes)):
        return st.sampled_from(["%s", "%r", "%a", "%10s", "%-4r"])
    if isinstance(value, int):
        return st.sampled_from(["%d", "%s", "%x", "%+08d", "%o", "%r", "%i", "%5X"])
    if math.isfinite(value):
        return st.sampled_from(["%f", "%s", "%.3e", "%g", "%r", "%10.2f", "%d", "%G"])
    return st.sampled_from(["%f", "%s", "%r", "%g"])


@st.composite
def calls(draw):
    args = draw(st.lists(any_arg, max_size=7))
    pieces = [draw(st.sampled_from(["", "x=", " | ", "100%% ", "é"]))]
    for a in args:
        pieces.append(draw(conversion_for(a)))
        pieces.append(draw(st.sampled_from(["", " ", ",", "%%"])))
    level = draw(st.sampled_from(["debug", "info", "warning", "error", "critical"]))
    return level, "".join(pieces), tuple(args)


def same(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return repr(a) == repr(b)
    return type(a) is type(b) and a == b


@settings(max_examples=int(__import__("os").environ.get("NANOLOG_EXAMPLES", 60)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(calls(), min_size=1, max_size=20))
def test_every_argument_type_round_trips(tmp_path_factory, as_tuple, batch):
    path = tmp_path_factory.mktemp("rt") / "rt.nlog"
    with nanolog.Logger(path, buffer_size=4096) as log:
        for level, fmt, args in batch:
            getattr(log, level)(fmt, *args)
    records = list(read_reference(path))
    assert len(records) == len(batch)
    for rec, (level, fmt, args) in zip(records, batch):
        assert rec.level == nanolog.LEVELS[level.upper()]
        assert rec.format == fmt
        assert rec.message == (fmt % args if args else fmt)
        assert len(rec.args) == len(args)
        assert all(same(x, y) for x, y in zip(rec.args, args)), (rec.args, args)
    # The compiled decoder agrees with the reference, record by record and in its text
    # renderer (which formats the common conversions in C).
    assert [as_tuple(r) for r in nanolog.read(path)] == [as_tuple(r) for r in records]
    out = io.BytesIO()
    assert nanolog.write_text(path, out) is None
    assert out.getvalue() == "".join(format_text(r) + "\n" for r in records).encode(
        "utf-8", "backslashreplace")


class Color(IntEnum):
    RED = 1


def test_other_types_take_the_documented_slow_path(logpath):
    class Thing:
        def __repr__(self):
            return "<thing>"
        __str__ = __repr__

    with nanolog.Logger(logpath) as log:
        log.info("%s and %r and %d and %5.1f", Thing(), Thing(), Color.RED, Decimal("2.25"))
        log.info("%s|%d", Color.RED, Color.RED)
        log.info("%c%c", 65, "z")
    recs = list(read_reference(logpath))
    assert [r.message for r in recs] == ["<thing> and <thing> and 1 and   2.2",
                                         "%s|%d" % (Color.RED, Color.RED), "Az"]
    # The converted text is what the args hold: the conversion ran at call time.
    assert recs[0].args == ("<thing>", "<thing>", "1", "  2.2")


def test_stdlib_message_semantics(logpath):
    with nanolog.Logger(logpath) as log:
        log.info("100%")                    # no args: the format is not applied at all
        log.info("100%%")
        log.info("%(user)s logged in from %(ip)s", {"user": "ann", "ip": "::1"})
        log.info("%s", {"a": 1})            # a dict for a plain %s
        log.info("%s %s", "a", "b")
        log.info("no args but a %d")
        log.info(12345)                      # a non-str message, like logging allows
        log.log(25, "custom level %d", 7)
    msgs = [r.message for r in read_reference(logpath)]
    assert msgs == ["100%", "100%%", "ann logged in from ::1", "{'a': 1}", "a b",
                    "no args but a %d", "12345", "custom level 7"]


@pytest.mark.parametrize("fmt,args,exc", [
    ("%d", ("x",), TypeError),
    ("%s %s", ("only one",), TypeError),
    ("%s", (1, 2), TypeError),
    ("%y", (1,), ValueError),
    ("%x", (1.5,), TypeError),
    # These were logged and then made the decoders raise (issue #10):
    ("%d", (float("inf"),), OverflowError),
    ("%i", (float("nan"),), ValueError),
    ("%d|%u", (1, float("-inf")), OverflowError),
    ("%\u0663d", (1,), ValueError),      # a non-ASCII digit is no width to '%'
])
def test_bad_calls_raise_at_the_call_site_and_log_nothing(logpath, fmt, args, exc):
    with nanolog.Logger(logpath) as log:
        with pytest.raises(exc):
            log.info(fmt, *args)
        log.info("after")
    assert [r.message for r in read_reference(logpath)] == ["after"]


def test_widths_over_the_limit_are_formatted_at_the_call(logpath):
    # A deferred '%100000000d' printed 100 MB per record at decode time; past MAX_WIDTH
    # the writer formats at the call instead (the record holds the text, its size is
    # what the caller asked for), and at the limit it still defers.
    from nanolog.format import MAX_WIDTH
    wide, edge = f"%{MAX_WIDTH + 1}d", f"%{MAX_WIDTH}d"
    with nanolog.Logger(logpath) as log:
        log.info(wide, 7)
        log.info(edge, 7)
        log.info("%d finite %d", 2.5, -0.0)   # a finite float for %d is still deferred
    recs = list(read_reference(logpath))
    assert [r.message for r in recs] == [wide % 7, edge % 7, "2 finite 0"]
    assert recs[0].args == (wide % 7,) and recs[1].args == (7,)
    assert recs[2].args == (2.5, -0.0)


def test_text_made_at_the_call_may_hold_lone_surrogates(logpath):
    # A preformatted message with a lone surrogate raised UnicodeEncodeError at the call.
    with nanolog.Logger(logpath) as log:
        log.info("user %(name)s", {"name": "a\udc80b"})
        log.info("%c", "\udc80")
    msgs = [r.message for r in nanolog.read(logpath)]
    assert msgs == ["user a\\udc80b", "\\udc80"]


def test_max_formats_stays_within_what_decoders_accept(logpath):
    from nanolog.format import MAX_IDS
    with pytest.raises(ValueError, match="max_formats"):
        nanolog.Logger(logpath, max_formats=MAX_IDS)


def test_levels_and_set_level(logpath):
    with nanolog.Logger(logpath, level="INFO") as log:
        log.debug("hidden %d", 1)
        log.info("shown %d", 2)
        log.set_level("ERROR")
        log.warning("hidden %d", 3)
        log.error("shown %d", 4)
        log.set_level(10)
        log.debug("shown %d", 5)
        assert not log.isEnabledFor(5) and log.isEnabledFor(10)
        with pytest.raises(ValueError):
            log.set_level("LOUD")
    recs = list(read_reference(logpath))
    assert [(r.level_name, r.message) for r in recs] == [
        ("INFO", "shown 2"), ("ERROR", "shown 4"), ("DEBUG", "shown 5")]


def test_file_and_line_of_the_first_call(logpath):
    with nanolog.Logger(logpath) as log:
        log.info("where %d", 1); line = __import__("inspect").currentframe().f_lineno
    (rec,) = read_reference(logpath)
    assert rec.file == __file__ and rec.line == line


def test_records_of_all_threads_come_out_in_time_order(logpath):
    n, k = 4, 5000
    with nanolog.Logger(logpath, buffer_size=8192) as log:
        def work(t):
            for i in range(k):
                log.info("t%d i%d", t, i)
        threads = [threading.Thread(target=work, args=(t,), name=f"w{t}") for t in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = log.statistics()
    recs = list(read_reference(logpath))
    assert len(recs) == n * k == stats.records
    assert [r.time for r in recs] == sorted(r.time for r in recs)
    for t in range(n):
        mine = [r.args[1] for r in recs if r.thread_name == f"w{t}"]
        assert mine == list(range(k))
    assert stats.threads == n and stats.drops == 0 and stats.flushes > 1


def test_statistics_and_closed_logger(logpath):
    log = nanolog.Logger(logpath)
    for i in range(10):
        log.info("n %d", i)
    log.flush()
    s = log.statistics()
    assert s.records == 10 and s.formats == 1 and s.bytes == logpath.stat().st_size
    log.close()
    log.close()  # idempotent
    assert log.closed
    with pytest.raises(ValueError, match="closed"):
        log.info("n %d", 11)
    assert len(list(read_reference(logpath))) == 10


def test_append_mode_adds_a_session_and_w_truncates(logpath):
    with nanolog.Logger(logpath) as log:
        log.info("first run %d", 1)
    with nanolog.Logger(logpath) as log:
        log.warning("second run %s", "x")   # a different format, also id 1 in this session
    assert [r.message for r in read_reference(logpath)] == ["first run 1", "second run x"]
    with nanolog.Logger(logpath, mode="w") as log:
        log.info("fresh")
    assert [r.message for r in read_reference(logpath)] == ["fresh"]


def test_refuses_to_append_to_a_foreign_file(logpath):
    logpath.write_text("hello, I am a text log\n")
    with pytest.raises(nanolog.NotANanologFile):
        nanolog.Logger(logpath)
    assert logpath.read_text() == "hello, I am a text log\n"


def test_drop_policy_counts_and_block_policy_loses_nothing(logpath):
    # Drop: a tiny buffer and a writer that never runs on its own (interval 1 h).
    with nanolog.Logger(logpath, policy="drop", buffer_size=4096,
                        flush_interval=3600) as log:
        for i in range(2000):
            log.info("dropping %d %s", i, "x" * 20)
        s = log.statistics()
    assert s.drops > 0 and s.records + s.drops == 2000
    assert len(list(read_reference(logpath))) == s.records
    # The count is in the file too (DROPS chunks), for `nanolog stats`.
    from nanolog._decode import Decoder
    dec = Decoder()
    dec.feed(logpath.read_bytes())
    dec.finish()
    assert dec.damage is None and dec.drops == s.drops
    with nanolog.Logger(logpath, mode="w", buffer_size=4096, flush_interval=3600) as log:
        for i in range(2000):
            log.info("blocking %d %s", i, "x" * 20)
        s = log.statistics()
    assert s.drops == 0 and [r.args[0] for r in read_reference(logpath)] == list(range(2000))


def test_a_record_larger_than_the_buffer_grows_it(logpath):
    big = "y" * 100_000
    with nanolog.Logger(logpath, buffer_size=4096) as log:
        log.info("big %s", big)
        log.info("small")
    assert [r.message for r in read_reference(logpath)] == ["big " + big, "small"]


def test_exit_without_close_flushes(logpath, run_child):
    proc = run_child("""
        import sys, nanolog
        log = nanolog.Logger(sys.argv[1])
        for i in range(1000):
            log.info("exit %d", i)
    """, str(logpath))
    assert proc.returncode == 0, proc.stderr
    assert [r.args[0] for r in read_reference(logpath)] == list(range(1000))


def test_daemon_thread_logging_through_exit_is_flushed_and_quiet(logpath, run_child):
    proc = run_child("""
        import sys, threading, nanolog
        log = nanolog.Logger(sys.argv[1])
        started = threading.Event()
        def spin():
            i = 0
            while True:
                log.info("daemon %d", i)
                i += 1
                if i == 1000:
                    started.set()
        threading.Thread(target=spin, daemon=True).start()
        started.wait(30)
    """, str(logpath))
    assert proc.returncode == 0 and proc.stderr == ""
    values = [r.args[0] for r in read_reference(logpath)]
    assert len(values) >= 1000 and values == list(range(len(values)))
