"""A runtime: one microrpc server hosting many proclets.

:class:`Runtime` is the logic, a plain object (controller and clock injected) whose methods
are the server's handlers; :func:`run` is the process (``proclets runtime``). Every change of
a proclet's lifecycle state goes through :func:`proclets.lifecycle.step`.

**Turns.** A proclet runs one call at a time. A call of a plain method runs inline on the
I/O thread (a hand-off to a worker costs tens of microseconds); a ``@proclets.blocking``
method runs on the worker pool, and calls that arrive meanwhile wait in the proclet's queue
(their replies deferred) and run after it, on that worker. A turn checks the proclet's
completion table (RIFL) first: the call runs only if it is new, and its reply is saved in
the same turn, so state and record change together.

**Migration** (the source's :meth:`Runtime.migrate_out`, on a worker): freeze (new calls
are answered RETRY before they run), wait for the running turn and the queue to drain,
pickle the state and the completion table (proclets.migration), send them to the
destination's :meth:`Runtime.install`, which unpickles them, moves the directory entry at
the controller with a compare-and-swap on (source, epoch) and serves. The source then keeps
a tombstone naming the destination, so a stale ref is redirected without asking the
controller. If the install fails, the source reclaims the entry at the controller (a
compare-and-swap that fences off a destination whose move has not happened) and serves
again; if the reclaim loses, the move happened, and the source hands off.
"""
from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import msgpack

from microrpc.errors import RpcError
from microrpc.exactly_once import CachedLeases, CompletionTable

from proclets import _net, _protocol as P
from proclets._hot import (CallHandler, Entry as _Entry, Unavailable as _Unavailable,
                           inline_turn, turn)
from proclets._turn import enter_turn, leave_turn
from proclets._wire import encode_reply
from proclets.errors import MigrationError, ProcletError, ProcletLost
from proclets.lifecycle import LIFECYCLE, Action, Event, State, step
from proclets.migration import dump, load, pack_install, unpack_install
from proclets.proclet import get_state, load_class, method_of, set_state
from proclets.ref import from_wire

__all__ = ["Runtime", "run"]

# A migration waits this long for the running call to end before it gives up (ABORT).
DRAIN_TIMEOUT = 10.0
# ... and this long for the destination to install the state.
INSTALL_TIMEOUT = 30.0
# After a failed install, how long the source keeps asking a controller that cannot say
# who holds the proclet (longer than a restarted controller takes to relearn).
RECLAIM_WAIT = 5.0

_OK, _ERROR, _RETRY = P.OK, P.ERROR, P.RETRY
_PRESENT = State.PRESENT
# The states in which the lifecycle table runs a call, read from the table once: the hot
# path tests membership instead of looking the pair up (the same rule, one place).
_SERVING = frozenset(s for s in State
                     if LIFECYCLE.get((s, Event.CALL), (None,))[0] is Action.RUN)


