"""RIFL's bookkeeping: the server's completion records and the client's call numbers."""
import pytest

from microrpc.exactly_once import CallNumbers, Check, CompletionTable, LocalLeases



@pytest.fixture
def leases(clock):
    return LocalLeases(5.0, clock=clock)


@pytest.fixture
def table(leases):
    return CompletionTable(leases.valid, window=4)


def test_a_call_runs_once_and_its_retries_get_the_saved_reply(table, leases):
    lease = leases.grant()
    assert table.check(lease, 1, 0) == (Check.NEW, None)
    assert table.check(lease, 1, 0) == (Check.RUNNING, None)        # retried while running
    table.finish(lease, 1, ("ok", 42))
    assert table.check(lease, 1, 0) == (Check.DONE, ("ok", 42))
    assert table.check(lease, 1, 0) == (Check.DONE, ("ok", 42))
    assert table.duplicates == 2


def test_an_ack_frees_records_and_a_late_copy_is_stale(table, leases):
    lease = leases.grant()
    for seq in (1, 2, 3):
        assert table.check(lease, seq, 0)[0] is Check.NEW
        table.finish(lease, seq, seq * 10)
    assert table.records(lease) == 3
    assert table.check(lease, 4, 2)[0] is Check.NEW                 # acks 1 and 2
    assert table.records(lease) == 2                                 # 3 (done) and 4
    assert table.check(lease, 2, 1) == (Check.STALE, None)           # a copy after its ack
    assert table.check(lease, 3, 2) == (Check.DONE, 30)


def test_an_expired_lease_cannot_start_a_call_but_its_records_answer_until_dropped(
        table, leases, clock):
    lease = leases.grant()
    table.check(lease, 1, 0)
    table.finish(lease, 1, "one")
    clock.t += 6                                                     # the lease expired
    assert table.check(lease, 2, 0) == (Check.EXPIRED, None)         # never run
    assert table.check(lease, 1, 0) == (Check.DONE, "one")
    assert not leases.valid(lease) and leases.expired() == [lease]
    assert table.drop_lease(lease) == 1
    assert table.check(lease, 1, 0) == (Check.EXPIRED, None)         # not run again
    assert table.records() == 0


def test_renewal_keeps_a_lease_alive(leases, clock):
    lease = leases.grant()
    clock.t += 4
    assert leases.renew(lease)
    clock.t += 4
    assert leases.valid(lease)
    clock.t += 2
    assert not leases.renew(lease) and not leases.valid(lease)
    assert leases.grant() != lease                                   # never reused


def test_the_window_bounds_the_records_of_one_lease(table, leases):
    lease = leases.grant()
    for seq in range(1, 5):
        assert table.check(lease, seq, 0)[0] is Check.NEW
    assert table.check(lease, 5, 0) == (Check.WINDOW_FULL, None)
    assert table.refused == 1
    table.finish(lease, 1, "r")
    assert table.check(lease, 5, 1)[0] is Check.NEW                  # 1 acked: room again


def test_a_call_refused_before_it_ran_may_run_on_retry(table, leases):
    lease = leases.grant()
    assert table.check(lease, 1, 0)[0] is Check.NEW
    table.forget(lease, 1)
    assert table.check(lease, 1, 0)[0] is Check.NEW


def test_a_reply_finished_after_its_ack_is_not_kept(table, leases):
    lease = leases.grant()
    table.check(lease, 1, 0)
    table.check(lease, 2, 0)
    table.finish(lease, 2, "two")
    table.check(lease, 3, 1)          # a buggy client acks 1 while it still runs
    table.finish(lease, 1, "one")
    assert table.records(lease) == 2  # 2 and 3, not 1


@pytest.mark.parametrize("lease, seq, ack", [(0, 1, 0), (1, 0, 0), (1, 1, 1), (1, 2, -1)])
def test_malformed_ids_are_refused(table, lease, seq, ack):
    with pytest.raises(ValueError):
        table.check(lease, seq, ack)


