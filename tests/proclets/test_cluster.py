"""Proclets in real processes: Cluster.local, refs, exactly-once calls under injected
faults, migration (also of a ref used from another process, and during a running call)."""
import asyncio
import multiprocessing
import pickle
import threading
import time

import pytest

import microrpc
import proclets

from proclet_samples import (Blob, Caller, Counter, Gatekeeper, Narrow,
                              use_ref_in_another_process)


def wait_for(predicate, timeout=10.0, interval=0.01):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(interval)


def test_spawn_call_and_the_three_call_forms(cluster):
    ref = cluster.spawn(Counter, 10, on=0)
    assert ref.incr(5) == 15
    assert ref.incr.future(1).result(10) == 16
    assert asyncio.run(ref.incr.aio(k=2)) == 18
    assert cluster.where(ref) == cluster.addresses[0]


def test_an_application_exception_is_a_call_error_and_ran_once(cluster):
    ref = cluster.spawn(Counter, 0, on=1)
    with pytest.raises(proclets.CallError, match="ValueError: boom") as info:
        ref.fail("boom")
    assert isinstance(info.value, microrpc.RemoteError)
    assert info.value.remote_type == "ValueError"
    assert ref.get() == 1000


def test_what_cannot_be_sent_is_a_type_error_either_way(cluster):
    ref = cluster.spawn(Counter, 0, on=1)
    with pytest.raises(TypeError, match="cannot be sent"):
        ref.incr(object())                         # refused here: nothing sent
    with pytest.raises(proclets.CallError, match="TypeError: the result cannot be sent"):
        ref.incr_unsendable()                      # it ran; its result could not travel
    assert ref.get() == 1
    _, (_, next_seq, first_open, _) = cluster.session.ids.numbers.__reduce__()
    assert next_seq == first_open                  # every number taken has ended


def test_private_names_are_not_reachable(cluster):
    ref = cluster.spawn(Counter, 0, on=0)
    with pytest.raises(AttributeError):
        ref._private()
    with pytest.raises(proclets.CallError, match="AttributeError"):
        ref.nothing_here()


def test_counter_sums_stay_exact_with_lost_replies_and_duplicated_requests(cluster):
    ref = cluster.spawn(Counter, 0, on=0)
    faults = proclets.faults()
    faults.drop_replies, faults.duplicate_requests = 5, 5
    try:
        results = [ref.incr(1) for _ in range(100)]
        assert faults.drop_replies == 0 and faults.duplicate_requests == 0
        assert results == list(range(1, 101))          # each saw its own result, in order
        assert ref.get() == 100                        # ran once each
        faults.drop_rate, faults.duplicate_rate = 0.2, 0.2
        results = [ref.incr(1) for _ in range(100)]
        assert results == list(range(101, 201))
        assert ref.get() == 200
        assert faults.dropped >= 10 and faults.duplicated >= 10
    finally:
        faults.drop_rate = faults.duplicate_rate = 0.0


def test_migration_returns_its_statistics_and_the_ref_keeps_working(cluster):
    ref = cluster.spawn(Counter, 1, on=0)
    stats = cluster.migrate(ref, to=1)
    assert isinstance(stats, proclets.MigrationStats)
    assert stats.source == cluster.addresses[0] and stats.destination == cluster.addresses[1]
    assert stats.bytes > 0 and stats.total > 0
    for phase in ("drain", "serialize", "transfer", "install", "directory"):
        assert getattr(stats, phase) >= 0
    assert ref.incr(1) == 2
    assert cluster.where(ref) == cluster.addresses[1]
    with pytest.raises(proclets.MigrationError, match="already"):
        cluster.migrate(ref, to=1)


def test_a_large_state_migrates(cluster):
    ref = cluster.spawn(Blob, 4 << 20, on=0)
    stats = cluster.migrate(ref, to=2)
    assert stats.bytes >= 8 << 20 and stats.buffers == 2
    assert ref.size() == [4 << 20, "bytes", 4 << 20, "bytearray"]


def test_a_stale_ref_is_redirected(cluster):
    ref = cluster.spawn(Counter, 0, on=0)
    other = proclets.ProcletRef(ref.pid, ref.controller)
    assert other.incr(1) == 1
    cluster.migrate(ref, to=1)
    cluster.migrate(ref, to=2)
    cluster.session.locations[ref.pid] = cluster.addresses[0]    # as a stale cache would
    assert other.incr(1) == 2
    assert cluster.session.locations[ref.pid] == cluster.addresses[2]


def test_calls_during_migrations_run_once(cluster):
    ref = cluster.spawn(Counter, 0, on=0)
    results, errors = [], []

    def caller():
        try:
            for _ in range(200):
                results.append(ref.incr(1))
        except Exception as exc:              # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(6):
        cluster.migrate(ref, to=(i + 1) % 3)
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(results) == list(range(1, 601))
    assert ref.get() == 600


