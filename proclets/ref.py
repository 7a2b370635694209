"""ProcletRef: a reference to a proclet, usable from any process, and the per-process
session behind it.

``ref.incr(5)`` calls ``incr(5)`` on the proclet and returns its result (sync);
``ref.incr.future(5)`` returns a ``concurrent.futures.Future``; ``await ref.incr.aio(5)``
is the asyncio form; each takes ``timeout=`` (seconds for the whole call, retries
included; default 30). The future and asyncio forms run the same call on the session's
thread pool.

A ref pickles as (pid, controller address): never the cluster key. A process gets the key
from :func:`connect` or from the ``PROCLETS_CLUSTER_KEY`` environment variable (hex), which
``Cluster.local`` sets for its children.

**Exactly once.** Each process holds a client lease from the controller (renewed in the
background) and numbers its calls; a call carries (lease, seq, ack) and a retry carries the
same numbers, so a proclet's completion table answers a retry with the saved outcome. A
proclet that calls another numbers its calls with ids kept in its own state
(``_proclet_client``), which migrate with it. The ref retries, with the same id and within
the call's deadline:

* after ConnectionLost (a lost reply, a dropped connection): the same runtime if it answers,
  else wherever the controller says the proclet is now, polling the controller until the
  location changes or the proclet is declared lost (``ProcletLost``);
* after WRONG_TARGET (moved: to the tombstone's forward address, else the controller's) and
  RETRY (moving, or in progress: after a short pause).

Application exceptions surface as :class:`proclets.CallError` (a microrpc.RemoteError).

**Fault injection** (tests, benchmarks): ``proclets.faults()`` returns this process's
:class:`Faults`; ``drop_replies`` / ``duplicate_requests`` (counts) or ``drop_rate`` /
``duplicate_rate`` (probabilities) make calls lose their reply after the proclet ran them
(the ref drops its connection and resends) or send each request twice.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import threading
import time
from typing import Any

from microrpc.errors import ConnectionLost, DeadlineExceeded, RpcError
from microrpc.exactly_once import CallNumbers

from proclets import _net, _protocol as P
from proclets._hotref import FastCall, MethodCall
from proclets._turn import INLINE, turn_here
from proclets._wire import decode_reply, encode_call
from proclets.errors import CallError, OutcomeUnknown, ProcletError, ProcletLost

__all__ = ["ProcletRef", "Faults", "connect", "faults", "from_wire", "to_wire"]

DEFAULT_TIMEOUT = 30.0
# A ref passed as a call's argument (or returned as its result) travels as this one-key map:
# msgpack carries data only.
_REF_TAG = "__proclet_ref__"
# Pauses after RETRY: moving proclets come back in about a migration time (sub-millisecond
# for small state), so start short and back off.
_RETRY_FIRST = 0.0002
_RETRY_MAX = 0.01
_LOST_CONNECTION = object()      # an attempt's outcome: ConnectionLost (or a lost reply)


def poll_pause(deadline: float, what: str) -> None:
    """Wait one RELOCATE_POLL before asking again, or raise DeadlineExceeded(``what``) if
    that would pass ``deadline`` (monotonic seconds)."""
    if time.monotonic() + P.RELOCATE_POLL > deadline:
        raise DeadlineExceeded(what)
    time.sleep(P.RELOCATE_POLL)


class _FreshLease(Exception):
    """The first attempt of a call was refused: the caller's lease is expired."""


def to_wire(value: Any) -> Any:
    if type(value) is ProcletRef:
        return {_REF_TAG: [value.pid, value.controller]}
    return value


def from_wire(args: list) -> list:
    """Arguments as the method sees them: wire refs back into ProcletRefs (top level)."""
    for a in args:
        if type(a) is dict and _REF_TAG in a:
            return [ProcletRef(*a[_REF_TAG]) if type(a) is dict and _REF_TAG in a else a
                    for a in args]
    return args


