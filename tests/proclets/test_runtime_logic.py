"""The runtime and controller logic in one process, without sockets: the controller object
stands in for its remote proxy, and an injected clock drives leases and membership."""

import pytest

from proclets import _protocol as P
from proclets.controller import Controller
from proclets.errors import MigrationError, ProcletError
from proclets.migration import dump, load
from proclets.proclet import class_path
from proclets.lifecycle import State
from proclets.runtime import Runtime
from proclets._wire import decode_reply, encode_call
from microrpc.exactly_once import CompletionTable

from proclet_samples import Blob, Counter, Narrow


class Ctx:
    """A stand-in CallContext: defer() returns a reply that records its answer."""

    class Reply:
        def __init__(self):
            self.value = self.error_ = None

        def result(self, value):
            self.value = value

        def error(self, exc):
            self.error_ = exc

    def __init__(self):
        self.reply = None

    def defer(self):
        self.reply = self.reply or Ctx.Reply()
        return self.reply


@pytest.fixture
def ctl(clock):
    return Controller(clock=clock, lease_ttl=5.0)


def make_runtime(ctl, clock, name):
    rt = Runtime(ctl, rid=name, address=f"tcp://{name}:1", clock=clock)
    rt.register()
    return rt


def connect_peers(*runtimes):
    """Migration's runtime-to-runtime call, made directly."""
    by_address = {rt.address: rt for rt in runtimes}

    class Peer:
        def __init__(self, rt):
            self.rt = rt

        def call(self, method, body, timeout=None):
            assert method == P.INSTALL
            return self.rt.install_message(body)

    for rt in runtimes:
        rt._peer = lambda address: Peer(by_address[address])


def call(rt, pid, method, *args, lease, seq, ack=0):
    """One CALL, as its bytes (proclets._wire); the reply as [code, value]."""
    reply = rt.call(Ctx(), encode_call(pid, method, args, None, lease, seq, ack))
    if reply is None:
        return None                  # deferred: the test reads Ctx's reply
    return list(decode_reply(reply))


def test_a_retried_call_runs_once_and_gets_the_saved_reply(ctl, clock):
    rt = make_runtime(ctl, clock, "a")
    rt.spawn(7, class_path(Counter), [10], {})
    lease = ctl.grant_lease()[0]
    assert call(rt, 7, "incr", 5, lease=lease, seq=1) == [P.OK, 15]
    assert call(rt, 7, "incr", 5, lease=lease, seq=1) == [P.OK, 15]     # a retry
    assert call(rt, 7, "get", lease=lease, seq=2, ack=1) == [P.OK, 15]
    assert call(rt, 7, "incr", 5, lease=lease, seq=1) == [P.STALE, None]   # acked late copy


def test_an_exception_is_an_outcome_saved_for_retries(ctl, clock):
    rt = make_runtime(ctl, clock, "a")
    rt.spawn(7, class_path(Counter), [0], {})
    lease = ctl.grant_lease()[0]
    first = call(rt, 7, "fail", "boom", lease=lease, seq=1)
    assert first == [P.ERROR, ["ValueError", "boom"]]
    assert call(rt, 7, "fail", "boom", lease=lease, seq=1) == first
    assert call(rt, 7, "get", lease=lease, seq=2) == [P.OK, 1000]       # ran once


def test_a_result_that_cannot_be_sent_is_the_saved_outcome(ctl, clock):
    rt = make_runtime(ctl, clock, "a")
    rt.spawn(7, class_path(Counter), [0], {})
    lease = ctl.grant_lease()[0]
    first = call(rt, 7, "incr_unsendable", lease=lease, seq=1)
    assert first[0] == P.ERROR and first[1][0] == "TypeError"
    assert "cannot be sent" in first[1][1]
    assert call(rt, 7, "incr_unsendable", lease=lease, seq=1) == first      # a retry
    assert call(rt, 7, "get", lease=lease, seq=2) == [P.OK, 1]           # ran once


def test_private_and_missing_methods_are_not_callable(ctl, clock):
    rt = make_runtime(ctl, clock, "a")
    rt.spawn(7, class_path(Counter), [0], {})
    lease = ctl.grant_lease()[0]
    for name in ("_private", "__init__", "nope"):
        code, (kind, _) = call(rt, 7, name, lease=lease, seq=1)
        assert (code, kind) == (P.ERROR, "AttributeError")


