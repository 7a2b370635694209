"""Services as classes (``microrpc.expose``, ``Server.register_object``), one registration
per name, the built-in statistics method, and the ``with Server(...)`` lifecycle."""
import threading

import pytest

import breakwater
import microrpc
from microrpc.server import STATS_METHOD


class Accounts:
    """A service: three served methods, a helper and a property that must stay unserved."""

    def __init__(self):
        self.balances = {"ada": 10}
        self.property_reads = 0

    @microrpc.expose
    def balance(self, who):
        return self.balances[who]

    @microrpc.expose(name="move", blocking=True)
    def transfer(self, who, amount=0):
        assert threading.current_thread().name.startswith("microrpc-worker")
        self.balances[who] += amount
        return self.balances[who]

    @microrpc.expose(context=True)
    def caller(self, ctx):
        return ctx.peer_id

    @staticmethod
    @microrpc.expose
    def version():
        return "1"

    def helper(self):
        return "not served"

    @property
    def total(self):
        self.property_reads += 1
        return sum(self.balances.values())


class SavingsAccounts(Accounts):
    @microrpc.expose
    def rate(self):
        return 0.5


@pytest.fixture
def server():
    with microrpc.Server("tcp://127.0.0.1:0") as s:
        yield s


def test_register_object_serves_exactly_the_marked_methods(server):
    accounts = Accounts()
    names = server.register_object(accounts, prefix="accounts.")
    assert names == ["accounts.balance", "accounts.caller", "accounts.move",
                     "accounts.version"]
    assert accounts.property_reads == 0           # finding the methods ran no property
    with microrpc.Client(server.address, timeout=5) as c:
        assert c.call("accounts.balance", "ada") == 10
        assert c.call("accounts.move", "ada", amount=5) == 15    # blocking, keywords
        assert accounts.balances["ada"] == 15                    # the same object's state
        assert c.call("accounts.caller") >= 1                    # context
        assert c.call("accounts.version") == "1"
        for hidden in ("accounts.helper", "accounts.transfer", "accounts.total",
                       "accounts.__init__", "balance"):
            with pytest.raises(microrpc.MethodNotFound):
                c.call(hidden)


def test_inherited_marks_are_served_too(server):
    assert "rate" in server.register_object(SavingsAccounts())
    with microrpc.Client(server.address, timeout=5) as c:
        assert c.call("rate") == 0.5 and c.call("balance", "ada") == 10


def test_a_marked_private_name_is_an_error_and_registers_nothing(server):
    class Leaky:
        @microrpc.expose
        def ok(self):
            return 1

        @microrpc.expose
        def _secret(self):
            return "key"

    with pytest.raises(ValueError, match="_secret.*never served"):
        server.register_object(Leaky())
    with microrpc.Client(server.address, timeout=5) as c, pytest.raises(
            microrpc.MethodNotFound):
        c.call("ok")
    with pytest.raises(ValueError, match="'_'"):
        microrpc.expose(name="_hidden")


def test_an_object_with_nothing_to_serve_is_an_error(server):
    with pytest.raises(ValueError, match="no method marked with @microrpc.expose"):
        server.register_object(object())
    with pytest.raises(TypeError, match=r"an instance \(Accounts\(\)\)"):
        server.register_object(Accounts)


def test_a_name_is_registered_once_unless_replace_is_said(server):
    server.register("f", lambda: 1)
    with pytest.raises(ValueError, match="'f' is already registered.*replace=True"):
        server.register("f", lambda: 2)
    with pytest.raises(ValueError, match="already registered"):
        server.method(name="f")(lambda: 3)
    with microrpc.Client(server.address, timeout=5) as c:
        assert c.call("f") == 1                   # the refused ones changed nothing
        server.register("f", lambda: 2, replace=True)
        assert c.call("f") == 2
        server.method(name="f", replace=True)(lambda: 3)
        assert c.call("f") == 3
        # An object whose names collide registers none of them, then all with replace.
        server.register("balance", lambda who: "old")
        with pytest.raises(ValueError, match="'balance' is already registered"):
            server.register_object(Accounts())
        with pytest.raises(microrpc.MethodNotFound):
            c.call("version")
        server.register_object(Accounts(), replace=True)
        assert c.call("balance", "ada") == 10 and c.call("version") == "1"


def test_microrpc_names_are_reserved(server):
    for name in (STATS_METHOD, "_microrpc.other"):
        with pytest.raises(ValueError, match="microrpc's own"):
            server.register(name, lambda: 0, replace=True)


def test_the_statistics_method_returns_the_servers_statistics():
    with microrpc.Server("tcp://127.0.0.1:0", overload=breakwater.Breakwater()) as server:
        server.register("echo", lambda x: x)
        with microrpc.Client(server.address, timeout=5) as c:
            for i in range(3):
                c.call("echo", i)
            stats = c.call(STATS_METHOD)
        assert set(stats) == set(server.statistics().as_dict())
        assert stats["calls"] == 4                # the three echoes and this call
        assert stats["overload"]["policy"] == "Breakwater"
        assert stats["decode_limits"]["max_depth"] == server.statistics().decode_limits[
            "max_depth"]


def test_the_statistics_method_can_be_turned_off():
    with microrpc.Server("tcp://127.0.0.1:0", expose_stats=False) as server:
        with microrpc.Client(server.address, timeout=5) as c:
            with pytest.raises(microrpc.MethodNotFound):
                c.call(STATS_METHOD)
        # Off means absent, not reserved for later: the name still cannot be registered.
        with pytest.raises(ValueError):
            server.register(STATS_METHOD, lambda: {})


def test_with_starts_and_stops_and_start_inside_says_why_it_fails():
    server = microrpc.Server("tcp://127.0.0.1:0")
    server.register("echo", lambda x: x)
    with server as s:
        assert s is server and "running" in repr(server)
        with pytest.raises(RuntimeError, match="already running.*`with` block started it"):
            s.start()
        with microrpc.Client(s.address, timeout=5) as c:
            assert c.call("echo", 1) == 1
    assert "stopped" in repr(server)
    with pytest.raises(RuntimeError, match="stopped; create a new one"):
        server.start()


def test_with_stops_the_server_on_an_exception_and_start_twice_says_so():
    with pytest.raises(KeyError):
        with microrpc.Server("tcp://127.0.0.1:0") as server:
            raise KeyError("boom")
    assert "stopped" in repr(server)
    server = microrpc.Server("tcp://127.0.0.1:0").start()
    try:
        with pytest.raises(RuntimeError, match="already running: start\\(\\)"):
            server.start()
    finally:
        server.stop()
