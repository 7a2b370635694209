"""The controller: the proclet -> runtime directory, runtime membership and client leases.

Everything it must not lose lives in a :class:`proclets.store.MemoryStore` (etcd-shaped):

* ``runtime/<id>`` -> ``[address]``, attached to a store lease of ``HEARTBEAT * DEAD_AFTER``
  seconds that each heartbeat keeps alive: a runtime that stops beating loses its key when
  the lease expires, and :meth:`Controller.tick` (on a timer) marks its proclets lost.
* ``proclet/<pid>`` -> ``[runtime id, address, epoch, class path, lost]``. Spawning creates
  it (compare-and-swap against absent); a migration moves it with a compare-and-swap on its
  mod_revision after checking the epoch the source named, so two movers cannot both win.
* client leases are store leases (no keys): granted, renewed and checked by id. An id is
  the controller's incarnation (start time in ms) above the store's lease number, so a
  restarted controller never grants an id that a runtime's completion records still hold.

A controller that restarts relearns the directory from the runtimes: their heartbeat is
answered "unknown runtime" and they register again with their proclets and epochs. Until
``relearn`` seconds after the start, a lookup of an unknown pid says UNKNOWN (the ref
waits); after that, an unknown pid is lost. It relearns client leases the same way: a
runtime registers with the leases it holds valid, and the controller *adopts* those of an
earlier incarnation (a store lease of a full ttl each, renewed and checked like its own).
A call retried under such a lease is then answered from its completion record instead of
being refused as expired (which its caller could only report as an unknown outcome). A
lease no runtime holds has no records anywhere, so its client may safely take a new one.

Plain object, clock injected; :func:`serve` puts it on a microrpc server.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

import msgpack

from proclets import _net, _protocol as P
from proclets.store import LeaseExpired, MemoryStore

__all__ = ["Controller", "serve"]

_RUNTIME = b"runtime/"
_PROCLET = b"proclet/"


def _pkey(pid: int) -> bytes:
    return _PROCLET + str(pid).encode()


class Controller:
    def __init__(self, *, store: MemoryStore | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 heartbeat: float = P.HEARTBEAT, dead_after: int = P.DEAD_AFTER,
                 lease_ttl: float = P.LEASE_TTL, relearn: float | None = None) -> None:
        self.clock = clock
        self.store = store if store is not None else MemoryStore(clock=clock)
        self.heartbeat = heartbeat
        self.member_ttl = heartbeat * dead_after
        self.lease_ttl = lease_ttl
        self.relearn = 3 * self.member_ttl if relearn is None else relearn
        self.started = clock()
        self.incarnation = (time.time_ns() // 1_000_000) & 0x7FFFFFFF
        self._lock = threading.Lock()
        self._members: dict[str, int] = {}          # runtime id -> its store lease
        self._adopted: dict[int, int] = {}          # an earlier incarnation's client lease
                                                    # -> its store lease here
        self._next_adopted_sweep = self.started
        self._watch = self.store.watch(_RUNTIME, self.store.revision + 1)
        self.declared_dead = 0

    # -- membership -------------------------------------------------------------------

    def register(self, rid: str, address: str, proclets: list,
                 leases: list | None = None) -> dict:
        """A runtime (re)joins with the proclets it holds and the client leases it holds
        valid (adopted if they are an earlier incarnation's). Returns the pids it must
        treat as lost (the directory says so) or drop (the directory puts them elsewhere
        at a later epoch: a stale copy)."""
        self.adopt(leases or ())
        lease = self.store.grant_lease(self.member_ttl)
        with self._lock:
            old = self._members.pop(rid, None)
            self._members[rid] = lease
        if old is not None:
            try:
                self.store.revoke(old)
            except LeaseExpired:
                pass
        self.store.put(_RUNTIME + rid.encode(), msgpack.packb([address]), lease=lease)
        lost, stale = [], []
        for pid, epoch, path in proclets:
            key = _pkey(pid)
            while True:
                kv = self.store.get(key)
                if kv is None:
                    value = [rid, address, epoch, path, False]
                    done, _ = self.store.compare_and_swap(key, msgpack.packb(value),
                                                          mod_revision=0)
                    if done:
                        break
                    continue
                owner, _, known_epoch, _, is_lost = msgpack.unpackb(kv.value)
                if is_lost:
                    lost.append(pid)
                elif known_epoch > epoch or (known_epoch == epoch and owner != rid):
                    stale.append(pid)
                else:
                    value = [rid, address, epoch, path, False]
                    done, _ = self.store.compare_and_swap(key, msgpack.packb(value),
                                                          mod_revision=kv.mod_revision)
                    if not done:
                        continue
                break
        return {"lost": lost, "stale": stale}

    def beat(self, rid: str, leases: list) -> bool:
        """A heartbeat, with the client leases of the runtime's proclets to keep alive.
        False: unknown runtime (register again)."""
        with self._lock:
            lease = self._members.get(rid)
        if lease is None:
            return False
        try:
            self.store.keepalive(lease)
        except LeaseExpired:
            with self._lock:
                if self._members.get(rid) == lease:
                    del self._members[rid]
            return False
        for client in leases:
            self.renew(client)
        return True

    def tick(self) -> list[str]:
        """Expire what is due and mark the proclets of runtimes declared dead as lost.
        Returns the runtimes declared dead now."""
        self.store.expire_leases()
        self._sweep_adopted()
        dead = []
        for event in self._watch.poll(0):
            if event.type == "delete":
                rid = event.kv.key[len(_RUNTIME):].decode()
                with self._lock:
                    if self._members.get(rid) == event.kv.lease:
                        del self._members[rid]
                    elif rid in self._members:
                        continue                 # it registered again meanwhile
                dead.append(rid)
        for rid in dead:
            self.declared_dead += 1
            self._mark_lost(rid)
        return dead

    def _mark_lost(self, rid: str) -> None:
        for kv in self.store.range(_PROCLET):
            value = msgpack.unpackb(kv.value)
            if value[0] == rid and not value[4]:
                value[4] = True
                self.store.compare_and_swap(kv.key, msgpack.packb(value),
                                            mod_revision=kv.mod_revision)

    def runtimes(self) -> list:
        return [[kv.key[len(_RUNTIME):].decode(), msgpack.unpackb(kv.value)[0]]
                for kv in self.store.range(_RUNTIME)]

    # -- the directory ----------------------------------------------------------------

    def locate(self, pid: int) -> list:
        kv = self.store.get(_pkey(pid))
        if kv is None:
            status = P.UNKNOWN if self.clock() - self.started < self.relearn else P.GONE
            return [status, None, None, 0]
        rid, address, epoch, _, lost = msgpack.unpackb(kv.value)
        return [P.GONE if lost else P.HERE, rid, address, epoch]

    def forget(self, pid: int) -> list:
        """Destroy proclet ``pid`` in the directory, for good: its entry is marked gone
        (kept, so that no runtime that still holds it can register it back), a migration
        of it fails its compare-and-swap, and every lookup says GONE. Returns [HERE,
        runtime id, address, epoch] naming the runtime that must drop it now, [GONE, ...]
        if it was already lost, destroyed or never made, or [UNKNOWN, ...] while a
        restarted controller relearns (ask again)."""
        key = _pkey(pid)
        while True:
            kv = self.store.get(key)
            if kv is None:
                return self.locate(pid)          # UNKNOWN while relearning, else GONE
            rid, address, epoch, path, lost = msgpack.unpackb(kv.value)
            if lost:
                return [P.GONE, None, None, 0]
            value = msgpack.packb([rid, address, epoch, path, True])
            if self.store.compare_and_swap(key, value, mod_revision=kv.mod_revision)[0]:
                return [P.HERE, rid, address, epoch]

    def place(self, pid: int, rid: str, address: str, path: str) -> bool:
        """A new proclet at epoch 1 (False: the pid exists)."""
        value = msgpack.packb([rid, address, 1, path, False])
        return self.store.compare_and_swap(_pkey(pid), value, mod_revision=0)[0]

    def move(self, pid: int, from_rid: str, epoch: int, to_rid: str, to_address: str) -> int:
        """Move the entry from (from_rid, epoch) to to_rid at epoch + 1; 0 if the entry is
        not at (from_rid, epoch) any more (a reclaim or another move won)."""
        return self._swap(pid, from_rid, epoch, to_rid, to_address)

    def reclaim(self, pid: int, rid: str, epoch: int) -> int:
        """The source of a failed migration takes the entry back (epoch + 1), fencing off a
        destination whose move has not happened yet. 0: the move happened first (or the
        proclet is lost); -1: the pid is unknown (a restarted controller that has not
        relearned it yet: ask again)."""
        if self.store.get(_pkey(pid)) is None:
            return -1
        return self._swap(pid, rid, epoch, rid, None)

    def _swap(self, pid: int, rid: str, epoch: int, to_rid: str, to_address) -> int:
        key = _pkey(pid)
        kv = self.store.get(key)
        if kv is None:
            return 0
        owner, address, known_epoch, path, lost = msgpack.unpackb(kv.value)
        if owner != rid or known_epoch != epoch or lost:
            return 0
        value = [to_rid, to_address or address, epoch + 1, path, False]
        done, _ = self.store.compare_and_swap(key, msgpack.packb(value),
                                              mod_revision=kv.mod_revision)
        return epoch + 1 if done else 0

    # -- client leases ----------------------------------------------------------------

    def grant_lease(self) -> list:
        return [(self.incarnation << 32) | self.store.grant_lease(self.lease_ttl),
                self.lease_ttl]

    def _local(self, lease: int) -> int:
        if lease >> 32 == self.incarnation:
            return lease & 0xFFFFFFFF
        return self._adopted.get(lease, 0)

    def adopt(self, leases) -> int:
        """Keep alive the client leases of an earlier incarnation of the controller that
        a runtime holds valid (see the module docstring). Returns how many were new."""
        adopted = 0
        for lease in leases:
            if type(lease) is not int or not 0 < lease < (1 << 64) \
                    or lease >> 32 == self.incarnation:
                continue
            with self._lock:
                if lease in self._adopted:
                    continue
                self._adopted[lease] = self.store.grant_lease(self.lease_ttl)
            adopted += 1
        return adopted

    def _sweep_adopted(self) -> None:
        """Forget adopted leases whose store lease expired (at most once a second)."""
        now = self.clock()
        if now < self._next_adopted_sweep:
            return
        self._next_adopted_sweep = now + 1.0
        with self._lock:
            adopted = list(self._adopted.items())
        for lease, local in adopted:
            try:
                self.store.time_to_live(local)
            except LeaseExpired:
                with self._lock:
                    if self._adopted.get(lease) == local:
                        del self._adopted[lease]

    def renew(self, lease: int) -> bool:
        local = self._local(lease)
        if not local:
            return False
        try:
            self.store.keepalive(local)
            return True
        except LeaseExpired:
            return False

    def lease_left(self, lease: int) -> float:
        local = self._local(lease)
        if not local:
            return -1.0
        try:
            return self.store.time_to_live(local)
        except LeaseExpired:
            return -1.0


def serve(address: str, key: bytes | None, controller: Controller | None = None):
    """A started microrpc server for ``controller`` and the thread that ticks it; returns
    (server, controller, stop function). Every handler is short and runs inline."""
    controller = controller or Controller()
    server = _net.serve(address, key)
    for name, fn in ((P.REGISTER, controller.register), (P.BEAT, controller.beat),
                     (P.LOCATE, controller.locate), (P.PLACE, controller.place),
                     (P.MOVE, controller.move), (P.RECLAIM, controller.reclaim),
                     (P.LEASE, controller.grant_lease), (P.RENEW, controller.renew),
                     (P.LEASE_LEFT, controller.lease_left),
                     (P.RUNTIMES, controller.runtimes), (P.FORGET, controller.forget)):
        server.register(name, fn)
    stopping = threading.Event()

    def ticker() -> None:
        # Half a beat: a dead runtime is declared within half a beat of its lease's end.
        while not stopping.wait(controller.heartbeat / 2):
            controller.tick()

    thread = threading.Thread(target=ticker, name="proclets-controller-tick", daemon=True)
    server.start()
    thread.start()

    def stop() -> None:
        stopping.set()
        server.stop()
        thread.join(5)

    return server, controller, stop