def test_an_expired_lease_is_refused_without_running(ctl, clock):
    rt = make_runtime(ctl, clock, "a")
    rt.spawn(7, class_path(Counter), [0], {})
    lease = ctl.grant_lease()[0]
    assert call(rt, 7, "incr", 1, lease=lease, seq=1) == [P.OK, 1]
    clock.t += 6.0                                  # past the 5 s ttl, never renewed
    assert call(rt, 7, "incr", 1, lease=lease, seq=2) == [P.EXPIRED, None]
    # the replay of a call whose record is gone with its lease is refused, not re-run
    assert rt.sweep_leases() == 1
    assert call(rt, 7, "incr", 1, lease=lease, seq=1) == [P.EXPIRED, None]
    fresh = ctl.grant_lease()[0]
    assert call(rt, 7, "get", lease=fresh, seq=1) == [P.OK, 1]


def test_a_renewed_lease_stays_valid(ctl, clock):
    rt = make_runtime(ctl, clock, "a")
    rt.spawn(7, class_path(Counter), [0], {})
    lease = ctl.grant_lease()[0]
    for seq in range(1, 5):
        clock.t += 3.0
        assert ctl.renew(lease)
        assert call(rt, 7, "incr", 1, lease=lease, seq=seq, ack=seq - 1)[0] == P.OK


def test_completion_records_migrate_with_the_state(ctl, clock):
    a, b = make_runtime(ctl, clock, "a"), make_runtime(ctl, clock, "b")
    connect_peers(a, b)
    a.spawn(7, class_path(Counter), [0], {})
    lease = ctl.grant_lease()[0]
    assert call(a, 7, "incr", 1, lease=lease, seq=1) == [P.OK, 1]
    stats = a.migrate_out(7, b.address)
    assert stats["bytes"] > 0 and stats["destination"] == b.address
    assert ctl.locate(7) == [P.HERE, "b", b.address, 2]
    # at the source: a tombstone naming the destination; at the destination: the record
    assert call(a, 7, "incr", 1, lease=lease, seq=1) == [P.WRONG_TARGET, b.address]
    assert call(b, 7, "incr", 1, lease=lease, seq=1) == [P.OK, 1]       # not run again
    assert call(b, 7, "incr", 1, lease=lease, seq=2, ack=1) == [P.OK, 2]
    # and back
    b.migrate_out(7, a.address)
    assert call(a, 7, "get", lease=lease, seq=3, ack=2) == [P.OK, 2]
    assert ctl.locate(7)[3] == 3


def test_a_failed_install_aborts_back_to_present_at_the_source(ctl, clock):
    a, b = make_runtime(ctl, clock, "a"), make_runtime(ctl, clock, "b")
    connect_peers(a, b)
    a.spawn(7, class_path(Counter), [0], {})

    def broken(*args):
        raise OSError("the destination went away")
    b.install = broken
    with pytest.raises(MigrationError, match="went away"):
        a.migrate_out(7, b.address)
    lease = ctl.grant_lease()[0]
    assert call(a, 7, "incr", 1, lease=lease, seq=1) == [P.OK, 1]
    # the reclaim fenced the directory entry: epoch 2, still at a
    assert ctl.locate(7) == [P.HERE, "a", a.address, 2]
    assert a.info()["proclets"]["7"] == "present"


def test_a_destination_whose_move_lost_the_race_drops_the_state(ctl, clock):
    a, b = make_runtime(ctl, clock, "a"), make_runtime(ctl, clock, "b")
    a.spawn(7, class_path(Counter), [0], {})
    header, buffers, kinds = dump({"n": 3}, CompletionTable(lambda lease: True))
    with pytest.raises(MigrationError, match="not at"):
        b.install(7, 5, class_path(Counter), "a", header, buffers, kinds)   # wrong epoch
    assert b.info()["proclets"]["7"] == "absent"
    assert ctl.locate(7)[1] == "a"


