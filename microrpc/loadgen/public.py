"""Load through the public clients: the schedule of :mod:`microrpc.loadgen.engine`, sent with
``Client.call_async`` (``driver="client"``) or ``AsyncClient.call`` (``driver="asyncio"``,
``driver="uvloop"``: ``AsyncClient.call_async`` and a done-callback) instead of the
engine's own multiplexed sessions.

These drivers measure what an application built on microrpc sees: every request is one
public call, its outcome is what that call returns, and its latency runs from the
intended send time to the moment the application learns the outcome (a done-callback, or
the ``await`` returning). The ``clients`` of the spec are client objects, each with its own
connection and Breakwater session, all in this one process.

``client``: the scheduling thread issues ``call_async`` at each intended time and never
waits for replies; each client's own reader thread reads them and runs the done-callbacks,
which record the outcomes. ``asyncio``/``uvloop``: one event loop; the reader callback
completes the futures and the loop runs their done-callbacks.
Both spin (without holding the GIL for long) when the next arrival is near: like the
engine, a generator process is meant to own a core.
"""
from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
from typing import Any, Callable

from microrpc.errors import ConnectionLost, DeadlineExceeded
from microrpc.loadgen.engine import LoadSpec, PoissonSchedule, ProcessShare
from microrpc.loadgen.result import Tally
from microrpc.loadgen.synthetic import ServiceTime, encode_service

__all__ = ["PUBLIC_DRIVERS", "ClientDriver", "AsyncDriver"]

_PROGRESS_NS = 200_000_000
# Sleep (releasing the GIL, or yielding the event loop to the selector) only when the next
# arrival is further away than this; closer, yield without sleeping. A sleep overshoots by
# ~60-100 us on these machines, 1 ms under asyncio (its selector timeout is in ms).
_SLEEP_BEFORE_NS = 2_000_000
# The outcome of a call the drain's end cut off: a timeout, as the engine counts it.
_UNANSWERED = DeadlineExceeded("no reply before the drain ended")


def _argument(spec: LoadSpec, service: ServiceTime | None, rng: Any) -> Any:
    """The argument of one ``spin`` call (or the fixed payload of another method)."""
    if service is None:
        payload = b"\0" * spec.payload
        return payload
    ns = service.draw(rng)
    return encode_service(ns, "raw") if spec.codec == "raw" else ns


class _Base(ProcessShare):
    """What both public drivers share: the process's share, the tally's lock, outcomes."""

    def __init__(self, spec: LoadSpec, index: int,
                 progress: Callable[[dict], None] | None) -> None:
        super().__init__(spec, index)
        self.tally.sessions = self.tally.connections = self.n_clients
        # Callbacks run on the clients' reader threads: one lock for the tally.
        self.lock = threading.Lock()
        self.progress = progress
        self.pending = 0
        self.closing = False

    def offer(self, intended: int) -> bool:
        """Count one arrival; True if it is measured."""
        now = self.clock()
        with self.lock:
            self.pending += 1
            return self.count_offer(intended, now)

    def outcome(self, intended: int, measured: bool, error: BaseException | None) -> None:
        now = self.clock()
        if self.closing and isinstance(error, ConnectionLost):
            error = _UNANSWERED                  # still unanswered when the drain ended
        with self.lock:
            self.pending -= 1
            self.count_outcome(intended, measured, error, now)

    def send(self, clients: list, intended: int) -> None:
        """Offer one arrival through a client picked at random: ``call_async`` and a
        done-callback that records its outcome (the same for both kinds of client)."""
        measured = self.offer(intended)
        client = clients[int(self.rng.random() * len(clients))]
        fut = client.call_async(self.spec.method, _argument(self.spec, self.service, self.rng))
        outcome = self.outcome
        fut.add_done_callback(lambda f: outcome(intended, measured, f.exception()))

    def snapshot(self, now: int) -> dict:
        t = self.tally
        with self.lock:
            return {"elapsed": (now - self.start_ns) / 1e9,
                    "offered": t.offered + t.warmup_offered, "ok": t.counts["ok"],
                    "good": t.good,
                    "rejected": t.counts["rejected_server"] + t.counts["rejected_client"],
                    "timeout": t.counts["timeout"], "error": t.counts["error"],
                    "pending": self.pending}

    def finish_tally(self, statistics: list, cpu_ns: int) -> Tally:
        t = self.tally
        t.elapsed_ns = self.clock() - self.start_ns
        t.cpu_ns = cpu_ns
        t.connections_lost = sum(s.reconnects for s in statistics)
        t.late_replies = sum(s.late_replies for s in statistics)
        return t