class Runtime:
    def __init__(self, controller: Any, *, key: bytes | None = None, rid: str | None = None,
                 address: str = "", clock: Callable[[], float] = time.monotonic,
                 workers: int = 8) -> None:
        self.controller = controller
        self.key = key
        self.rid = rid or secrets.token_hex(8)
        self.address = address
        self.clock = clock
        self._entries: dict[int, _Entry] = {}
        self._lock = threading.Lock()
        self._leases: dict[int, float] = {}       # client lease -> valid until (our clock)
        self._dead_leases: set[int] = set()       # known expired, records not dropped yet
        # One authority, plugged into every table: the cache checked in C, the controller
        # asked (_lease_valid, which fills the cache) for a lease not valid in it.
        self._lease_valid_fn = CachedLeases(self._leases, clock, self._lease_valid)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="proclets-turn")
        self._peers: dict[str, Any] = {}
        self.migrations_out = self.migrations_in = 0
        # The CALL handler (see proclets._protocol for the reply codes).
        self.call = CallHandler(self._entries, _SERVING, method_of, self._refuse,
                                self._queued)

    # -- calls ------------------------------------------------------------------------

    def _queued(self, ctx, e: _Entry, fn, blocking, args, kwargs, lease, seq, ack):
        """CALL when the proclet is busy or the method blocks (the usual case runs in
        _hot.CallHandler): queue the call behind the running turn, hand it to a worker, or,
        if the turn ended meanwhile, run it in line."""
        with self._lock:
            if e.running or blocking:
                job = (fn, args, kwargs, lease, seq, ack)
                if e.running:
                    e.queue.append((ctx.defer(), job))
                    return None
                e.running = True
                self._pool.submit(self._on_worker, e, ctx.defer(), job)
                return None
            e.running = True
        return inline_turn(e, fn, args, kwargs, lease, seq, ack)

    def _on_worker(self, e: _Entry, reply, job: tuple) -> None:
        """Run a blocking turn, then whatever queued behind it, on this worker."""
        while True:
            enter_turn(e)
            try:
                reply.result(turn(e, *job))
            except BaseException as exc:     # an unencodable result, a bug: still a reply
                try:
                    reply.error(exc)
                except RuntimeError:
                    pass
            finally:
                leave_turn()
            nxt = self._end_turn(e)
            if nxt is None:
                return
            reply, job = nxt

    def _end_turn(self, e: _Entry):
        """After a worker's turn: the next queued call (this worker runs it), or None.
        Calls queue only while a worker's turn runs (an inline turn runs to its end on the
        I/O thread, which is the only thread that admits calls), so an inline turn never
        leaves a queue behind."""
        with self._lock:
            if e.queue:
                return e.queue.popleft()
            e.running = False
            drained = e.drained
        if drained is not None:
            drained.set()
        return None

    def _refuse(self, state: State, e: _Entry) -> bytes:
        """The reply to a call the lifecycle table does not run in ``state``."""
        return self._refusal(step(state, Event.CALL)[0], e)

    def _refusal(self, action: Action, e: _Entry) -> bytes:
        if action is Action.WRONG_TARGET:
            return encode_reply(P.WRONG_TARGET, e.moved_to)
        if action is Action.RETRY_ELSEWHERE:
            return encode_reply(_RETRY, None)
        return encode_reply(P.LOST, None)

    # -- client leases ----------------------------------------------------------------

    def _lease_valid(self, lease: int) -> bool:
        """The controller's word on a lease the cache does not hold as valid (the tables'
        CachedLeases checks the cache first): asked when a new id arrives, then cached,
        as RAMCloud does."""
        now = self.clock()
        try:
            left = self.controller.lease_left(lease)
        except (RpcError, OSError) as exc:
            raise _Unavailable(str(exc)) from None
        if left <= 0:
            self._leases.pop(lease, None)
            self._dead_leases.add(lease)          # its records go at the next sweep
            return False
        self._leases[lease] = now + left      # measured before asking: never too late
        return True

    def sweep_leases(self) -> int:
        """Forget the completion records of client leases that expired (asks the
        controller about the cached leases past their cached expiry). Returns how many
        leases were dropped."""
        now = self.clock()
        for lease, until in list(self._leases.items()):
            if until > now:
                continue
            try:
                left = self.controller.lease_left(lease)
            except (RpcError, OSError):
                break
            if left > 0:
                self._leases[lease] = now + left
            else:
                self._leases.pop(lease, None)
                self._dead_leases.add(lease)
        dead, self._dead_leases = self._dead_leases, set()
        for lease in dead:
            for e in list(self._entries.values()):
                if e.table is not None:
                    e.table.drop_lease(lease)
        return len(dead)

    # -- spawn ------------------------------------------------------------------------

    def spawn(self, pid: int, path: str, args: list, kwargs: dict) -> int:
        """Create the proclet here (SPAWN): built and placed in the directory before it is
        entered, so no call sees it half made. Runs on the I/O thread, as installs do, so
        no other spawn or install of the pid interleaves."""
        cls = load_class(path)
        e = self._entries.get(pid) or _Entry(pid)
        action, after = step(e.state, Event.SPAWN)
        if action is not Action.CREATE:
            raise ProcletError(f"proclet {pid} is {e.state.value} here: not created")
        obj = cls(*from_wire(args), **(kwargs or {}))
        if not self.controller.place(pid, self.rid, self.address, path):
            raise ProcletError(f"proclet id {pid} exists in the directory")
        with self._lock:
            e.obj, e.cls, e.path, e.epoch, e.moved_to = obj, cls, path, 1, None
            e.table = CompletionTable(self._lease_valid_fn)
            e.state = after
            self._entries[pid] = e
        return 1

    # -- destroy ----------------------------------------------------------------------

    def destroy(self, pid: int) -> str:
        """DESTROY, after the controller marked ``pid`` destroyed (Controller.forget):
        forget the proclet here, its entry included (no tombstone: a ref that calls here
        is told WRONG_TARGET and learns GONE from the controller). A turn running on a
        worker ends and is answered; the calls queued behind it are told to retry, and
        then end lost. BUSY while it migrates: the migration's directory move fails (the
        entry is marked) and the migration drops it, so the caller asks again."""
        with self._lock:
            e = self._entries.get(pid)
            if e is None:
                return P.NOT_HERE
            action, after = step(e.state, Event.DESTROY)
            if action is Action.REFUSE:
                return P.BUSY
            if action is Action.DROP:
                e.state = after
            e.obj = e.table = None
            del self._entries[pid]
        return P.DROPPED

    # -- migration: the source ----------------------------------------------------------

    def migrate_out(self, pid: int, destination: str) -> dict:
        """Move proclet ``pid`` to the runtime at ``destination``; the statistics."""
        t0 = time.perf_counter()
        with self._lock:
            e = self._entries.get(pid)
            if e is None:
                raise MigrationError(f"proclet {pid} is not on {self.address}")
            action, after = step(e.state, Event.MIGRATE_OUT)
            if action is not Action.FREEZE:
                raise MigrationError(f"proclet {pid} is {e.state.value} on {self.address}")
            e.state = after
            # ``drained`` before ``running`` is read: see call() for the order an inline
            # turn (which takes no lock) keeps.
            drained = e.drained = threading.Event()
            if not e.running:
                drained = e.drained = None
        if drained is not None and not drained.wait(DRAIN_TIMEOUT):
            self._thaw(e)
            raise MigrationError(f"the running call of proclet {pid} did not end within "
                                 f"{DRAIN_TIMEOUT} s; migration aborted")
        e.drained = None
        t1 = time.perf_counter()
        try:
            header, buffers, kinds = dump(get_state(e.obj), e.table)
            nbuffers = len(buffers)
            body = pack_install([pid, e.epoch, e.path, self.rid, kinds], header, buffers)
            del header, buffers
        except Exception as exc:
            self._thaw(e)
            raise MigrationError(f"cannot pickle the state of proclet {pid}: {exc}") from None
        t2 = time.perf_counter()
        try:
            done = msgpack.unpackb(self._peer(destination).call(
                P.INSTALL, body, timeout=INSTALL_TIMEOUT))
        except Exception as exc:
            self._install_failed(e, destination, exc)     # raises or hands off
            done = None
        t3 = time.perf_counter()
        with self._lock:
            if e.state is State.LOST:
                # The controller declared this runtime dead while it migrated (it missed
                # its heartbeats): the proclet is lost here, and the directory, not this
                # runtime, says whether the destination has it.
                raise ProcletLost(f"proclet {pid} was declared lost during its migration "
                                  f"(runtime {self.address} missed its heartbeats)")
            action, after = step(e.state, Event.HANDED_OFF)
            e.state, e.obj, e.table, e.moved_to = after, None, None, destination
        self.migrations_out += 1
        size = len(body)
        install = done["install"] if done else 0.0
        directory = done["directory"] if done else 0.0
        return {"pid": pid, "source": self.address, "destination": destination,
                "bytes": size, "buffers": nbuffers, "drain": t1 - t0,
                "serialize": t2 - t1,
                "transfer": max(t3 - t2 - install - directory, 0.0),
                "install": install, "directory": directory, "total": t3 - t0}

    def _install_failed(self, e: _Entry, destination: str, exc: Exception) -> None:
        """Raises MigrationError after taking the proclet back, or returns if the
        destination has it (the directory names it)."""
        deadline = time.monotonic() + RECLAIM_WAIT
        while True:
            try:
                epoch = self.controller.reclaim(e.pid, self.rid, e.epoch)
            except (RpcError, OSError):
                epoch = -1
            if epoch != -1 or time.monotonic() > deadline:
                break
            # The controller cannot say yet (unreachable, or restarted and relearning:
            # this runtime's own registration names it at the old epoch soon). Neither
            # side may serve until it can.
            time.sleep(P.RELOCATE_POLL)
        if epoch > 0:
            e.epoch = epoch
            self._thaw(e)
            raise MigrationError(f"install at {destination} failed: {exc}") from None
        if epoch == -1:
            raise MigrationError(f"install at {destination} failed ({exc}) and the "
                                 f"controller cannot say who holds proclet {e.pid}; it "
                                 f"stays frozen (calls to it are told to retry)") from None
        # The reclaim lost: the destination's move happened, so it has the proclet.

    def _thaw(self, e: _Entry) -> None:
        with self._lock:
            e.state = step(e.state, Event.ABORT)[1]
            e.drained = None

    def _peer(self, address: str):
        """The raw-codec client to another runtime (install messages)."""
        client = self._peers.get(address)
        if client is None:
            client = self._peers[address] = _net.connect(address, self.key, codec="raw")
        return client

    # -- migration: the destination -----------------------------------------------------

    def install_message(self, body: bytes) -> bytes:
        """The INSTALL handler (raw codec): an install message in, msgpack'd
        {"install", "directory", "epoch"} out."""
        try:
            (pid, epoch, path, source, kinds), header, buffers = unpack_install(body)
        except (ValueError, TypeError) as exc:
            raise MigrationError(f"malformed install message: {exc}") from None
        return msgpack.packb(self.install(pid, epoch, path, source, header, buffers,
                                          kinds))

    def install(self, pid: int, epoch: int, path: str, source: str, header: bytes,
                buffers: list, kinds: dict) -> dict:
        t0 = time.perf_counter()
        cls = load_class(path)
        with self._lock:
            e = self._entries.get(pid) or _Entry(pid)
            action, after = step(e.state, Event.PREPARE_IN)
            if action is not Action.RESERVE:
                raise MigrationError(f"proclet {pid} is {e.state.value} on {self.address}")
            e.state = after
            self._entries[pid] = e
        try:
            state, table = load(header, buffers, kinds, self._lease_valid_fn)
            obj = set_state(cls, state)
            t1 = time.perf_counter()
            new_epoch = self.controller.move(pid, source, epoch, self.rid, self.address)
            t2 = time.perf_counter()
            if not new_epoch:
                raise MigrationError(f"the directory entry of proclet {pid} is not at "
                                     f"({source}, epoch {epoch}) any more")
        except BaseException:
            with self._lock:
                e.state = step(e.state, Event.ABORT)[1]
            raise
        with self._lock:
            e.obj, e.cls, e.path, e.table, e.epoch, e.moved_to = obj, cls, path, table, \
                new_epoch, None
            e.state = step(e.state, Event.INSTALL)[1]
        self.migrations_in += 1
        return {"install": t1 - t0, "directory": t2 - t1, "epoch": new_epoch}

    # -- membership ---------------------------------------------------------------------

    def holdings(self) -> list:
        """[[pid, epoch, class path]] of the proclets this runtime holds (to register)."""
        with self._lock:
            return [[e.pid, e.epoch, e.path] for e in self._entries.values()
                    if e.state in (State.PRESENT, State.MIGRATING_OUT)]

    def client_leases(self) -> list:
        """The leases of the calls its proclets make (renewed with each heartbeat)."""
        out = []
        for e in list(self._entries.values()):
            ids = getattr(e.obj, "_proclet_client", None) if e.obj is not None else None
            if ids is not None and ids.lease:
                out.append(ids.lease)
        return out

    def held_leases(self) -> list:
        """The client leases this runtime holds valid: those its cache says are alive, and
        those of the calls its proclets make (a restarted controller adopts them)."""
        now = self.clock()
        valid = [lease for lease, until in list(self._leases.items()) if until > now]
        return valid + self.client_leases()

    def register(self) -> None:
        """(Re)join the controller, then drop what it says is lost or stale here."""
        answer = self.controller.register(self.rid, self.address, self.holdings(),
                                          self.held_leases())
        with self._lock:
            for pid in answer["lost"]:
                e = self._entries.get(pid)
                if e is not None:
                    e.state = step(e.state, Event.RUNTIME_LOST)[1]
                    e.obj = e.table = None
            for pid in answer["stale"]:
                e = self._entries.get(pid)
                if e is not None and e.state is State.PRESENT:
                    e.state = step(e.state, Event.DESTROY)[1]
                    e.obj = e.table = None

    def heartbeat(self) -> None:
        """One beat; registers again if the controller does not know us."""
        if not self.controller.beat(self.rid, self.client_leases()):
            self.register()

    def info(self) -> dict:
        with self._lock:
            return {"id": self.rid, "address": self.address,
                    "proclets": {str(pid): e.state.value for pid, e in self._entries.items()}}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for client in self._peers.values():
            client.close()


