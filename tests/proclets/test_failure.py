"""A runtime SIGKILLed, a controller restarted: each test starts its own cluster."""
import time

import pytest

import proclets

from proclet_samples import Counter, Gatekeeper


def test_a_killed_runtime_ends_its_calls_with_proclet_lost_quickly(no_leaked_processes):
    with proclets.Cluster.local(runtimes=3) as cluster:
        doomed = cluster.spawn(Counter, 0, on=1)
        idle = cluster.spawn(Counter, 0, on=1)
        survivor = cluster.spawn(Counter, 0, on=2)
        assert doomed.incr(1) == 1 and idle.incr(1) == 1 and survivor.incr(1) == 1
        gate = cluster.spawn(Gatekeeper, on=1)
        in_flight = doomed.held_incr.future()           # running when the runtime dies
        deadline = time.monotonic() + 10
        while not gate.started():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        killed_at = time.monotonic()
        cluster.kill_runtime(1)
        with pytest.raises(proclets.ProcletLost):
            in_flight.result(5)
        assert time.monotonic() - killed_at < 1.5
        with pytest.raises(proclets.ProcletLost):
            idle.get()
        assert time.monotonic() - killed_at < 1.5
        # the other runtimes serve on, without errors
        assert [survivor.incr(1) for _ in range(20)][-1] == 21
        with pytest.raises(proclets.MigrationError):
            cluster.migrate(survivor, to=1)
        assert survivor.get() == 21


def test_a_restarted_controller_relearns_the_directory(no_leaked_processes):
    with proclets.Cluster.local(runtimes=2) as cluster:
        a = cluster.spawn(Counter, 0, on=0)
        b = cluster.spawn(Counter, 0, on=1)
        cluster.migrate(a, to=1)
        address = cluster.controller
        cluster.restart_controller()
        assert cluster.controller == address
        assert cluster.where(a) == cluster.addresses[1]
        assert cluster.where(b) == cluster.addresses[1]
        # calls go on (new lease ids from the new controller), and so do migrations
        assert a.incr(1) == 1
        cluster.migrate(a, to=0)
        assert a.incr(1) == 2 and b.incr(1) == 1


def test_a_runtime_exits_when_its_parent_dies(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    script = tmp_path / "parent.py"
    script.write_text(
        "import proclets, sys\n"
        "c = proclets.Cluster.local(runtimes=1)\n"
        "print(c.controller_process.pid, c.runtime_processes[0].pid, flush=True)\n"
        "sys.stdin.read()\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if os.path.exists(f"/proc/{p}") and
                 open(f"/proc/{p}/stat").read().split()[2] != "Z"]
        time.sleep(0.05)
    assert not alive, f"orphans left: {alive}"


def test_an_expired_lease_is_refused_and_a_new_call_takes_a_new_lease(no_leaked_processes):
    from proclets import _protocol as P
    from proclets._wire import decode_reply, encode_call
    with proclets.Cluster.local(runtimes=1, lease_ttl=0.5) as cluster:
        ref = cluster.spawn(Counter, 0, on=0)
        session = cluster.session
        old = session.controller.grant_lease()[0]
        session.ids.lease = old                 # held by a process that stops renewing
        assert ref.incr(1) == 1
        deadline = time.monotonic() + 5
        while session.controller.lease_left(old) > 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # a new call id under the expired lease: refused, not run (the runtime's cached
        # expiry is never later than the controller's)
        client = session.client(cluster.addresses[0])
        seq = session.ids.numbers.next()
        reply = client.call(P.CALL, encode_call(ref.pid, "incr", [100], None, old, seq, 0))
        assert decode_reply(reply) == (P.EXPIRED, None)
        session.ids.numbers.ended(seq)
        # the ref's next call is refused on its first attempt, re-numbered under a new lease
        assert ref.incr(1) == 2
        assert session.ids.lease not in (0, old)
        assert ref.get() == 2
