"""The controller's store: keys with revisions, leases and watches, in memory.

The controller keeps everything it must not lose (the proclet -> runtime directory, runtime
membership, client leases) behind this small interface, shaped after etcd's v3 API so that
an etcd-backed store can replace :class:`MemoryStore` when a deployment needs the controller
to survive a machine (etcd is a replicated store; this project does not write consensus):

* every change bumps one store-wide **revision**; each key remembers the revision that
  created it (``create_revision``), that last changed it (``mod_revision``) and how many
  times it changed since it was created (``version``);
* ``compare_and_swap(key, value, mod_revision=r)`` writes only if the key was last changed
  at revision ``r`` (0: only if it does not exist) -- etcd's ``Txn(Compare(ModRevision))``;
* a **lease** is granted with a time to live and kept alive by its holder; when it expires
  (or is revoked) every key attached to it is deleted, in one revision each;
* ``watch(prefix, start_revision)`` returns every change to keys under ``prefix`` from
  that revision on: the history is kept for the last ``history`` changes, and a watch that
  starts before them raises :class:`Compacted` (etcd's ``ErrCompacted``), so a watcher
  either sees every change or knows it missed some and must re-read.

Time is an injected clock (seconds, monotonic): leases expire when a call sees the clock
past their deadline, or when :meth:`MemoryStore.expire_leases` runs. Thread-safe: one lock.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
import time
from typing import Callable, Iterator

__all__ = [
    "Compacted", "Event", "KeyValue", "LeaseExpired", "MemoryStore", "StoreError", "Watch",
]

PUT = "put"
DELETE = "delete"
# Changes kept for watchers. The controller's watchers (refs refreshing a location, runtimes
# following membership) lag by a few changes; a watcher further behind re-reads the keys.
DEFAULT_HISTORY = 10_000
# Keys and values are bytes; bound them as etcd does (1.5 MiB requests by default): this
# store holds locations and leases, not state.
MAX_KEY = 4096
MAX_VALUE = 1 << 20


class StoreError(Exception):
    """A store operation that cannot be done (bad key or value, unknown lease)."""


class LeaseExpired(StoreError):
    """The lease is unknown, expired or revoked: its keys are gone."""


class Compacted(StoreError):
    """A watch asked for changes older than the store's history keeps."""


@dataclasses.dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int                   # changes since it was created (1 after the first put)
    lease: int                     # 0: none


@dataclasses.dataclass(frozen=True)
class Event:
    type: str                      # PUT or DELETE
    kv: KeyValue                   # after the change (a DELETE: the key as it was, value b"")
    revision: int                  # the store revision this change made


@dataclasses.dataclass
class _Lease:
    id: int
    ttl: float
    deadline: float
    keys: set[bytes]


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or not key:
        raise StoreError(f"a key is non-empty bytes, not {key!r}")
    if len(key) > MAX_KEY:
        raise StoreError(f"key of {len(key)} bytes is over the {MAX_KEY}-byte limit")
    return key


def _check_value(value: bytes) -> bytes:
    if not isinstance(value, bytes):
        raise StoreError(f"a value is bytes, not {type(value).__name__}")
    if len(value) > MAX_VALUE:
        raise StoreError(f"value of {len(value)} bytes is over the {MAX_VALUE}-byte limit")
    return value