def _result(value: Any) -> Any:
    if type(value) is dict and _REF_TAG in value:
        return ProcletRef(*value[_REF_TAG])
    return value


class Faults:
    """Faults this process injects into its ref calls (see the module docstring)."""

    _SETTINGS = ("drop_replies", "duplicate_requests", "drop_rate", "duplicate_rate")

    def __init__(self) -> None:
        self.active = False       # any fault set: read on every call, so kept up to date
        self.drop_replies = 0
        self.duplicate_requests = 0
        self.drop_rate = 0.0
        self.duplicate_rate = 0.0
        self.dropped = 0
        self.duplicated = 0
        self._random = random.Random(os.getpid())

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in Faults._SETTINGS:
            object.__setattr__(self, "active", any(getattr(self, n, 0)
                                                   for n in Faults._SETTINGS))

    def _take(self, count: str, rate: str) -> bool:
        if getattr(self, count) > 0:
            setattr(self, count, getattr(self, count) - 1)
            return True
        r = getattr(self, rate)
        return r > 0 and self._random.random() < r


_faults = Faults()


def faults() -> Faults:
    """This process's fault injection settings."""
    return _faults


class _CallIds:
    """A caller's RIFL identity: its lease and call numbers. A process has one; a proclet
    that calls others keeps its own as ``_proclet_client`` (pickled with its state)."""

    def __init__(self) -> None:
        self.lease = 0
        self.numbers = CallNumbers()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"lease": self.lease, "numbers": self.numbers}

    def __setstate__(self, state: dict) -> None:
        self.lease = state["lease"]
        self.numbers = state["numbers"]
        self._lock = threading.Lock()

    def begin(self, session: "_Session", deadline: float) -> tuple[int, int]:
        # CallNumbers' methods are single C-level steps: threads share them without a
        # lock; the lock is only for taking a lease.
        while True:
            if not self.lease:
                with self._lock:
                    if not self.lease:
                        self.lease = session.grant_lease(self is session.ids)
            seq = self.numbers.try_next()
            if seq:
                return self.lease, seq
            # The window is full (512 calls in flight): rare, so a short poll rather than
            # a condition every call would pay for.
            if time.monotonic() > deadline:
                raise DeadlineExceeded("too many calls in flight (the RIFL window)")
            time.sleep(0.001)

    def end(self, seq: int) -> None:
        self.numbers.ended(seq)

    def ack(self) -> int:
        return self.numbers.ack

    def expired(self, lease: int) -> None:
        with self._lock:
            if self.lease == lease:
                self.lease = 0


