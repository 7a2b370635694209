"""Start, stop, restart, context managers, serve_forever."""
import threading

import pytest

import microrpc


def test_restart_gives_connection_lost_then_the_next_call_works(make_server):
    first = make_server()
    address = first.address
    c = microrpc.Client(address, timeout=5)
    assert c.call("add", 1, 1) == 2
    first.stop(grace=0.1)
    with pytest.raises(microrpc.ConnectionLost):
        c.call("add", 1, 1)
    second = make_server(address=address)            # same port / path
    assert c.call("add", 2, 2) == 4                   # reconnected on this call
    assert c.statistics().reconnects == 1
    c.close()
    with pytest.raises(microrpc.ConnectionLost, match="closed"):
        c.call("add", 1, 1)
    second.stop()


def test_with_blocks(make_server):
    server = make_server(start=False)
    with server:
        with microrpc.Client(server.address, timeout=5) as c:
            assert c.call("echo", "x") == "x"
    assert "stopped" in repr(server)
    server.stop()                                     # a second stop is harmless
    with pytest.raises(RuntimeError, match="stopped"):
        server.start()


def test_serve_forever_until_stop_from_another_thread(make_server, until):
    server = make_server(start=False)
    t = threading.Thread(target=server.serve_forever)
    t.start()
    with microrpc.Client(server.address, timeout=5) as c:
        assert c.call("add", 3, 4) == 7
    server.stop(grace=0.5)
    t.join(5)
    assert not t.is_alive()


def test_start_twice_is_an_error(server):
    with pytest.raises(RuntimeError, match="already running"):
        server.start()


def test_unix_socket_file_is_removed_on_stop(tmp_path):
    path = tmp_path / "x.sock"
    server = microrpc.Server(f"unix://{path}").start()
    assert path.exists()
    server.stop()
    assert not path.exists()


def test_port_zero_reports_the_bound_port():
    server = microrpc.Server("tcp://127.0.0.1:0")
    port = int(server.address.rsplit(":", 1)[1])
    assert port > 0
    server.stop()
