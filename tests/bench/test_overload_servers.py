"""bench/overload/servers.py: the server CPU share the overload bench reports per point (how
long each policy left the server idle), read from /proc without calling the server."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from microrpc import loadgen                      # noqa: E402
from overload import servers                      # noqa: E402


def test_cpu_share_is_cpu_time_over_wall_time():
    assert servers.cpu_share((1_000, 10_000), (4_000, 16_000)) == pytest.approx(0.5)
    assert servers.cpu_share(None, (4_000, 16_000)) is None
    assert servers.cpu_share((1_000, 10_000), (1_000, 10_000)) is None   # no time passed


def test_cpu_clock_knows_only_running_servers():
    assert servers.cpu_clock("tcp://127.0.0.1:1") is None
    with servers.synthetic_server("none", None, max_seconds=60) as address:
        assert servers.cpu_clock(address) is not None
    assert servers.cpu_clock(address) is None


def test_a_busy_server_shows_a_high_share_and_reads_cost_it_no_call():
    with servers.synthetic_server("breakwater", None, max_seconds=60) as address:
        before = servers.cpu_clock(address)
        # Closed loop, 4 requests of 2 ms outstanding: the server spins nearly all the time.
        spec = loadgen.LoadSpec(address=address, clients=4, connections=1, closed=4,
                                service="const:2ms", duration=0.4, warmup=0.0, slo=1.0,
                                timeout=5.0, drain=1.0, seed=1)
        result = loadgen.run(spec)
        share = servers.cpu_share(before, servers.cpu_clock(address))
        stats = servers.stats(address)
    assert share is not None and 0.3 < share <= 1.1
    # Reading the clock is not a call: the server saw the requests the generator sent and
    # this stats call, nothing else (sessions register with a PING, which is not a call).
    sent = result.offered - result.counts["rejected_client"]
    assert stats["calls"] == sent + 1


def test_servers_start_from_a_source_checkout_without_importing_it(source_tree_in_cwd):
    # From the repository root, `python -m microrpc.cli` used to import the source tree in
    # the working directory (no compiled modules after a non-editable install).
    with servers.synthetic_server("none", None, max_seconds=60) as address:
        assert address.startswith("tcp://")
        assert "calls" in servers.stats(address)     # it serves