def advertised(bound: str, host: str | None) -> str:
    """The address other processes reach a server bound at ``bound`` by: ``host`` (if
    given) with the bound port. A wildcard bind needs a host to advertise."""
    scheme, _, rest = bound.partition("://")
    bound_host, _, port = rest.rpartition(":")
    if host is None:
        if bound_host in ("0.0.0.0", "[::]", "::", ""):
            raise ValueError(f"{bound} is a wildcard address: give the host other "
                             f"machines reach this one by (--advertise HOST)")
        return bound
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def serve(runtime: Runtime, listen: str, workers: int = 8, advertise: str | None = None):
    """A started server for ``runtime`` (its address set from the bound one, or with the
    host ``advertise``)."""
    server = _net.serve(listen, runtime.key, workers=workers)
    server.register(P.CALL, runtime.call, context=True)
    server.register(P.SPAWN, runtime.spawn)
    server.register(P.INSTALL, runtime.install_message)
    server.register(P.MIGRATE, runtime.migrate_out, blocking=True)
    server.register(P.INFO, runtime.info)
    server.register(P.DESTROY, runtime.destroy)
    try:
        runtime.address = advertised(server.address, advertise)
    except ValueError:
        server.stop()
        raise
    server.start()
    return server


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (no orphans)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def run(controller: str, listen: str, key: bytes | None, *, workers: int = 8,
        advertise: str | None = None,
        exit_with_parent: bool = False, heartbeat: float = P.HEARTBEAT,
        orphan_timeout: float = P.ORPHAN_TIMEOUT) -> int:
    """The ``proclets runtime`` process: serve, register, print the address, beat."""
    from proclets.remote import RemoteController
    parent = os.getppid()
    if exit_with_parent:
        _die_with_parent()
    runtime = Runtime(RemoteController(controller, key), key=key, workers=workers)
    server = serve(runtime, listen, workers, advertise)
    beats = RemoteController(controller, key, timeout=max(heartbeat * 5, 0.5))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    deadline = time.monotonic() + orphan_timeout
    while True:
        try:
            runtime.register()
            break
        except (RpcError, OSError) as exc:
            if time.monotonic() > deadline or stop.is_set():
                print(f"proclets runtime: cannot register with {controller}: {exc}",
                      file=sys.stderr)
                server.stop()
                return 1
            stop.wait(heartbeat)
    print(runtime.address, flush=True)
    last_ok = time.monotonic()
    last_sweep = last_ok
    while not stop.wait(heartbeat):
        now = time.monotonic()
        try:
            if not beats.beat(runtime.rid, runtime.client_leases()):
                runtime.register()
            last_ok = now
        except (RpcError, OSError):
            if now - last_ok > orphan_timeout:
                print(f"proclets runtime: controller {controller} unreachable for "
                      f"{orphan_timeout} s; exiting", file=sys.stderr)
                break
        if exit_with_parent and os.getppid() != parent:
            break
        if now - last_sweep > 1.0:
            last_sweep = now
            runtime.sweep_leases()
    server.stop(grace=0.5)
    runtime.close()
    return 0