def test_call_numbers_ack_what_has_ended_in_order():
    n = CallNumbers(window=3)
    a, b, c = n.next(), n.next(), n.next()
    assert (a, b, c) == (1, 2, 3) and n.ack == 0 and n.full()
    with pytest.raises(RuntimeError):
        n.next()
    n.ended(2)
    assert n.ack == 0                  # 1 has not ended
    n.ended(1)
    assert n.ack == 2 and not n.full()
    n.ended(2)                         # twice, or unknown: ignored
    n.ended(99)
    assert n.next() == 4 and n.ack == 2


def test_lease_ids_of_two_incarnations_never_meet(clock):
    # A restarted server must not grant an id a client of its previous run still holds.
    a, b = LocalLeases(5.0, clock=clock), LocalLeases(5.0, clock=clock)
    assert {a.grant() for _ in range(3)}.isdisjoint({b.grant() for _ in range(3)})
    fixed = LocalLeases(5.0, clock=clock, incarnation=7)
    assert fixed.grant() == (7 << 32) + 1
    with pytest.raises(ValueError):
        LocalLeases(5.0, incarnation=0)


def test_new_calls_keep_a_local_lease_alive_and_silence_lets_it_expire(clock):
    leases = LocalLeases(10.0, clock=clock)
    table = CompletionTable(leases)
    lease = leases.grant()
    for seq in range(1, 8):                   # one call every 4 s for 24 s: past the ttl
        assert table.check(lease, seq, seq - 1)[0] is Check.NEW
        table.finish(lease, seq, "ok")
        clock.t += 4.0
    assert leases.valid(lease)
    clock.t += 10.0                            # silent for a ttl
    assert table.check(lease, 8, 7)[0] is Check.EXPIRED


def test_a_table_pickles_without_its_authority_and_is_rebound(clock):
    import pickle
    leases = LocalLeases(10.0, clock=clock)
    table = CompletionTable(leases)
    lease = leases.grant()
    table.check(lease, 1, 0)
    table.finish(lease, 1, "first")
    moved = pickle.loads(pickle.dumps(table))
    assert moved.check(lease, 1, 0) == (Check.DONE, "first")    # a retry needs no authority
    with pytest.raises(RuntimeError, match="rebind"):
        moved.check(lease, 2, 1)
    moved.rebind(lambda lease: True)
    assert moved.check(lease, 2, 1)[0] is Check.NEW
    with pytest.raises(TypeError):
        moved.rebind(42)


def test_call_numbers_pickle_with_their_place_and_keep_counting():
    import pickle
    n = CallNumbers(window=4)
    seqs = [n.next() for _ in range(3)]
    n.ended(seqs[1])
    m = pickle.loads(pickle.dumps(n))
    assert (m.ack, m.full(), m.window) == (0, False, 4)
    assert m.next() == 4 and m.try_next() == 0           # 4 pending: the window is full
    m.ended(1)
    assert m.ack == 2 and m.try_next() == 5


@pytest.mark.parametrize("lease, seq, ack", [(-1, 1, 0), (1, 2**64, 0), (1, 1, -1), (1, "1", 0)])
def test_ids_out_of_range_are_malformed(table, leases, lease, seq, ack):
    with pytest.raises(ValueError, match="malformed"):
        table.check(lease, seq, ack)


def test_cached_leases_ask_only_for_a_lease_not_valid_in_the_cache(clock):
    from microrpc.exactly_once import CachedLeases
    asked = []
    until = {7: clock.t + 5.0}

    def ask(lease):
        asked.append(lease)
        return lease == 8

    table = CompletionTable(CachedLeases(until, clock, ask))
    assert table.check(7, 1, 0)[0] is Check.NEW and asked == []        # cached: no ask
    assert table.check(8, 1, 0)[0] is Check.NEW and asked == [8]
    assert table.check(9, 1, 0)[0] is Check.EXPIRED and asked == [8, 9]
    clock.t += 6.0                                                       # 7's cache ran out
    assert table.check(7, 2, 1)[0] is Check.EXPIRED and asked == [8, 9, 7]
