"""``microrpc stats ADDRESS``: a live server's statistics as a table, JSON, or refreshed;
every failure one line and a non-zero exit, never a traceback."""
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

import breakwater
import microrpc
from microrpc.cli import main


@pytest.fixture
def server():
    with microrpc.Server("tcp://127.0.0.1:0", overload=breakwater.Breakwater()) as s:
        s.register("echo", lambda x: x)
        with microrpc.Client(s.address, timeout=5) as c:
            for i in range(3):
                c.call("echo", i)
        yield s


def invoke(*args):
    return CliRunner().invoke(main, ["stats", *args])


def test_the_table_shows_every_statistic(server):
    out = invoke(server.address)
    assert out.exit_code == 0, out.output
    assert f"microrpc server {server.address}" in out.output
    for name in server.statistics().as_dict():
        assert name in out.output, name
    assert "overload.policy" in out.output and "Breakwater" in out.output
    assert "decode_limits.max_items" in out.output and "262,144" in out.output


def test_json_is_the_servers_statistics(server):
    out = invoke(server.address, "--json")
    assert out.exit_code == 0, out.output
    stats = json.loads(out.output)
    assert stats.keys() == server.statistics().as_dict().keys()
    assert stats["calls"] == 4                    # three echoes and this read
    assert stats["overload"]["policy"] == "Breakwater"


def test_watch_prints_a_snapshot_per_interval_until_its_count(server):
    out = invoke(server.address, "--json", "--watch", "0.01", "--count", "3")
    assert out.exit_code == 0, out.output
    snapshots = [json.loads(line) for line in out.output.splitlines()]
    # One connection, one call per snapshot: each sees the calls before it.
    assert [s["calls"] for s in snapshots] == [4, 5, 6]
    assert [s["connections_accepted"] for s in snapshots] == [2, 2, 2]
    out = invoke(server.address, "--watch", "0.01", "--count", "2")
    assert out.exit_code == 0 and out.output.count("microrpc server") == 2


def test_stats_turned_off_is_one_clear_line():
    with microrpc.Server("tcp://127.0.0.1:0", expose_stats=False) as s:
        out = invoke(s.address)
    assert out.exit_code == 1
    assert out.output.strip().splitlines() == [
        f"Error: the server at {s.address} does not expose its statistics (it was "
        f"started with expose_stats=False)"]


@pytest.mark.parametrize("address, code, text", [
    ("tcp://127.0.0.1:1", 1, "cannot connect to tcp://127.0.0.1:1"),
    ("unix:///nonexistent/microrpc.sock", 1, "cannot connect to unix://"),
    ("http://127.0.0.1:1", 2, "unknown scheme 'http'"),
    ("127.0.0.1:1", 2, "has no scheme"),
])
def test_a_bad_or_unreachable_address_is_one_clear_line(address, code, text):
    # A subprocess, as a user runs it: what reaches the terminal is all there is.
    proc = subprocess.run([sys.executable, "-m", "microrpc.cli", "stats", address,
                           "--timeout", "2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == code
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_count_needs_watch(server):
    out = invoke(server.address, "--count", "2")
    assert out.exit_code == 2 and "--count needs --watch" in out.output


def test_help_lists_the_options():
    out = CliRunner().invoke(main, ["stats", "--help"])
    assert out.exit_code == 0
    for option in ("--json", "--watch", "--count", "--timeout"):
        assert option in out.output
    assert "stats" in CliRunner().invoke(main, ["--help"]).output


def test_watch_ends_quietly_on_ctrl_c(server):
    import selectors
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "microrpc.cli", "stats", server.address,
                             "--json", "--watch", "0.05"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        with selectors.DefaultSelector() as sel:   # the first snapshot, within a bound
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=30), "no snapshot within 30 s"
        assert json.loads(proc.stdout.readline())["calls"] >= 4
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