def test_a_call_while_moving_is_refused_before_it_runs(ctl, clock):
    a = make_runtime(ctl, clock, "a")
    a.spawn(7, class_path(Counter), [0], {})
    e = a._entries[7]
    from proclets.lifecycle import State
    e.state = State.MIGRATING_OUT
    lease = ctl.grant_lease()[0]
    assert call(a, 7, "incr", 1, lease=lease, seq=1) == [P.RETRY, None]
    e.state = State.PRESENT
    assert call(a, 7, "incr", 1, lease=lease, seq=1) == [P.OK, 1]


def test_spawning_an_existing_pid_is_refused(ctl, clock):
    a, b = make_runtime(ctl, clock, "a"), make_runtime(ctl, clock, "b")
    a.spawn(7, class_path(Counter), [0], {})
    with pytest.raises(ProcletError):
        a.spawn(7, class_path(Counter), [0], {})
    with pytest.raises(ProcletError, match="exists"):
        b.spawn(7, class_path(Counter), [0], {})
    assert "7" not in b.info()["proclets"]


def test_a_silent_runtime_is_declared_dead_and_its_proclets_lost(ctl, clock):
    a, b = make_runtime(ctl, clock, "a"), make_runtime(ctl, clock, "b")
    a.spawn(7, class_path(Counter), [0], {})
    b.spawn(8, class_path(Counter), [0], {})
    for _ in range(10):                     # b beats, a is silent
        clock.t += P.HEARTBEAT
        b.heartbeat()
        ctl.tick()
    assert ctl.locate(7)[0] == P.GONE
    assert ctl.locate(8)[0] == P.HERE
    # a comes back (it was only slow): it is told its proclet is lost, and never serves it
    a.heartbeat()
    lease = ctl.grant_lease()[0]
    assert call(a, 7, "get", lease=lease, seq=1) == [P.LOST, None]
    assert ctl.locate(7)[0] == P.GONE


def test_a_restarted_controller_relearns_the_directory(ctl, clock):
    a = make_runtime(ctl, clock, "a")
    a.spawn(7, class_path(Counter), [0], {})
    new = Controller(clock=clock)
    a.controller = new
    assert new.locate(7)[0] == P.UNKNOWN       # not yet relearned: the ref waits
    a.heartbeat()                              # "unknown runtime": it registers again
    assert new.locate(7) == [P.HERE, "a", a.address, 1]
    clock.t += 10
    assert new.locate(12345)[0] == P.GONE      # after the relearn window: no such proclet


def test_lease_ids_of_a_restarted_controller_are_new(clock):
    first = Controller(clock=clock)
    first.incarnation = 1
    second = Controller(clock=clock)
    second.incarnation = 2
    assert first.grant_lease()[0] != second.grant_lease()[0]
    assert second.lease_left(first.grant_lease()[0]) == -1


def test_narrowed_state_migrates_only_the_declared_attributes(ctl, clock):
    a, b = make_runtime(ctl, clock, "a"), make_runtime(ctl, clock, "b")
    connect_peers(a, b)
    a.spawn(7, class_path(Narrow), [], {})
    a.migrate_out(7, b.address)
    lease = ctl.grant_lease()[0]
    assert call(b, 7, "attrs", lease=lease, seq=1) == [P.OK, ["kept"]]


def test_large_buffers_travel_out_of_band_and_bytes_are_not_copied_on_load():
    data, buf = bytes(range(256)) * 256, bytearray(b"x" * 100_000)
    table = CompletionTable(lambda lease: True)
    header, buffers, kinds = dump({"data": data, "buf": buf, "small": b"s"}, table)
    assert len(header) < 1000 and len(buffers) == 2
    received = [bytes(b) for b in buffers]          # as the transport delivers them
    state, table2 = load(header, received, kinds, lambda lease: True)
    assert state["data"] is received[0] or state["data"] is received[1]
    assert type(state["buf"]) is bytearray and state["buf"] == buf
    assert state["small"] == b"s"
    assert table2.check(1, 1, 0)[0].name == "NEW"      # rebound to the authority given