class ClientDriver(_Base):
    """``Client.call_async`` with done-callbacks, one scheduling thread."""

    def __init__(self, spec: LoadSpec, index: int,
                 progress: Callable[[dict], None] | None = None) -> None:
        super().__init__(spec, index, progress)
        self.clients: list = []

    def connect(self) -> None:
        from microrpc.client import Client

        # Reader threads block in the kernel rather than spin: they share the generator's
        # core with the scheduling thread.
        spec = self.spec
        self.clients = [Client(spec.address, codec=spec.codec, timeout=spec.timeout,
                               poll="block", session=self.session_base + i,
                               credit_queue=spec.client_queue,
                               credit_wait=spec.client_max_wait, auth_key=spec.auth_key)
                        for i in range(self.n_clients)]

    def run(self, start_ns: int) -> Tally:
        self.start_ns = start_ns
        self.m0 = start_ns + self.warmup_ns
        schedule = PoissonSchedule(self.segments, start_ns, self.schedule_seed)
        clock, clients, send = self.clock, self.clients, self.send
        # A thread spinning between arrivals would hold the GIL for a whole switch
        # interval (5 ms) while the readers wait to run callbacks: hand it over sooner.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0001)
        gc_was_enabled = gc.isenabled()
        gc.disable()
        cpu0 = time.process_time_ns()
        last_progress = 0
        try:
            while clock() < start_ns:
                pass
            t = schedule.next()
            while t is not None:
                now = clock()
                if t > now:
                    if t - now > _SLEEP_BEFORE_NS:
                        time.sleep((t - now - _SLEEP_BEFORE_NS // 2) / 1e9)
                    else:
                        time.sleep(0)          # let the readers run; no timer overshoot
                    continue
                send(clients, t)
                t = schedule.next()
                if self.progress is not None and now - last_progress >= _PROGRESS_NS:
                    last_progress = now
                    self.progress(self.snapshot(now))
            drain_until = clock() + self.drain_ns
            while self.pending and clock() < drain_until:
                time.sleep(0.001)
            self.closing = True
        finally:
            for c in clients:
                c.close()               # what is still unanswered ends now (a timeout)
            sys.setswitchinterval(interval)
            if gc_was_enabled:
                gc.enable()
        return self.finish_tally([c.statistics() for c in clients],
                                 time.process_time_ns() - cpu0)


class AsyncDriver(_Base):
    """``AsyncClient.call_async`` and a done-callback on one event loop (asyncio's, or
    uvloop's): no task per request."""

    def connect(self) -> None:
        pass                         # the clients connect on the loop, in run()

    def run(self, start_ns: int) -> Tally:
        if self.spec.driver == "uvloop":
            import uvloop
            return uvloop.run(self._main(start_ns))
        return asyncio.run(self._main(start_ns))

    async def _main(self, start_ns: int) -> Tally:
        from microrpc.aio import AsyncClient

        spec = self.spec
        clients = [AsyncClient(spec.address, codec=spec.codec, timeout=spec.timeout,
                               session=self.session_base + i, credit_queue=spec.client_queue,
                               credit_wait=spec.client_max_wait, auth_key=spec.auth_key)
                   for i in range(self.n_clients)]
        for c in clients:
            await c.connect()
        self.start_ns = start_ns
        self.m0 = start_ns + self.warmup_ns
        schedule = PoissonSchedule(self.segments, start_ns, self.schedule_seed)
        clock, send = self.clock, self.send
        gc_was_enabled = gc.isenabled()
        gc.disable()
        cpu0 = time.process_time_ns()
        last_progress = 0
        try:
            while clock() < start_ns:
                await asyncio.sleep(0)
            t = schedule.next()
            while t is not None:
                now = clock()
                if t > now:
                    if t - now > _SLEEP_BEFORE_NS:
                        await asyncio.sleep((t - now - _SLEEP_BEFORE_NS // 2) / 1e9)
                    else:
                        await asyncio.sleep(0)     # one turn of the loop: replies, sends
                    continue
                send(clients, t)
                t = schedule.next()
                if self.progress is not None and now - last_progress >= _PROGRESS_NS:
                    last_progress = now
                    self.progress(self.snapshot(now))
            drain_until = clock() + self.drain_ns
            while self.pending and clock() < drain_until:
                await asyncio.sleep(0.001)
            self.closing = True
        finally:
            for c in clients:
                await c.close()            # what is still unanswered ends now (a timeout)
            await asyncio.sleep(0)         # the done-callbacks that close() scheduled
            if gc_was_enabled:
                gc.enable()
        return self.finish_tally([c.statistics() for c in clients],
                                 time.process_time_ns() - cpu0)


#: driver name -> generator class (the engine is the default, in engine.py)
PUBLIC_DRIVERS = {"client": ClientDriver, "asyncio": AsyncDriver, "uvloop": AsyncDriver}
