"""Overload control through microrpc: credits, server rejects, client-side rejects."""
import concurrent.futures

import pytest

import breakwater
import microrpc


def test_credits_flow_and_calls_succeed(make_server):
    server = make_server(overload=breakwater.Breakwater())
    with microrpc.Client(server.address, timeout=10) as c:
        assert c.statistics().credits is not None           # the pong carried a window
        for i in range(200):
            assert c.call("add", i, 1) == i + 1
        futures = [c.call_async("add", i, 2) for i in range(10)]
        assert [f.result(timeout=10) for f in futures] == [i + 2 for i in range(10)]
        credits = c.statistics().credits
        assert credits.responses >= 210 and credits.in_flight == 0
    stats = server.statistics()
    assert stats.rejects == 0
    assert stats.overload.admitted >= 210


def test_a_server_without_credits_costs_the_client_nothing(server):
    with microrpc.Client(server.address, timeout=10) as c:
        futures = [c.call_async("add", i, 1) for i in range(300)]   # no credit queue limit
        assert sum(f.result(timeout=10) for f in futures) == sum(range(1, 301))
        assert c.statistics().credits is None


def test_server_side_reject_from_a_concurrency_limit(make_server, until):
    server = make_server(overload=breakwater.ConcurrencyLimit(1))
    with microrpc.Client(server.address, timeout=10) as c:
        first = c.call_async("wait", 5.0)
        until(lambda: server.statistics().queue_depth == 1, what="first call running")
        with pytest.raises(microrpc.Overloaded) as info:
            c.call("add", 1, 1)
        assert info.value.side == "server"
        server.release.set()
        assert first.result(timeout=10) is True
        assert c.call("add", 1, 1) == 2
    assert server.statistics().rejects == 1


def test_client_side_reject_when_no_credit_comes(make_server):
    server = make_server(overload=breakwater.Breakwater())
    with microrpc.Client(server.address, timeout=10) as c:
        # The first window is 1: one call goes out, the next ones wait for credit in a
        # bounded queue; past its size they are refused at once, and queued ones expire
        # while the first call blocks the server's only credit.
        futures = [c.call_async("wait", 5.0) for _ in range(40)]
        outcomes = []
        for f in futures[1:]:
            with pytest.raises(microrpc.Overloaded) as info:
                f.result(timeout=10)
            outcomes.append(info.value.side)
        assert set(outcomes) == {"client"}
        server.release.set()
        assert futures[0].result(timeout=10) is True
        assert c.call("add", 2, 3) == 5        # credit came back with the response
        credits = c.statistics().credits
        assert credits.rejected >= 40 - 1 - breakwater.DEFAULT_MAX_QUEUE
        assert credits.rejected + credits.expired == 39


def test_many_threads_with_credits(make_server):
    server = make_server(overload=breakwater.Breakwater())
    with microrpc.Client(server.address, timeout=10) as c:
        def worker(k):
            ok = rejected = 0
            for i in range(100):
                try:
                    assert c.call("add", k, i) == k + i
                    ok += 1
                except microrpc.Overloaded:
                    rejected += 1
            return ok, rejected

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(worker, range(4)))
    # Every call ended in exactly one outcome; an idle server admits nearly all.
    assert sum(ok + rej for ok, rej in results) == 400
    assert sum(ok for ok, _ in results) >= 300
