"""Rotation, fork, the stdlib logging bridge, and a writer killed in the middle."""
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import nanolog
from nanolog import read, read_reference
from nanolog.writer import rotated_name


def rotated_set(path):
    """The files of a rotated log, oldest first."""
    olds = sorted((p for p in path.parent.glob(f"{path.stem}.*{path.suffix}")
                   if p.name[len(path.stem) + 1:-len(path.suffix)].isdigit()),
                  key=lambda p: -int(p.name[len(path.stem) + 1:-len(path.suffix)]))
    return olds + [path]


def test_rotation_keeps_every_record_exactly_once(logpath):
    n_threads, per_thread = 2, 6000
    with nanolog.Logger(logpath, buffer_size=8192, max_bytes=64 << 10,
                        backup_count=1000) as log:
        def work(t):
            for i in range(per_thread):
                log.info("thread %d record %d %s", t, i, "padding" * 3)
        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = log.statistics()
    files = rotated_set(logpath)
    assert stats.rotations == len(files) - 1 >= 5
    seen = {t: [] for t in range(n_threads)}
    for f in files:
        recs = list(read(f))  # each file decodes on its own: no damage, own dictionary
        assert f.stat().st_size <= (64 << 10) + 2 * 8192 + 4096
        for r in recs:
            seen[r.args[0]].append(r.args[1])
    for t in range(n_threads):
        assert seen[t] == list(range(per_thread))


def test_rotation_drops_files_beyond_backup_count(logpath):
    with nanolog.Logger(logpath, buffer_size=4096, max_bytes=8 << 10, backup_count=2) as log:
        for i in range(5000):
            log.info("record %d", i)
            if i % 500 == 0:
                log.flush()
    names = sorted(p.name for p in logpath.parent.iterdir())
    assert names == ["app.1.nlog", "app.2.nlog", "app.nlog"]
    last = [r.args[0] for f in rotated_set(logpath) for r in read(f)]
    assert last == list(range(last[0], 5000))  # the newest records, contiguous


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_logs_to_its_own_file(logpath):
    log = nanolog.Logger(logpath, flush_interval=3600)
    log.info("parent before fork %d", 1)   # staged, not yet written when the fork happens
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            log.info("child %d", 2)
            log.info("parent before fork %d", 3)  # a format the parent registered
            log.close()
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    log.info("parent after fork %d", 4)
    log.close()
    assert [r.message for r in read_reference(logpath)] == ["parent before fork 1",
                                                             "parent after fork 4"]
    child = logpath.with_name(f"app.pid{pid}.nlog")
    recs = list(read_reference(child))
    assert [r.message for r in recs] == ["child 2", "parent before fork 3"]
    assert {r.pid for r in recs} == {pid}