def test_a_blob_state_keeps_its_types_across_a_migration(ctl, clock):
    a, b = make_runtime(ctl, clock, "a"), make_runtime(ctl, clock, "b")
    connect_peers(a, b)
    a.spawn(7, class_path(Blob), [1 << 16], {})
    stats = a.migrate_out(7, b.address)
    assert stats["buffers"] == 2 and stats["bytes"] >= 2 << 16
    lease = ctl.grant_lease()[0]
    assert call(b, 7, "size", lease=lease, seq=1) == [P.OK,
                                                      [65536, "bytes", 65536, "bytearray"]]


def test_the_table_pickles_without_the_runtime_check():
    table = CompletionTable(lambda lease: True)
    header, _, _ = dump({}, table)
    assert b"lambda" not in header
    assert table.check(1, 1, 0)[0].name == "NEW"       # its own authority is still there


def test_the_install_message_round_trips_through_its_layout():
    from proclets.migration import pack_install, unpack_install
    data = bytes(range(256)) * 64
    header, buffers, kinds = dump({"data": data, "buf": bytearray(data)},
                                  CompletionTable(lambda lease: True))
    body = pack_install([7, 3, "m:C", "src", kinds], header, buffers)
    meta, header2, buffers2 = unpack_install(body)
    assert meta == [7, 3, "m:C", "src", kinds]
    assert bytes(header2) == header and [bytes(b) for b in buffers2] == [data, data]
    state, _ = load(header2, buffers2, kinds, lambda lease: True)
    assert type(state["data"]) is bytes and state["data"] == data
    assert type(state["buf"]) is bytearray and state["buf"] == data


