"""The controller's store: revisions, compare-and-swap, leases, watches (an injected clock)."""
import threading

import pytest

from proclets.store import (DELETE, MAX_VALUE, PUT, Compacted, LeaseExpired, MemoryStore,
                            StoreError)



@pytest.fixture
def store(clock):
    return MemoryStore(clock=clock)


def test_revisions_count_every_change_and_keys_remember_theirs(store):
    assert store.revision == 0 and store.get(b"a") is None
    assert store.put(b"a", b"1") == 1
    assert store.put(b"b", b"2") == 2
    assert store.put(b"a", b"3") == 3
    a = store.get(b"a")
    assert (a.value, a.create_revision, a.mod_revision, a.version) == (b"3", 1, 3, 2)
    assert store.delete(b"a") and store.revision == 4
    assert not store.delete(b"a") and store.revision == 4       # nothing deleted: no change
    assert store.put(b"a", b"4") == 5
    assert store.get(b"a").create_revision == 5 and store.get(b"a").version == 1


def test_range_is_by_prefix_and_sorted(store):
    for key in (b"p/2", b"q/1", b"p/1", b"p/10"):
        store.put(key, key)
    assert [kv.key for kv in store.range(b"p/")] == [b"p/1", b"p/10", b"p/2"]
    assert store.range(b"z") == []


def test_compare_and_swap_writes_only_over_the_revision_it_read(store):
    assert store.compare_and_swap(b"k", b"first", mod_revision=0) == (True, 1)
    assert store.compare_and_swap(b"k", b"again", mod_revision=0) == (False, 1)  # exists
    seen = store.get(b"k").mod_revision
    assert store.compare_and_swap(b"k", b"second", mod_revision=seen) == (True, 2)
    assert store.compare_and_swap(b"k", b"stale", mod_revision=seen) == (False, 2)
    assert store.get(b"k").value == b"second"
    assert not store.delete(b"k", mod_revision=1)                # guarded delete
    assert store.delete(b"k", mod_revision=2) and store.get(b"k") is None


def test_two_writers_racing_on_one_revision_one_wins(store):
    store.put(b"dir/x", b"runtime-0")
    rev = store.get(b"dir/x").mod_revision
    results = []
    barrier = threading.Barrier(8)

    def writer(i):
        barrier.wait()
        results.append(store.compare_and_swap(b"dir/x", b"runtime-%d" % i, mod_revision=rev))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sum(done for done, _ in results) == 1


def test_a_lease_that_is_not_kept_alive_takes_its_keys_with_it(store, clock):
    lease = store.grant_lease(2.0)
    store.put(b"members/r1", b"addr", lease=lease)
    store.put(b"keep", b"x")
    clock.t += 1.5
    assert store.keepalive(lease) == 2.0                         # renewed: 2 s from now
    assert store.time_to_live(lease) == pytest.approx(2.0)
    clock.t += 1.9
    assert store.get(b"members/r1") is not None
    clock.t += 0.2                                               # past the deadline
    assert store.get(b"members/r1") is None and store.get(b"keep") is not None
    with pytest.raises(LeaseExpired):
        store.keepalive(lease)
    with pytest.raises(LeaseExpired):
        store.put(b"members/r1", b"addr", lease=lease)           # no key under a dead lease


def test_expire_leases_runs_without_another_call_and_revoke_is_at_once(store, clock):
    a, b = store.grant_lease(1.0), store.grant_lease(10.0)
    store.put(b"a", b"", lease=a)
    store.put(b"b1", b"", lease=b)
    store.put(b"b2", b"", lease=b)
    clock.t += 1.0
    assert store.expire_leases() == 1
    store.revoke(b)
    assert store.range(b"") == []
    with pytest.raises(LeaseExpired):
        store.revoke(b)


def test_a_put_without_the_lease_detaches_the_key(store, clock):
    lease = store.grant_lease(1.0)
    store.put(b"k", b"v", lease=lease)
    store.put(b"k", b"w")                                        # no lease now
    clock.t += 5
    assert store.get(b"k").value == b"w"


def test_lease_ids_are_never_reused(store, clock):
    ids = set()
    for _ in range(50):
        lease = store.grant_lease(0.5)
        assert lease not in ids
        ids.add(lease)
        store.revoke(lease)


def test_a_watch_sees_every_change_under_its_prefix_in_order_each_once(store, clock):
    store.put(b"dir/a", b"0")
    w = store.watch(b"dir/", store.revision + 1)
    assert w.poll() == []
    lease = store.grant_lease(1.0)
    store.put(b"dir/a", b"1")
    store.put(b"other", b"x")
    store.put(b"dir/b", b"2", lease=lease)
    store.delete(b"dir/a")
    clock.t += 2                                                 # dir/b's lease expires
    events = w.poll()
    assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
        (PUT, b"dir/a", b"1"), (PUT, b"dir/b", b"2"), (DELETE, b"dir/a", b""),
        (DELETE, b"dir/b", b"")]
    assert [e.revision for e in events] == sorted(e.revision for e in events)
    assert w.poll() == []


def test_a_watch_can_start_in_the_past_and_blocks_until_a_change(store):
    store.put(b"k", b"1")
    store.put(b"k", b"2")
    w = store.watch(b"k", 1)
    assert [e.kv.value for e in w.poll()] == [b"1", b"2"]
    got = []
    t = threading.Thread(target=lambda: got.extend(w.poll(timeout=10)))
    t.start()
    store.put(b"k", b"3")
    t.join(10)
    assert [e.kv.value for e in got] == [b"3"]
    assert w.poll(timeout=0.01) == []                            # bounded wait, nothing new


def test_a_watch_older_than_the_history_is_told_it_missed_changes(clock):
    store = MemoryStore(clock=clock, history=3)
    for i in range(5):
        store.put(b"k", b"%d" % i)
    with pytest.raises(Compacted, match="read the keys again"):
        store.watch(b"k", 1)
    w = store.watch(b"k", 3)                                     # 3..5 are kept
    assert [e.revision for e in w.poll()] == [3, 4, 5]
    lagging = store.watch(b"k", 6)
    for i in range(4):
        store.put(b"k", b"x")
    with pytest.raises(Compacted):
        lagging.poll()


@pytest.mark.parametrize("key, value", [
    (b"", b"v"), ("text", b"v"), (b"k" * 5000, b"v"), (b"k", "text"), (b"k", b"v" * (MAX_VALUE + 1)),
])
def test_bad_keys_and_values_are_refused_and_change_nothing(store, key, value):
    with pytest.raises(StoreError):
        store.put(key, value)
    assert store.revision == 0


def test_a_lease_needs_a_positive_ttl(store):
    for ttl in (0, -1, float("nan")):
        with pytest.raises(StoreError):
            store.grant_lease(ttl)
