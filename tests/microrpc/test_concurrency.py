"""Many threads, many futures and asyncio tasks on one connection."""
import asyncio
import concurrent.futures
import threading

import pytest

import microrpc


def test_many_threads_share_one_client(server):
    with microrpc.Client(server.address, timeout=10) as c:
        errors = []

        def worker(k):
            try:
                for i in range(200):
                    assert c.call("add", k, i) == k + i
            except BaseException as exc:      # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        assert not any(t.is_alive() for t in threads)
        stats = c.statistics()
        assert stats.ok == 1600 and stats.in_flight == 0 and stats.reconnects == 0


def test_many_futures_in_flight(server):
    with microrpc.Client(server.address, timeout=10) as c:
        futures = [c.call_async("add", i, 1) for i in range(2000)]
        assert [f.result(timeout=10) for f in futures] == [i + 1 for i in range(2000)]


def test_threads_mixing_sync_calls_and_futures(server):
    with microrpc.Client(server.address, timeout=10) as c:
        def worker(k):
            futs = [c.call_async("add", k, i) for i in range(50)]
            sync = [c.call("add", k, -i) for i in range(50)]
            return [f.result(timeout=10) for f in futs], sync

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            for k, (a, b) in enumerate(pool.map(worker, range(6))):
                assert a == [k + i for i in range(50)]
                assert b == [k - i for i in range(50)]


def test_futures_timeout_and_cancel(server, until):
    with microrpc.Client(server.address, timeout=10) as c:
        slow = c.call_async("wait", 5.0, timeout=0.05)
        with pytest.raises(microrpc.DeadlineExceeded):
            slow.result(timeout=5)
        doomed = c.call_async("wait", 5.0)
        assert doomed.cancel()
        until(lambda: server.statistics().cancelled >= 1, what="server saw the cancel")
        server.release.set()
        assert c.call("add", 2, 2) == 4
        assert c.statistics().in_flight == 0


def test_asyncio_client_under_concurrency(server):
    async def main():
        async with microrpc.AsyncClient(server.address, timeout=10) as ac:
            results = await asyncio.gather(*(ac.call("add", i, i) for i in range(3000)))
            assert results == [2 * i for i in range(3000)]
            with pytest.raises(microrpc.RemoteError):
                await ac.call("fail", "x")
            with pytest.raises(microrpc.DeadlineExceeded):
                await ac.call("wait", 5.0, timeout=0.05)
            task = asyncio.ensure_future(ac.call("wait", 5.0))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            server.release.set()
            assert await ac.call("echo", "still fine") == "still fine"
            return ac.statistics()

    stats = asyncio.run(main())
    assert stats.ok == 3001 and stats.in_flight == 0


def test_asyncio_client_reconnects_after_restart(make_server, transport):
    first = make_server()
    address = first.address

    async def main():
        ac = microrpc.AsyncClient(address, timeout=5)
        assert await ac.call("add", 1, 1) == 2
        first.stop(grace=0.1)
        with pytest.raises(microrpc.ConnectionLost):
            await ac.call("add", 1, 1)
        second = make_server(address=address)
        assert second.address == address
        assert await ac.call("add", 2, 2) == 4
        await ac.close()

    asyncio.run(main())