def test_a_malformed_install_message_is_a_value_error_or_a_migration_error(ctl, clock):
    from proclets.migration import pack_install, unpack_install
    header, buffers, kinds = dump({"n": 1, "blob": bytes(5000)},
                                  CompletionTable(lambda lease: True))
    body = pack_install([7, 1, class_path(Counter), "a", kinds], header, buffers)
    cuts = [0, 3, 5, 9, 10, 20, len(body) // 2, len(body) - 1]
    for bad in [body[:n] for n in cuts] + [b"XXXX" + body[4:], body + b"x",
                                           body[:5] + b"\xff\xff\xff\x7f" + body[9:]]:
        with pytest.raises(ValueError):
            unpack_install(bad)
    b = make_runtime(ctl, clock, "b")
    with pytest.raises(MigrationError, match="malformed"):
        b.install_message(body[:20])
    assert b.info()["proclets"] == {}


def test_a_failed_install_during_a_controller_restart_waits_for_the_relearn(ctl, clock):
    a, b = make_runtime(ctl, clock, "a"), make_runtime(ctl, clock, "b")
    connect_peers(a, b)
    a.spawn(7, class_path(Counter), [0], {})
    new = Controller(clock=clock)
    a.controller = b.controller = new          # restarted: it knows nothing yet
    asked = []

    def reclaim(pid, rid, epoch):
        asked.append(pid)
        if len(asked) == 2:
            a.register()                        # the source's registration relearns it
        return Controller.reclaim(new, pid, rid, epoch)
    new.reclaim = reclaim
    with pytest.raises(MigrationError, match="install at"):
        a.migrate_out(7, b.address)            # b's move fails: the pid is unknown
    assert len(asked) == 2
    assert a.info()["proclets"]["7"] == "present"
    assert new.locate(7) == [P.HERE, "a", a.address, 2]


def restarted(clock, old):
    """A new controller on the same clock, of another incarnation than ``old``."""
    new = Controller(clock=clock, lease_ttl=5.0)
    new.incarnation = (old.incarnation + 1) & 0x7FFFFFFF
    return new


def a_call_then_a_restart(ctl, clock):
    """A runtime that ran call 1 of a lease, then re-registered with a restarted
    controller (its heartbeat was unknown there): (runtime, lease, new controller)."""
    rt = make_runtime(ctl, clock, "a")
    rt.spawn(7, class_path(Counter), [0], {})
    lease = ctl.grant_lease()[0]
    assert call(rt, 7, "incr", 1, lease=lease, seq=1) == [P.OK, 1]
    new = restarted(clock, ctl)
    rt.controller = new
    rt.register()
    return rt, lease, new


def test_a_restarted_controller_adopts_the_client_leases_runtimes_hold(ctl, clock):
    rt, lease, new = a_call_then_a_restart(ctl, clock)
    clock.t += 4.0
    assert new.renew(lease)                     # its client keeps renewing it
    clock.t += 2.0                              # past the runtime's cached expiry (5 s)
    assert rt.sweep_leases() == 0               # it asked: still valid
    assert new.lease_left(lease) > 0
    # the retry of a call whose reply was lost gets its saved reply, not EXPIRED
    assert call(rt, 7, "incr", 1, lease=lease, seq=1) == [P.OK, 1]
    assert call(rt, 7, "incr", 1, lease=lease, seq=2, ack=1) == [P.OK, 2]
    assert new.adopt([lease]) == 0              # adopted once
    assert new.adopt([new.grant_lease()[0], -1, "x", 1 << 70]) == 0   # own ids, junk


def test_an_adopted_lease_expires_like_any_other(ctl, clock):
    rt, lease, new = a_call_then_a_restart(ctl, clock)
    assert new.lease_left(lease) > 0
    clock.t += 6.0                              # never renewed: gone after its ttl
    new.tick()
    assert new.lease_left(lease) == -1.0
    assert not new.renew(lease)
    assert new._adopted == {}                   # and forgotten
    assert call(rt, 7, "incr", 1, lease=lease, seq=2) == [P.EXPIRED, None]


def test_without_a_runtime_holding_it_a_lease_is_not_adopted(ctl, clock):
    lease = ctl.grant_lease()[0]
    new = restarted(clock, ctl)
    assert new.lease_left(lease) == -1.0      # no records anywhere: a new lease is safe
    assert not new.renew(lease)


def test_a_destroyed_proclet_is_gone_everywhere_and_stays_gone(ctl, clock):
    rt = make_runtime(ctl, clock, "a")
    rt.spawn(7, class_path(Counter), [0], {})
    lease = ctl.grant_lease()[0]
    assert call(rt, 7, "incr", 1, lease=lease, seq=1) == [P.OK, 1]
    assert ctl.forget(7) == [P.HERE, "a", rt.address, 1]
    assert ctl.locate(7)[0] == P.GONE                 # refs that ask learn it at once
    assert rt.destroy(7) == P.DROPPED
    assert call(rt, 7, "incr", 1, lease=lease, seq=2) == [P.WRONG_TARGET, None]
    assert rt.info()["proclets"] == {}                # state, records, entry: all freed
    assert ctl.forget(7)[0] == P.GONE                 # twice is harmless
    assert rt.destroy(7) == P.NOT_HERE
    assert ctl.forget(12345)[0] == P.UNKNOWN          # never made: while relearning, ask
    clock.t += ctl.relearn                            # again; after, it is gone
    assert ctl.forget(12345)[0] == P.GONE


def test_a_runtime_that_missed_the_destroy_is_told_when_it_registers(ctl, clock):
    rt = make_runtime(ctl, clock, "a")
    rt.spawn(7, class_path(Counter), [0], {})
    assert ctl.forget(7)[0] == P.HERE                 # its DESTROY never arrived
    rt.register()
    assert rt.info()["proclets"]["7"] == "lost"       # not registered back
    assert ctl.locate(7)[0] == P.GONE


def test_a_migration_racing_a_destroy_leaves_no_copy(ctl, clock):
    a, b = make_runtime(ctl, clock, "a"), make_runtime(ctl, clock, "b")
    connect_peers(a, b)
    a.spawn(7, class_path(Counter), [0], {})
    lease = ctl.grant_lease()[0]
    state = a._entries[7].state
    a._entries[7].state = State.MIGRATING_OUT         # as while a migration drains
    assert ctl.forget(7)[0] == P.HERE
    assert a.destroy(7) == P.BUSY                     # the caller asks again
    a._entries[7].state = state
    try:
        a.migrate_out(7, b.address)   # b's directory move fails, so b aborts; a's reclaim
    except MigrationError:            # fails too, and a reads that as b having it
        pass
    for rt in (a, b):                                 # neither serves it
        assert call(rt, 7, "get", lease=lease, seq=1)[0] in (P.WRONG_TARGET, P.LOST)
        assert rt.destroy(7) in (P.DROPPED, P.NOT_HERE)
        assert rt.info()["proclets"] == {}