def test_a_call_running_when_migration_starts_completes_once(cluster):
    ref = cluster.spawn(Counter, 5, on=2)
    gate = cluster.spawn(Gatekeeper, on=2)
    held = ref.held_incr.future()
    wait_for(gate.started)
    moved = {}
    mover = threading.Thread(target=lambda: moved.update(stats=cluster.migrate(ref, to=0)))
    mover.start()
    wait_for(lambda: cluster.info(2)["proclets"][str(ref.pid)] == "migrating out")
    late = ref.incr.future(10)                 # arrives while it drains: retried, once
    gate.open()
    mover.join(30)
    assert held.result(10) == 6
    assert late.result(10) == 16
    assert moved["stats"].drain > 0
    assert ref.get() == 16
    assert cluster.where(ref) == cluster.addresses[0]


def test_a_ref_pickled_into_another_process_works_after_two_migrations(cluster):
    ref = cluster.spawn(Counter, 0, on=0)
    blob = pickle.dumps(ref)
    assert cluster.session.key.hex().encode() not in blob and cluster.session.key not in blob
    cluster.migrate(ref, to=1)
    cluster.migrate(ref, to=2)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    # (The child imports the target by module: tests are imported as tests.proclets.*,
    # which a child cannot import; proclet_samples is on its path.)
    child = ctx.Process(target=use_ref_in_another_process, args=(blob, out))
    child.start()
    try:
        assert out.get(timeout=30) == [1, 2]
    finally:
        child.join(10)
    assert child.exitcode == 0
    assert ref.get() == 2


def test_narrowed_state_and_proclet_to_proclet_calls(cluster):
    narrow = cluster.spawn(Narrow, on=0)
    cluster.migrate(narrow, to=1)
    assert narrow.attrs() == ["kept"]
    target = cluster.spawn(Counter, 0, on=1)
    caller = cluster.spawn(Caller, target, on=0)
    assert caller.bump(2) == 2
    cluster.migrate(caller, to=2)              # its call ids travel with it
    assert caller.bump(3) == 5
    cluster.migrate(target, to=0)
    assert caller.bump(1) == 6
    with pytest.raises(proclets.CallError, match="blocking"):
        caller.bump_inline(1)
    with pytest.raises(proclets.CallError, match="plain form"):
        caller.bump_future(1)
    assert target.get() == 6


def test_a_class_runtimes_cannot_import_is_refused_clearly(cluster):
    class Local(proclets.Proclet):
        pass

    with pytest.raises(proclets.NotImportable, match="inside a function"):
        cluster.spawn(Local)
    with pytest.raises(TypeError):
        cluster.spawn(int)


def test_a_cluster_started_from_a_source_checkout_runs_the_installed_packages(
        source_tree_in_cwd, no_leaked_processes, monkeypatch):
    # The benchmarks start clusters from the repository root, and tests may put it on
    # sys.path: the processes must still import the installed packages, not the decoys.
    monkeypatch.syspath_prepend(str(source_tree_in_cwd))
    with proclets.Cluster.local(runtimes=1) as c:
        ref = c.spawn(Counter, 1, on=0)
        assert ref.incr(1) == 2


def test_malformed_calls_from_a_key_holder_are_errors_and_the_runtime_serves_on(cluster):
    import random
    from microrpc.errors import ProtocolError, RemoteError
    from proclets._wire import decode_reply, encode_call
    ref = cluster.spawn(Counter, 0, on=2)
    assert ref.incr(1) == 1
    client = cluster.session.client(cluster.addresses[2])
    rng = random.Random(11)
    good = encode_call(ref.pid, "incr", (1,), None, 1, 1, 0)
    bodies = [b"", b"\x00" * 33, good[:40], good[:33] + b"\xff" + good[34:]]
    bodies += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
               for _ in range(200)]
    for body in bodies:
        try:
            reply = client.call("p.call", body, timeout=5)
        except (ProtocolError, RemoteError):
            continue                                   # refused: the usual answer
        code, _ = decode_reply(reply)   # or a reply with a code
        assert code in range(7)
    assert ref.incr(1) == 2                            # ran once each, as before
    assert ref.get() == 2


def test_a_destroyed_proclet_is_lost_to_every_ref_and_freed(cluster):
    ref = cluster.spawn(Counter, 5, on=0)
    other = pickle.loads(pickle.dumps(ref))        # a second ref, same process
    cluster.migrate(ref, to=1)                     # runtime 0 keeps a tombstone
    assert ref.incr(1) == 6
    address = cluster.where(ref)
    assert str(ref.pid) in cluster.info(0)["proclets"]
    assert cluster.destroy(ref)
    assert all(str(ref.pid) not in cluster.info(i)["proclets"] for i in range(3))
    with pytest.raises(proclets.ProcletLost, match="destroyed"):
        ref.incr(1)
    cluster.session.locations[ref.pid] = address   # a stale cache, as in another process
    with pytest.raises(proclets.ProcletLost):
        other.get()
    assert str(ref.pid) not in cluster.info(address)["proclets"]
    assert not cluster.destroy(ref)                # already gone
