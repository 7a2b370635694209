"""Tests of the load generator (``microrpc bench``) and the synthetic server.

Runs against ``microrpc serve-synthetic`` child processes (a server in this process would
share the GIL with the spinning generator). Every run is short and bounded; the assertions
are on counts, which do not depend on the machine's speed, never on timings.
"""
import dataclasses
import os
import random
import subprocess
import sys

import pytest
from click.testing import CliRunner

import breakwater
import microrpc
from microrpc import loadgen
from microrpc.cli import main
from microrpc.loadgen import LoadSpec, PoissonSchedule, schedule_seed
from microrpc.loadgen.procs import child_cwd
from microrpc.loadgen.result import OUTCOMES, AccountingError, Tally
from microrpc.loadgen.synthetic import (ServiceTime, decode_service, encode_service,
                                        parse_duration_ns, parse_policy)


@pytest.fixture(scope="module")
def synthetic():
    """synthetic(policy) -> address of a serve-synthetic child process (stopped at the end)."""
    procs = {}

    def start(policy: str) -> str:
        if policy not in procs:
            p = subprocess.Popen(
                [sys.executable, "-m", "microrpc.cli", "serve-synthetic", "--policy", policy,
                 "--max-seconds", "120"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                cwd=child_cwd())     # whatever the working directory of the first test
            address = p.stdout.readline().strip()
            assert address.startswith("tcp://"), f"server did not start: {address!r}"
            procs[policy] = (p, address)
        return procs[policy][1]

    yield start
    for p, _ in procs.values():
        p.terminate()
        p.wait(10)


def _arrivals(spec: LoadSpec, index: int = 0) -> tuple[int, int]:
    """(warm-up, measured) arrival counts the schedule of process ``index`` must offer."""
    n = spec.procs
    segs = [(r / n, s) for r, s in spec.segments()]
    if spec.warmup:
        segs = [(segs[0][0], spec.warmup)] + segs
    times = list(PoissonSchedule(segs, 0, schedule_seed(spec, index)))
    warm = sum(1 for t in times if t < int(spec.warmup * 1e9))
    return warm, len(times) - warm


# --------------------------------------------------------------------------- accounting


def test_every_outcome_is_counted_once_and_matches_the_server(synthetic):
    # 3x overload of a Breakwater server with a short timeout: ok, server and client
    # rejects all happen. No warm-up, so every request the server saw is a measured one.
    address = synthetic("breakwater")
    spec = LoadSpec(address=address, rate=1500, duration=0.4, warmup=0.0, clients=20,
                    connections=2, service="const:2ms", timeout=0.05, drain=0.5,
                    slo=0.02, seed=3)
    before = loadgen.fetch_server_stats(address, "synthetic.stats")
    result = loadgen.run(spec, stats_method="synthetic.stats")
    counts = result.counts
    assert set(counts) == set(OUTCOMES)
    assert sum(counts.values()) == result.offered == _arrivals(spec)[1]
    assert counts["ok"] > 0
    assert counts["rejected_server"] + counts["rejected_client"] > 0
    assert result.tally.latency.get_total_count() == counts["ok"]
    # Requests that left the generator = requests the server received: the offered ones
    # not rejected client-side, and the stats call (sessions register with a PING, which
    # is not a call).
    sent = result.offered - counts["rejected_client"]
    assert result.server_stats["calls"] - before["calls"] == sent + 1
    assert result.server_stats["rejects"] - before["rejects"] == counts["rejected_server"]
    # The per-bucket series add up to the same totals.
    series = result.series()
    assert sum(row["offered"] for row in series) == result.offered
    for name in OUTCOMES:
        assert sum(row[name] for row in series) == counts[name]


def test_accounting_check_fails_loudly():
    t = Tally(slo_ns=1_000_000, bucket_ns=1_000_000, n_buckets=4)
    t.offered = 3
    t.record_ok(500_000, 0)
    t.record("timeout", 2_000_000, 1_000_000)
    with pytest.raises(AccountingError, match="do not add up"):
        t.check()
    t.record("rejected_client", 100_000, 1_000_000)
    t.check()
    t.warmup_offered = 1
    with pytest.raises(AccountingError, match="warm-up"):
        t.check()


# --------------------------------------------------------------------------- open loop


def test_schedule_is_open_loop_against_a_slow_server(synthetic):
    # The server needs 5 ms per request (<= 200/s on one connection's worth of CPU); the
    # schedule offers 1000/s. A closed-loop generator would offer ~100 requests; this one
    # must offer exactly what its Poisson schedule says, whatever the server does.
    address = synthetic("none")
    spec = LoadSpec(address=address, rate=1000, duration=0.5, warmup=0.1, clients=10,
                    connections=1, service="const:5ms", timeout=0.2, drain=0.3, seed=11)
    result = loadgen.run(spec)
    warm, measured = _arrivals(spec)
    assert result.offered == measured
    assert result.tally.warmup_offered == warm
    assert 350 < measured < 650                      # Poisson(500): far outside is a bug
    # The server really was the bottleneck: its backlog timed most requests out.
    assert result.counts["timeout"] > measured / 2
    assert sum(result.counts.values()) == measured
    # The generator did not wait for replies. One that did could send at most ~200/s, so
    # by the end of the schedule it would lag by hundreds of ms; the bound leaves room for
    # a machine busy with other work (CPU time slices of a few ms).
    assert result.tally.send_lag.get_value_at_percentile(50) < 50_000_000


def test_poisson_schedule_rate_and_steps():
    sched = PoissonSchedule([(20_000, 1.0), (0, 0.5), (5_000, 1.0)], 10**12, seed=5)
    times = list(sched)
    assert times == sorted(times)
    offsets = [(t - 10**12) / 1e9 for t in times]
    first = sum(1 for o in offsets if o < 1.0)
    silent = sum(1 for o in offsets if 1.0 <= o < 1.5)
    last = sum(1 for o in offsets if o >= 1.5)
    assert abs(first - 20_000) < 5 * 20_000 ** 0.5
    assert silent == 0
    assert abs(last - 5_000) < 5 * 5_000 ** 0.5
    assert max(offsets) < 2.5
    # The same seed gives the same schedule, wherever it starts.
    again = [t - 7 for t in PoissonSchedule([(20_000, 1.0), (0, 0.5), (5_000, 1.0)],
                                            10**12 + 7, seed=5)]
    assert again == times


# --------------------------------------------------------------------------- merging


def _tally_with(values: list[int]) -> Tally:
    t = Tally(slo_ns=2_000_000, bucket_ns=10_000_000, n_buckets=3)
    for i, v in enumerate(values):
        t.offered += 1
        t.record_ok(v, i * 1_000_000)
    return t


def test_tallies_merge_like_one_histogram():
    rng = random.Random(7)
    a = [rng.randrange(10_000, 5_000_000) for _ in range(3000)]
    b = [rng.randrange(1_000_000, 50_000_000) for _ in range(1000)]
    merged = Tally.merge([Tally.from_wire(_tally_with(a).to_wire()),
                          Tally.from_wire(_tally_with(b).to_wire())])
    whole = _tally_with(a + b)
    merged.check()
    assert merged.offered == 4000 and merged.counts["ok"] == 4000
    for p in (50, 90, 99, 99.9, 100):
        assert (merged.latency.get_value_at_percentile(p)
                == whole.latency.get_value_at_percentile(p))
    assert merged.good == sum(1 for v in a + b if v <= 2_000_000)
    assert sorted(v for bucket in merged.bucket_latency for v in bucket) == sorted(a + b)
    # Buckets add up bucket by bucket (the processes' buckets share one start time).
    per_a, per_b = ([len(x) for x in _tally_with(v).bucket_latency] for v in (a, b))
    assert [len(x) for x in merged.bucket_latency] == [x + y for x, y in zip(per_a, per_b)]
    assert merged.series["ok"] == [x + y for x, y in zip(per_a, per_b)]


def test_histograms_merge_across_two_processes(synthetic):
    address = synthetic("none")
    spec = LoadSpec(address=address, rate=1000, duration=0.4, warmup=0.1, clients=8,
                    connections=2, procs=2, service="const:0us", timeout=0.5, seed=5)
    result = loadgen.run(spec)
    assert len(result.per_process) == 2
    for i, proc in enumerate(result.per_process):
        assert proc["offered"] == _arrivals(spec, i)[1]
        assert sum(proc["outcomes"].values()) == proc["offered"]
        assert proc["offered"] > 0
    assert result.offered == sum(p["offered"] for p in result.per_process)
    assert result.tally.latency.get_total_count() == sum(
        p["latency_count"] for p in result.per_process) == result.counts["ok"]
    assert result.tally.sessions == 8
    assert result.counts["ok"] > 0.9 * result.offered


def test_child_processes_import_their_parents_package_not_the_working_directory(
        synthetic, source_tree_in_cwd):
    # Run from the root of a source checkout, `python -m` children used to import the tree
    # there (no compiled modules) and die before they were ready.
    assert os.path.samefile(os.path.join(child_cwd(), "microrpc", "__init__.py"),
                            microrpc.__file__)
    spec = LoadSpec(address=synthetic("none"), rate=500, duration=0.2, warmup=0.0, clients=4,
                    connections=1, procs=2, service="const:0us", timeout=0.5, seed=3)
    result = loadgen.run(spec)
    assert len(result.per_process) == 2
    assert result.counts["ok"] == result.offered > 0


# --------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("kind", ["exp", "const", "bimodal"])
def test_service_time_means(kind):
    dist = ServiceTime.parse(f"{kind}:100us")
    rng = random.Random(1)
    draws = [dist.draw(rng) for _ in range(200_000)]
    mean = sum(draws) / len(draws)
    assert abs(mean - 100_000) < 1_500, mean
    if kind == "const":
        assert set(draws) == {100_000}
    if kind == "bimodal":
        long = sum(1 for d in draws if d == 400_000) / len(draws)
        assert set(draws) == {25_000, 400_000}
        assert abs(long - 0.2) < 0.005
    if kind == "exp":
        # Exponential: the median is mean * ln 2.
        median = sorted(draws)[len(draws) // 2]
        assert abs(median - 69_315) < 1_500


def test_service_body_round_trip_and_limits():
    assert decode_service(encode_service(123_456, "raw")) == 123_456
    assert decode_service(b"") is None
    assert decode_service(5000) == 5000
    with pytest.raises(ValueError, match="8 bytes"):
        decode_service(b"\x01\x02")
    with pytest.raises(ValueError, match="outside"):
        decode_service(10**12)
    with pytest.raises(TypeError):
        decode_service("100")
    assert parse_duration_ns("1.5ms") == 1_500_000
    assert parse_duration_ns("250", "us") == 250_000
    for bad in ("fast", "-3us", "10 parsecs", "exp:"):
        with pytest.raises(ValueError):
            parse_duration_ns(bad)
    with pytest.raises(ValueError, match="unknown service-time"):
        ServiceTime.parse("gauss:100us")


def test_policy_names():
    bw = parse_policy("breakwater:target_delay_ns=400000,alpha=0.05")
    assert isinstance(bw, breakwater.Breakwater)
    assert bw.target_delay_ns == 400_000 and bw.alpha == 0.05
    assert isinstance(parse_policy("none"), breakwater.NoControl)
    assert parse_policy("aqm:600000").threshold_ns == 600_000
    assert parse_policy("limit:8").limit == 8
    for bad, msg in (("limit:x", "positive integer"), ("breakwater:nope=1", "nope"),
                     ("breakwater:alpha", "key=value"), ("fifo", "unknown policy"),
                     ("none:3", "no parameters")):
        with pytest.raises(ValueError, match=msg):
            parse_policy(bad)


def test_spec_rejects_bad_values():
    for kwargs, msg in (({"rate": -1}, "rate"), ({"clients": 0}, "clients"),
                        ({"codec": "pickle"}, "codec"), ({"service": "exp"}, "KIND:MEAN"),
                        ({"duration": 0}, "duration"), ({"procs": 3, "clients": 2}, "per process"),
                        ({"schedule": ((100, 0),)}, "segment")):
        with pytest.raises(ValueError, match=msg):
            LoadSpec(address="tcp://127.0.0.1:1", **kwargs)
    with pytest.raises(ValueError, match="scheme"):
        LoadSpec(address="localhost:80")


# --------------------------------------------------------------------------- command line


def test_cli_help():
    runner = CliRunner()
    for args, text in ((["--help"], "bench"), (["bench", "--help"], "--rate"),
                       (["serve-synthetic", "--help"], "--policy")):
        out = runner.invoke(main, args)
        assert out.exit_code == 0, out.output
        assert text in out.output


@pytest.mark.parametrize("args, message", [
    (["bench", "tcp://127.0.0.1:1", "--rate", "-5"], "rate must be"),
    (["bench", "localhost:80"], "has no scheme"),
    (["bench", "tcp://127.0.0.1:1", "--duration", "soon"], "not a duration"),
    (["bench", "tcp://127.0.0.1:1", "--schedule", "100"], "RATE:SECONDS"),
    (["bench", "tcp://127.0.0.1:1", "--service", "exp:fast"], "not a duration"),
    (["bench", "tcp://127.0.0.1:1", "--cpu", "999"], "not available"),
    (["serve-synthetic", "--policy", "fifo"], "unknown policy"),
    (["serve-synthetic", "--service", "gauss:1ms"], "unknown service-time"),
    (["serve-synthetic", "--address", "tcp://0.0.0.0:0"], "reachable from other machines"),
])
def test_cli_bad_arguments_give_clean_errors(args, message):
    import signal
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 2, out.output
    assert message in out.output
    assert "Traceback" not in out.output
    # It ran in this process: a signal mask left behind would reach every process
    # started later (a SIGTERM-proof child once hung the proclets CLI test).
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == mask


def test_cli_unreachable_server_is_one_line():
    # Port 1 on loopback: nothing listens there, the connect is refused at once.
    out = CliRunner().invoke(main, ["bench", "tcp://127.0.0.1:1", "--duration", "0.1",
                                    "--no-progress"])
    assert out.exit_code == 1
    assert "cannot connect" in out.output
    assert "Traceback" not in out.output


def test_cli_bench_writes_json_and_hgrm(synthetic, tmp_path):
    address = synthetic("none")
    out = CliRunner().invoke(main, [
        "bench", address, "--rate", "500", "--duration", "0.3", "--warmup", "0.1",
        "--clients", "4", "--connections", "1", "--service", "const:0us", "--no-progress",
        "--max-lag-fraction", "1000",
        "--json", str(tmp_path / "r.json"), "--hgrm", str(tmp_path / "r")])
    assert out.exit_code == 0, out.output
    assert "goodput" in out.output
    import json
    data = json.loads((tmp_path / "r.json").read_text())
    assert sum(data["outcomes"].values()) == data["offered"] > 0
    assert data["series"] and "p99_us" in data["series"][0]
    hgrm = (tmp_path / "r.latency.hgrm").read_text()
    assert "Percentile" in hgrm and "#[Max" in hgrm


# --------------------------------------------------------------------------- public drivers


@pytest.mark.parametrize("driver", ["client", "asyncio", "uvloop"])
def test_public_client_drivers_account_for_every_request(synthetic, driver):
    """The schedule sent through Client.call_async (done-callbacks) or AsyncClient: the same
    arrivals as the engine's, every one given exactly one outcome, the server's count of
    calls equal to what left the clients."""
    if driver == "uvloop":
        pytest.importorskip("uvloop")
    address = synthetic("breakwater")
    # No warm-up: warm-up outcomes are not classified, and every request must be compared
    # with what the server saw.
    spec = LoadSpec(address=address, rate=800, duration=0.5, warmup=0.0, clients=3,
                    service="const:200us", timeout=0.5, drain=1.0, slo=0.02, seed=5,
                    driver=driver)
    before = loadgen.fetch_server_stats(address, "synthetic.stats")
    result = loadgen.run(spec, stats_method="synthetic.stats")
    counts = result.counts
    warm, measured = _arrivals(spec)
    assert warm == 0 and result.offered == measured
    assert sum(counts.values()) == measured
    assert counts["ok"] > 0 and counts["error"] == 0
    assert result.tally.latency.get_total_count() == counts["ok"]
    assert result.tally.sessions == 3
    sent = measured - counts["rejected_client"]
    assert result.server_stats["calls"] - before["calls"] == sent + 1    # + the stats call


def test_public_drivers_refuse_what_they_cannot_run():
    with pytest.raises(ValueError, match="driver must be one of"):
        LoadSpec(address="tcp://127.0.0.1:1", driver="threads")
    with pytest.raises(ValueError, match="open-loop"):
        LoadSpec(address="tcp://127.0.0.1:1", driver="client", closed=4, clients=4)
    with pytest.raises(ValueError, match="at most 64"):
        LoadSpec(address="tcp://127.0.0.1:1", driver="asyncio", clients=1000)


def test_a_run_whose_calls_fail_is_invalid_and_says_why():
    from microrpc.loadgen.runner import invalid_reasons
    spec = LoadSpec(address="tcp://127.0.0.1:1", rate=1000, duration=1.0, slo=0.01)
    t = Tally(slo_ns=10_000_000, bucket_ns=100_000_000, n_buckets=10)
    t.offered = 10_000
    t.counts["ok"] = 9_995
    t.counts["error"] = 5                     # 0.05 %: within the tolerance
    t.error_types["ProtocolError"] = 5
    assert invalid_reasons(t, spec) == []
    t.counts["ok"] = 4_000
    t.counts["error"] = 6_000                 # a refusal the run did not mean to measure
    t.error_types["ProtocolError"] = 6_000
    (why,) = invalid_reasons(t, spec)
    assert "60.0% of calls ended in an error" in why and "ProtocolError 6000" in why


@pytest.mark.parametrize("driver, procs", [("engine", 1), ("client", 1), ("engine", 2)])
def test_load_on_an_authenticated_server_and_the_key_stays_out_of_results(driver, procs):
    key = microrpc.new_auth_key()
    with microrpc.Server("tcp://127.0.0.1:0", auth_key=key) as server:
        server.register("echo", lambda body: body)
        spec = LoadSpec(address=server.address, rate=300, duration=0.3, warmup=0.0,
                        clients=2, connections=1, procs=procs, method="echo", service=None,
                        payload=8, timeout=1.0, seed=4, driver=driver, auth_key=key)
        result = loadgen.run(spec)
        assert result.counts["ok"] == result.offered > 0
        assert "auth_key" not in result.config and key.hex() not in repr(spec)
        wrong = dataclasses.replace(spec, auth_key=microrpc.new_auth_key())
        with pytest.raises(Exception, match="authenticat"):
            loadgen.run(wrong)
