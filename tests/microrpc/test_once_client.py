"""Exactly-once calls end to end: ``Client(exactly_once=True)`` against a live server, with
a proxy between them that cuts the connection where a test says (the client core's rules
alone: tests/microrpc/test_client_core.py)."""
import socket
import threading
import time

import pytest

import microrpc

BOUND = 10.0          # seconds any wait in these tests may take before it is a failure


class CuttingProxy:
    """Forwards each client connection to ``target`` (one thread per direction). A test
    arms a cut: the connection is closed instead of forwarding the server's next bytes (a
    lost reply), or right after forwarding the client's next bytes once ``before_cut``
    returns (a request that arrived, then the connection died)."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.cut_reply = threading.Event()
        self.cut_request = threading.Event()
        self.before_cut = lambda: None
        self.cuts = 0
        self.accepted = 0
        self._socks: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.accepted += 1
            self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src, dst, from_server):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_server and self.cut_reply.is_set():
                    self.cut_reply.clear()
                    break                             # the reply is lost with the connection
                dst.sendall(data)
                if not from_server and self.cut_request.is_set():
                    self.cut_request.clear()
                    self.before_cut()
                    break
        except OSError:
            pass
        self.cuts += 1
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self._closed = True
        self.listener.close()
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass


@pytest.fixture
def served():
    """A server whose ``bump`` is not idempotent (it counts its runs), and a proxy to it."""
    server = microrpc.Server("tcp://127.0.0.1:0")
    runs = []
    started = threading.Event()
    release = threading.Event()

    @server.method(idempotent=False)
    def bump(k):
        runs.append(k)
        return len(runs)

    @server.method(idempotent=False, blocking=True)
    def slow(k):
        runs.append(k)
        started.set()
        assert release.wait(BOUND)
        return len(runs)

    server.start()
    proxy = CuttingProxy(int(server.address.rsplit(":", 1)[1]))
    yield server, proxy, runs, started, release
    release.set()
    proxy.close()
    server.stop()


def wait_for(predicate, what):
    end = time.monotonic() + BOUND
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.001)


def test_each_call_runs_once_and_acks_free_the_servers_records(served):
    server, proxy, runs, _, _ = served
    with microrpc.Client(server.address, exactly_once=True) as c:
        assert [c.call("bump", 1) for _ in range(5)] == [1, 2, 3, 4, 5]
        futures = [c.call_async("bump", 2) for _ in range(2000)]      # past the window
        assert sorted(f.result(BOUND) for f in futures) == list(range(6, 2006))
        c.call("bump", 0)
        assert len(runs) == 2006 and c.statistics().resends == 0
    # Every call but the last few was acknowledged by a later request, which freed it.
    assert server._once.records() <= 512


def test_a_reply_lost_with_its_connection_is_sent_again_and_not_run_again(served):
    server, proxy, runs, _, _ = served
    with microrpc.Client(proxy.address, exactly_once=True, timeout=BOUND) as c:
        assert c.call("bump", 1) == 1
        proxy.cut_reply.set()
        assert c.call("bump", 1) == 2              # the first run's result, from its record
        assert c.call("bump", 1) == 3
        stats = c.statistics()
    assert len(runs) == 3 and stats.resends == 1 and stats.reconnects == 1
    assert server.statistics().connections_accepted >= 2


def test_without_exactly_once_the_same_loss_is_an_error(served):
    server, proxy, runs, _, _ = served
    with microrpc.Client(proxy.address, timeout=BOUND) as c:
        c.call("bump", 1)
        proxy.cut_reply.set()
        with pytest.raises(microrpc.ConnectionLost):
            c.call("bump", 1)                       # it ran, and the caller cannot know
    assert len(runs) == 2


def test_a_retry_while_the_first_copy_runs_waits_for_its_outcome(served):
    server, proxy, runs, started, release = served
    proxy.before_cut = lambda: started.wait(BOUND)     # cut once the handler is running
    with microrpc.Client(proxy.address, exactly_once=True, timeout=BOUND) as c:
        c.call("bump", 0)                  # the lease is in hand: the next bytes are "slow"
        proxy.cut_request.set()
        fut = c.call_async("slow", 7)
        ended = threading.Event()
        fut.add_done_callback(lambda f: ended.set())    # the client's reader drives it
        # The copy sent on the new connection is answered "in progress" until it ends.
        wait_for(lambda: c.statistics().resends >= 2, "a retry answered in progress")
        assert not ended.is_set()
        release.set()
        assert ended.wait(BOUND) and fut.result() == 2
    assert runs == [0, 7]


def test_a_dead_server_ends_calls_at_their_deadline_or_after_one_reconnect(served):
    server, proxy, runs, _, _ = served
    c = microrpc.Client(proxy.address, exactly_once=True, connect_timeout=1.0)
    c.call("bump", 1)
    proxy.close()
    proxy.cut_reply.set()
    t0 = time.monotonic()
    with pytest.raises(microrpc.DeadlineExceeded):
        c.call("bump", 1, timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < BOUND
    with pytest.raises(microrpc.ConnectionLost):
        c.call("bump", 1, timeout=None)
    c.close()


def test_a_server_restart_forgets_the_lease_and_a_new_call_gets_a_new_one():
    def serve(address):
        s = microrpc.Server(address)
        s.register("one", lambda: 1, idempotent=False)
        return s.start() or s

    first = serve("tcp://127.0.0.1:0")
    address = first.address
    c = microrpc.Client(address, exactly_once=True, timeout=BOUND)
    assert c.call("one") == 1
    lease = c._core.once_lease
    first.stop()
    second = serve(address)
    try:
        # The first call after the restart finds the connection gone; the next, sent on a
        # new connection under the old lease, is refused unrun and goes again under a new
        # lease (the new server never granted the old one).
        end = time.monotonic() + BOUND
        while True:
            try:
                assert c.call("one") == 1
                break
            except microrpc.ConnectionLost:
                assert time.monotonic() < end
        assert c._core.once_lease not in (0, lease)
    finally:
        c.close()
        second.stop()


def test_asyncio_client_sends_a_lost_call_again_and_it_runs_once(served):
    import asyncio
    server, proxy, runs, started, release = served

    async def main():
        async with microrpc.AsyncClient(proxy.address, exactly_once=True,
                                        timeout=BOUND) as c:
            assert await c.call("bump", 1) == 1
            proxy.cut_reply.set()
            assert await c.call("bump", 1) == 2          # lost reply: sent again, not rerun
            # A copy sent while the first still runs is told "in progress" until it ends.
            proxy.before_cut = lambda: started.wait(BOUND)
            proxy.cut_request.set()
            fut = c.call_async("slow", 7)
            end = time.monotonic() + BOUND
            while c.statistics().resends < 3:
                assert not fut.done() and time.monotonic() < end
                await asyncio.sleep(0.001)
            release.set()
            assert await asyncio.wait_for(fut, BOUND) == 3
            return c.statistics()

    stats = asyncio.run(main())
    assert runs == [1, 1, 7] and stats.reconnects == 2