class _Session:
    """Per process and controller: the connections to runtimes (one microrpc Client per
    address), the location cache, the process's call ids and the thread pool of the
    future/asyncio forms."""

    def __init__(self, controller: str, key: bytes | None) -> None:
        from proclets.remote import RemoteController
        self.controller_address = controller
        self.key = key
        self.controller = RemoteController(controller, key)
        self.locations: dict[int, str] = {}
        self.ids = _CallIds()
        self._clients: dict[str, Any] = {}      # address -> client for calls
        self._admin: dict[str, Any] = {}        # address -> client for the rest
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._renewer: threading.Thread | None = None
        self._closed = threading.Event()
        self.retries = 0           # statistics: resends of a call, for any reason
        self.redirects = 0         # WRONG_TARGET answers followed
        # A call's usual case in C-level code; the rest comes back to invoke/numbered.
        self.fast = FastCall(self, self.ids, self.locations, self._clients, _faults,
                             ProcletRef, _LOST_CONNECTION, _result, P.CALL, DEFAULT_TIMEOUT,
                             time.monotonic)

    # -- leases -------------------------------------------------------------------------

    def grant_lease(self, renew_here: bool) -> int:
        lease, ttl = self.controller.grant_lease()
        if renew_here and self._renewer is None:
            self._renewer = threading.Thread(target=self._renew, args=(ttl,), daemon=True,
                                             name="proclets-lease")
            self._renewer.start()
        return lease

    def _renew(self, ttl: float) -> None:
        while not self._closed.wait(ttl / 3):
            lease = self.ids.lease
            if not lease:
                continue
            try:
                if not self.controller.renew(lease):
                    self.ids.expired(lease)     # the next call takes a new one
            except (RpcError, OSError):
                pass                            # the controller restarts: try again later

    # -- connections --------------------------------------------------------------------

    def client(self, address: str):
        """The connection for calls to the runtime at ``address`` (raw codec: a call's bytes
        are proclets._wire's; a call without a timeout gets DEFAULT_TIMEOUT)."""
        return self._client(self._clients, address, codec="raw", timeout=DEFAULT_TIMEOUT)

    def admin(self, address: str):
        """The connection for the runtime's other methods (spawn, migrate, info)."""
        return self._client(self._admin, address, timeout=None)

    def _client(self, clients: dict, address: str, **options):
        client = clients.get(address)
        if client is None:
            with self._lock:
                client = clients.get(address)
                if client is None:
                    try:
                        client = _net.connect(address, self.key, connect_timeout=1.0,
                                              **options)
                    except OSError as exc:
                        raise ConnectionLost(f"cannot connect to {address}: {exc}") from None
                    clients[address] = client
        return client

    def close(self) -> None:
        """Close the connections and stop renewing (refs bound to it stop working)."""
        self._closed.set()
        with self._lock:
            clients = list(self._clients.values()) + list(self._admin.values())
            self._clients.clear()          # (the same dict: self.fast holds it)
            self._admin.clear()
        for client in clients:
            client.close()
        self.controller.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def drop_client(self, address: str, client) -> None:
        if client is None:
            return
        with self._lock:
            if self._clients.get(address) is client:
                del self._clients[address]
        client.close()

    @property
    def pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = concurrent.futures.ThreadPoolExecutor(
                        32, thread_name_prefix="proclets-ref")
        return self._pool

    # -- locations ----------------------------------------------------------------------

    def locate(self, pid: int, deadline: float, avoid: str | None = None) -> str:
        """Where the controller says ``pid`` is. With ``avoid`` (an address that failed),
        poll until the answer differs from it or the proclet is lost, bounded by the
        deadline; between polls, try ``avoid`` again (a dropped connection to a live
        runtime)."""
        while True:
            try:
                status, _, address, _ = self.controller.locate(pid)
            except (RpcError, OSError):
                status, address = P.UNKNOWN, None     # controller restarting
            if status == P.GONE:
                self.locations.pop(pid, None)
                raise ProcletLost(f"proclet {pid} is gone: lost with its runtime, destroyed, "
                                  f"or never made")
            if status == P.HERE and address != avoid:
                self.locations[pid] = address
                return address
            if status == P.HERE and avoid is not None:
                try:
                    self.client(avoid)            # alive after all (the connection broke)
                    return avoid
                except ConnectionLost:
                    pass
            poll_pause(deadline, f"proclet {pid}: no location within the deadline")

    # -- the call -----------------------------------------------------------------------

    def invoke(self, pid: int, method: str, args: tuple, kwargs: dict,
               timeout: float | None) -> Any:
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        deadline = time.monotonic() + timeout
        entry = turn_here()
        if entry is INLINE:
            raise ProcletError(
                "a proclet method that calls another proclet must be marked "
                "@proclets.blocking: this one runs on its runtime's I/O thread, which would "
                "stop serving while it waits")
        if entry is None:
            ids = self.ids
        else:
            ids = entry.obj.__dict__.get("_proclet_client")
            if ids is None:
                ids = entry.obj.__dict__["_proclet_client"] = _CallIds()
        if ProcletRef in map(type, args):
            args = [to_wire(a) for a in args]
        lease, seq = ids.begin(self, deadline)
        return self.numbered(pid, method, args, kwargs, ids, lease, seq, deadline, None)

    def numbered(self, pid, method, args, kwargs, ids, lease, seq, deadline, first):
        """The call numbered ``seq`` under ``lease`` until its outcome, its number ended
        whatever happens. ``first``: an attempt already made (its reply, or
        _LOST_CONNECTION: proclets._hotref makes it), or None."""
        try:
            return self._attempts(pid, method, args, kwargs or None, ids, lease, seq,
                                  deadline, first)
        except _FreshLease:
            pass
        finally:
            ids.end(seq)
        # The caller's lease had expired and the first attempt was refused unrun: no copy
        # of the call can have run anywhere, so it is re-numbered under a new lease.
        ids.expired(lease)
        lease, seq = ids.begin(self, deadline)
        try:
            return self._attempts(pid, method, args, kwargs or None, ids, lease, seq,
                                  deadline, None)
        except _FreshLease:
            raise OutcomeUnknown(f"proclet {pid}.{method}: a new lease was refused as "
                                 f"expired") from None
        finally:
            ids.end(seq)

    @staticmethod
    def _send(client, pid, method, args, kwargs, lease, seq, ids, left):
        """One attempt: the reply, or _LOST_CONNECTION (also for an injected lost reply:
        the proclet ran the call, the reply never arrives)."""
        body = encode_call(pid, method, args, kwargs, lease, seq, ids.numbers.ack)
        try:
            if _faults.active and _faults._take("duplicate_requests", "duplicate_rate"):
                _faults.duplicated += 1
                client.call_async(P.CALL, body, timeout=left)
            reply = client.call(P.CALL, body, timeout=left)
        except ConnectionLost:
            return _LOST_CONNECTION
        if _faults.active and _faults._take("drop_replies", "drop_rate"):
            _faults.dropped += 1
            return _LOST_CONNECTION
        return reply

    def _attempts(self, pid, method, args, kwargs, ids, lease, seq, deadline, first):
        """The call's attempts until an outcome. ``first``: the fast path's attempt (its
        reply, or _LOST_CONNECTION), or None if it made none."""
        address = self.locations.get(pid) or self.locate(pid, deadline)
        pause = _RETRY_FIRST
        sends = 1 if first is not None else 0
        while True:
            if first is not None:
                outcome, first = first, None
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeadlineExceeded(f"proclet {pid}.{method}: deadline exceeded")
                try:
                    client = self.client(address)
                except ConnectionLost:
                    address = self.locate(pid, deadline, avoid=address)
                    continue
                outcome = self._send(client, pid, method, args, kwargs, lease, seq, ids,
                                     left)
                sends += 1
            if outcome is _LOST_CONNECTION:
                self.retries += 1
                self.drop_client(address, self._clients.get(address))
                address = self.locate(pid, deadline, avoid=address)
                continue
            code, value = decode_reply(outcome)
            if code == P.OK:
                return _result(value) if type(value) is dict else value
            if code == P.ERROR:
                raise CallError(value[0], value[1])
            self.retries += 1
            if code == P.WRONG_TARGET:
                self.redirects += 1
                self.locations.pop(pid, None)
                if value and value != address:
                    address = self.locations[pid] = value     # the tombstone's forward
                else:
                    address = self.locate(pid, deadline)
                    if address == value or value is None:
                        time.sleep(pause)
                        pause = min(pause * 2, _RETRY_MAX)
            elif code == P.RETRY:
                time.sleep(pause)
                pause = min(pause * 2, _RETRY_MAX)
                if pause >= _RETRY_MAX / 2:
                    address = self.locate(pid, deadline)
            elif code == P.LOST:
                self.locations.pop(pid, None)
                raise ProcletLost(f"proclet {pid} is lost (its runtime died)")
            elif code == P.EXPIRED:
                if sends == 1:
                    raise _FreshLease()
                ids.expired(lease)
                raise OutcomeUnknown(f"proclet {pid}.{method}: the caller's lease {lease} "
                                     f"expired; the call may or may not have run")
            else:
                raise ProcletError(f"proclet {pid}.{method}: call id {seq} was already "
                                   f"acknowledged (a stale duplicate)")