def test_child_started_by_multiprocessing_fork(logpath, tmp_path):
    import multiprocessing
    log = nanolog.Logger(logpath)
    ctx = multiprocessing.get_context("fork")

    def child(n):
        for i in range(n):
            log.info("mp child %d", i)
        # no close(): the child's exit flushes (multiprocessing runs atexit-like
        # finalizers only for its own objects, so flush explicitly)
        log.flush()

    p = ctx.Process(target=child, args=(100,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    log.close()
    child_file = logpath.with_name(f"app.pid{p.pid}.nlog")
    assert [r.args[0] for r in read(child_file)] == list(range(100))
    assert list(read(logpath)) == []


def test_logging_handler_bridge(logpath):
    handler = nanolog.NanologHandler(logpath)
    lg = logging.getLogger("bridge.test")
    lg.propagate = False
    lg.addHandler(handler)
    lg.setLevel(logging.DEBUG)
    try:
        lg.debug("user %s logged in after %d tries", "ann", 3)
        lg.info("dict form %(a)s/%(b)d", {"a": "x", "b": 5})
        lg.warning("plain 100%")
        lg.log(25, "custom %.2f", 1.5)
        try:
            1 / 0
        except ZeroDivisionError:
            lg.exception("failed %d", 42)
    finally:
        lg.removeHandler(handler)
        handler.close()
    recs = list(read_reference(logpath))
    assert [r.message for r in recs[:5]] == [
        "[bridge.test] user ann logged in after 3 tries",
        "[bridge.test] dict form x/5",
        "[bridge.test] plain 100%",
        "[bridge.test] custom 1.50",
        "[bridge.test] failed 42",
    ]
    assert [r.level for r in recs] == [10, 20, 30, 25, 40, 40]
    assert "ZeroDivisionError" in recs[5].message and "Traceback" in recs[5].message
    assert recs[0].file == __file__ and recs[0].args == ("ann", 3)


def test_handler_shares_an_existing_logger(logpath):
    log = nanolog.Logger(logpath)
    handler = nanolog.NanologHandler(log, include_name=False)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "value %d", (7,), None)
    handler.handle(record)
    handler.close()           # does not close the shared logger
    log.info("direct %d", 8)
    log.close()
    assert [r.message for r in read(logpath)] == ["value 7", "direct 8"]


def test_child_killed_mid_write_decodes_up_to_the_damage(logpath, run_child):
    code = """
        import sys, nanolog
        log = nanolog.Logger(sys.argv[1], buffer_size=1 << 16, flush_interval=0.001)
        print("ready", flush=True)
        i = 0
        while True:
            log.info("tick %d %s", i, "z" * (i % 50))
            i += 1
    """
    import textwrap
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(logpath)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 30
        while logpath.stat().st_size < 2_000_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    size = logpath.stat().st_size
    assert size >= 2_000_000
    values = []
    damage = None
    it = read(logpath, strict=False)
    for r in it:
        values.append(r.args[0])
    damage = it.damage
    assert values == list(range(len(values))) and len(values) > 10_000
    if damage is not None:  # killed inside a write: the tail is torn, never earlier
        assert "truncated" in str(damage) and size - damage.offset < 1 << 20
    # The reference decoder agrees on what is whole.
    ref = []
    try:
        for r in read_reference(logpath):
            ref.append(r.args[0])
    except nanolog.DamagedLogError as e:
        assert damage is not None and e.offset == damage.offset
    assert ref == values


def test_appending_after_a_torn_tail_cuts_it_and_keeps_both_runs(logpath):
    with nanolog.Logger(logpath) as log:
        for i in range(3):
            log.info("first run %d", i)
            log.flush()
    whole = logpath.stat().st_size
    with open(logpath, "ab") as f:
        f.write(b"\x04\xff\x00\x00\x00partial")   # a chunk cut short by a kill
    with pytest.warns(UserWarning, match="torn tail of 12 bytes"):
        log = nanolog.Logger(logpath)
    log.info("second run %d", 9)
    log.close()
    assert logpath.stat().st_size > whole
    msgs = [r.message for r in read(logpath)]   # no damage left: both runs decode
    assert msgs == ["first run 0", "first run 1", "first run 2", "second run 9"]


def test_appending_after_a_torn_records_chunk_keeps_its_whole_records(logpath):
    # What `nanolog decode` recovers from a torn chunk is what the next run keeps.
    with nanolog.Logger(logpath) as log:
        for i in range(50):
            log.info("first run %d", i)
    data = logpath.read_bytes()
    cut = len(data) - 7            # the trailer and part of the last record
    logpath.write_bytes(data[:cut])
    recovered = list(read(logpath, strict=False))
    assert 0 < len(recovered) < 50
    with pytest.warns(UserWarning, match="kept the whole records of a torn chunk"):
        log = nanolog.Logger(logpath)
    log.info("second run %d", 9)
    log.close()
    msgs = [r.message for r in read(logpath)]     # no damage left
    assert msgs == [r.message for r in recovered] + ["second run 9"]
    assert [r.message for r in read_reference(logpath)] == msgs


def test_a_torn_chunk_with_no_whole_record_is_cut(logpath):
    with nanolog.Logger(logpath) as log:
        log.info("only %d", 1)
    data = logpath.read_bytes()
    logpath.write_bytes(data[:-6])  # the record's argument and the trailer are gone
    assert list(read(logpath, strict=False)) == []
    with pytest.warns(UserWarning, match="cut a torn tail"):
        log = nanolog.Logger(logpath)
    log.info("second run %d", 2)
    log.close()
    assert [r.message for r in read(logpath)] == ["second run 2"]