class MemoryStore:
    """The in-memory store (see the module docstring). ``clock``: seconds, monotonic."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 history: int = DEFAULT_HISTORY) -> None:
        if history < 1:
            raise ValueError("history must be at least 1")
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._revision = 0
        self._kv: dict[bytes, KeyValue] = {}
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(1)
        self._events: collections.deque[Event] = collections.deque(maxlen=history)

    # -- reading ------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The revision of the last change (0: none yet)."""
        with self._lock:
            self._expire(self._clock())
            return self._revision

    def get(self, key: bytes) -> KeyValue | None:
        with self._lock:
            self._expire(self._clock())
            return self._kv.get(_check_key(key))

    def range(self, prefix: bytes) -> list[KeyValue]:
        """Every key starting with ``prefix``, sorted by key."""
        with self._lock:
            self._expire(self._clock())
            return sorted((kv for k, kv in self._kv.items() if k.startswith(prefix)),
                          key=lambda kv: kv.key)

    # -- writing ------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Set ``key``; returns the new revision. With ``lease``, the key goes when the
        lease does (a put without one detaches it from any lease it had)."""
        with self._lock:
            self._expire(self._clock())
            return self._put(_check_key(key), _check_value(value), lease)

    def compare_and_swap(self, key: bytes, value: bytes, *, mod_revision: int,
                         lease: int = 0) -> tuple[bool, int]:
        """Set ``key`` only if its mod_revision is ``mod_revision`` (0: only if absent).
        Returns (done, revision): the new revision, or the key's current mod_revision (0 if
        absent) when it was not done."""
        with self._lock:
            self._expire(self._clock())
            current = self._kv.get(_check_key(key))
            now_rev = current.mod_revision if current is not None else 0
            if now_rev != mod_revision:
                return False, now_rev
            return True, self._put(key, _check_value(value), lease)

    def delete(self, key: bytes, *, mod_revision: int | None = None) -> bool:
        """Delete ``key`` (if ``mod_revision`` is given, only if it still has it). True if a
        key was deleted."""
        with self._lock:
            self._expire(self._clock())
            current = self._kv.get(_check_key(key))
            if current is None:
                return False
            if mod_revision is not None and current.mod_revision != mod_revision:
                return False
            self._delete(current)
            return True

    # -- leases -------------------------------------------------------------------------

    def grant_lease(self, ttl: float) -> int:
        """A new lease that lives ``ttl`` seconds unless kept alive. Ids are never reused."""
        if not ttl > 0:
            raise StoreError(f"a lease's ttl is positive seconds, not {ttl!r}")
        with self._lock:
            now = self._clock()
            self._expire(now)
            lease = _Lease(next(self._lease_ids), float(ttl), now + ttl, set())
            self._leases[lease.id] = lease
            return lease.id

    def keepalive(self, lease_id: int) -> float:
        """Renew the lease for its ttl; returns the ttl. LeaseExpired if it is gone."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            lease = self._live_lease(lease_id)
            lease.deadline = now + lease.ttl
            return lease.ttl

    def time_to_live(self, lease_id: int) -> float:
        """Seconds the lease has left; LeaseExpired if it is gone."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            return self._live_lease(lease_id).deadline - now

    def revoke(self, lease_id: int) -> None:
        """End the lease now: its keys are deleted. LeaseExpired if it was already gone."""
        with self._lock:
            self._expire(self._clock())
            self._end_lease(self._live_lease(lease_id))

    def expire_leases(self) -> int:
        """End every lease past its deadline now (a controller calls this on a timer, so that
        watchers learn of a dead holder without waiting for another call). Returns how many."""
        with self._lock:
            return self._expire(self._clock())

    # -- watching -----------------------------------------------------------------------

    def watch(self, prefix: bytes, start_revision: int) -> "Watch":
        """Changes to keys under ``prefix`` with revision >= ``start_revision`` (use
        ``revision + 1`` after a read to follow on from it)."""
        with self._lock:
            self._check_history(start_revision)
        return Watch(self, prefix, start_revision)

    def _events_since(self, prefix: bytes, start: int, timeout: float | None) -> list[Event]:
        """The events for a Watch (under ``prefix``, revision >= start), waiting up to
        ``timeout`` seconds (None: forever) for at least one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                self._expire(self._clock())
                self._check_history(start)
                if self._revision >= start:
                    found = [e for e in self._events
                             if e.revision >= start and e.kv.key.startswith(prefix)]
                    if found:
                        return found
                    start = self._revision + 1   # nothing for us up to here
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return []
                self._changed.wait(left)

    # -- inside (lock held) -------------------------------------------------------------

    def _check_history(self, start: int) -> None:
        oldest = self._events[0].revision if self._events else self._revision + 1
        if start < oldest and start <= self._revision:
            raise Compacted(f"revision {start} is older than the history kept (from "
                            f"{oldest}); read the keys again and watch from the revision "
                            f"of that read")

    def _live_lease(self, lease_id: int) -> _Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseExpired(f"lease {lease_id} is expired, revoked or unknown")
        return lease

    def _put(self, key: bytes, value: bytes, lease_id: int) -> int:
        lease = self._live_lease(lease_id) if lease_id else None
        old = self._kv.get(key)
        if old is not None and old.lease and old.lease != lease_id:
            self._leases[old.lease].keys.discard(key)
        self._revision += 1
        kv = KeyValue(key, value,
                      old.create_revision if old is not None else self._revision,
                      self._revision, old.version + 1 if old is not None else 1, lease_id)
        self._kv[key] = kv
        if lease is not None:
            lease.keys.add(key)
        self._record(Event(PUT, kv, self._revision))
        return self._revision

    def _delete(self, kv: KeyValue) -> None:
        del self._kv[kv.key]
        if kv.lease:
            self._leases[kv.lease].keys.discard(kv.key)
        self._revision += 1
        self._record(Event(DELETE, dataclasses.replace(kv, value=b"",
                                                       mod_revision=self._revision),
                           self._revision))

    def _end_lease(self, lease: _Lease) -> None:
        for key in sorted(lease.keys):
            self._delete(self._kv[key])
        del self._leases[lease.id]

    def _expire(self, now: float) -> int:
        gone = [lease for lease in self._leases.values() if lease.deadline <= now]
        for lease in gone:
            self._end_lease(lease)
        return len(gone)

    def _record(self, event: Event) -> None:
        self._events.append(event)
        self._changed.notify_all()


class Watch:
    """Changes under a prefix from a revision on, in order, each once."""

    def __init__(self, store: MemoryStore, prefix: bytes, start_revision: int) -> None:
        self._store = store
        self.prefix = prefix
        self.next_revision = start_revision

    def poll(self, timeout: float | None = 0.0) -> list[Event]:
        """The changes not returned yet, waiting up to ``timeout`` seconds (None: forever)
        for at least one. Compacted if the watch fell behind the store's history."""
        events = self._store._events_since(self.prefix, self.next_revision, timeout)
        if events:
            self.next_revision = events[-1].revision + 1
        return events

    def __iter__(self) -> Iterator[Event]:
        """Every change, forever (blocking)."""
        while True:
            yield from self.poll(None)