_sessions: dict[str, _Session] = {}
_sessions_lock = threading.Lock()


def connect(controller: str | None = None, key: bytes | None = None) -> _Session:
    """Use the cluster whose controller is at ``controller`` (default: the
    PROCLETS_CONTROLLER environment variable, which Cluster.local sets) from this process,
    with the cluster key ``key`` (default: the PROCLETS_CLUSTER_KEY environment variable,
    hex). Refs to that controller's proclets, made or unpickled here, use this session."""
    if controller is None:
        controller = os.environ.get(P.CONTROLLER_ENV)
        if not controller:
            raise ProcletError(f"no controller address given and {P.CONTROLLER_ENV} is "
                               f"not set")
    with _sessions_lock:
        session = _sessions.get(controller)
        if session is None:
            if key is None:
                env = os.environ.get(P.KEY_ENV)
                key = bytes.fromhex(env) if env else None
            session = _sessions[controller] = _Session(controller, key)
        elif key is not None and session.key is None:
            session.key = key
        return session


def disconnect(controller: str) -> None:
    """Forget this process's session with ``controller`` (Cluster.local does on exit)."""
    with _sessions_lock:
        session = _sessions.pop(controller, None)
    if session is not None:
        session.close()


class ProcletRef:
    """A reference to a proclet (see the module docstring). ``ref.pid`` and
    ``ref.controller`` are its own attributes: a proclet method of either name is called
    with ``ref.method("pid")(...)``."""

    def __init__(self, pid: int, controller: str) -> None:
        self.pid = pid
        self.controller = controller
        self._session: _Session | None = None

    def __reduce__(self):
        return ProcletRef, (self.pid, self.controller)

    def __getattr__(self, name: str) -> "_Method":
        if name.startswith("_"):
            raise AttributeError(name)
        # Kept in the instance: the next ``ref.name`` is a plain attribute read.
        method = self.__dict__[name] = _Method(self, name)
        return method

    def method(self, name: str) -> "_Method":
        """The remote method ``name`` (for names a ref's own attributes take)."""
        return _Method(self, name)

    def _bind(self) -> _Session:
        session = self._session = connect(self.controller)
        return session

    def _call(self, method: str, args: tuple, kwargs: dict, timeout: float | None):
        return (self._session or self._bind()).invoke(self.pid, method, args, kwargs,
                                                      timeout)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ProcletRef) and other.pid == self.pid
                and other.controller == self.controller)

    def __hash__(self) -> int:
        return hash((self.pid, self.controller))

    def __repr__(self) -> str:
        return f"<ProcletRef {self.pid} @ {self.controller}>"


class _Method(MethodCall):
    """``ref.name``: calling it is the sync form (MethodCall, in C-level code)."""

    __slots__ = ()

    def future(self, *args: Any, timeout: float | None = None,
               **kwargs: Any) -> concurrent.futures.Future:
        """The call on the session's thread pool: a concurrent.futures.Future."""
        if turn_here() is not None:
            # On the pool it would number its call with the process's ids, not the
            # proclet's, and could outlive the turn (and a migration) of its caller.
            raise ProcletError("inside a proclet method, call other proclets with the "
                               "plain form (ref.method(...)) from a @proclets.blocking "
                               "method, not .future() or .aio()")
        ref = self._ref
        session = ref._session or connect(ref.controller)
        return session.pool.submit(ref._call, self._name, args, kwargs, timeout)

    async def aio(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """The call for asyncio: ``await ref.method.aio(...)``."""
        return await asyncio.wrap_future(self.future(*args, timeout=timeout, **kwargs))
