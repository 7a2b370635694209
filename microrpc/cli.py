"""The ``microrpc`` command: ``microrpc bench`` (the open-loop load generator),
``microrpc serve-synthetic`` (a server with the CPU-bound ``spin`` method to aim it at) and
``microrpc stats`` (a running server's statistics).

    microrpc serve-synthetic --policy breakwater --cpu 1        # prints its address
    microrpc bench tcp://127.0.0.1:PORT --rate 8000 --duration 5 --clients 1000 --json r.json
    microrpc stats tcp://127.0.0.1:PORT --watch 1

See docs/loadgen.md.
"""
from __future__ import annotations

import json
import os
import signal
import sys

import click

from microrpc.loadgen.synthetic import ServiceTime, parse_duration_ns, parse_policy

__all__ = ["main"]


class Duration(click.ParamType):
    """``2ms``, ``100us``, ``1.5s``; a bare number is in ``unit``. Converts to seconds."""

    name = "duration"

    def __init__(self, unit: str = "s") -> None:
        self.unit = unit

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            return parse_duration_ns(value, self.unit) / 1e9
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Schedule(click.ParamType):
    """``RATE:SECONDS,RATE:SECONDS,...`` e.g. ``4000:1,16000:1,4000:1`` (a step)."""

    name = "schedule"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        segments = []
        for item in str(value).split(","):
            rate, sep, secs = item.strip().partition(":")
            try:
                if not sep:
                    raise ValueError
                segments.append((float(rate), parse_duration_ns(secs, "s") / 1e9))
            except ValueError:
                self.fail(f"segment {item!r} is not RATE:SECONDS (e.g. 4000:1.5)", param, ctx)
        return tuple(segments)


class CpuList(click.ParamType):
    name = "cpus"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            cpus = tuple(int(c) for c in str(value).split(",") if c.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of CPU numbers", param, ctx)
        available = os.sched_getaffinity(0)
        bad = [c for c in cpus if c not in available]
        if bad:
            self.fail(f"CPU {bad[0]} is not available (this process may use "
                      f"{sorted(available)})", param, ctx)
        return cpus


def _service(value: str | None) -> str | None:
    if value is None or value.lower() == "none":
        return None
    ServiceTime.parse(value)
    return value


@click.group()
@click.version_option(package_name="microrpc-toolkit", prog_name="microrpc")
def main() -> None:
    """microrpc tools: an open-loop load generator, a synthetic server to aim it at, and a
    running server's statistics."""


_KEY_FILE_HELP = ("For a server started with auth_key: a file holding that key as hex text "
                  "(e.g. written by python -c 'import secrets; "
                  "print(secrets.token_hex(32))'), or else as raw bytes, exactly.")


@main.command()
@click.argument("address")
@click.option("--rate", type=float, default=1000.0, show_default=True,
              help="Offered load, requests per second (all processes together).")
@click.option("--duration", type=Duration(), default="5s", show_default=True,
              help="Length of the measured run.")
@click.option("--schedule", type=Schedule(), default=None,
              help="Rate steps RATE:SECONDS,... (replaces --rate and --duration).")
@click.option("--warmup", type=Duration(), default="0.5s", show_default=True,
              help="Unmeasured warm-up at the first rate.")
@click.option("--clients", type=click.IntRange(1), default=1000, show_default=True,
              help="Simulated clients (one credit session each).")
@click.option("--connections", type=click.IntRange(1), default=4, show_default=True,
              help="Connections per generator process, shared by its clients.")
@click.option("--procs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Generator processes (rate and clients are split among them).")
@click.option("--cpu", "cpus", type=CpuList(), default=None,
              help="Pin generator processes to these CPUs, e.g. 0 or 0,2.")
@click.option("--method", default="spin", show_default=True, help="Method to call.")
@click.option("--service", default="exp:100us", show_default=True,
              help="Service time asked of the synthetic `spin` method: exp|const|bimodal:MEAN, "
                   "or 'none' to send --payload bytes instead.")
@click.option("--payload", type=click.IntRange(0, 1 << 24), default=0, show_default=True,
              help="Body size in bytes when --service none.")
@click.option("--codec", type=click.Choice(["raw", "msgpack"]), default="raw",
              show_default=True)
@click.option("--slo", type=Duration("us"), default="2ms", show_default=True,
              help="Latency objective: goodput counts ok responses within it.")
@click.option("--timeout", type=Duration(), default="1s", show_default=True,
              help="A request without a reply this long after it was sent is a timeout.")
@click.option("--drain", type=Duration(), default="2s", show_default=True,
              help="After the schedule ends, wait at most this long for replies.")
@click.option("--closed", type=click.IntRange(0), default=0, show_default=True,
              help="Closed loop with N requests outstanding instead of Poisson arrivals.")
@click.option("--bucket", type=Duration("ms"), default="10ms", show_default=True,
              help="Width of the time buckets of the per-bucket series.")
@click.option("--max-lag-fraction", type=float, default=0.1, show_default=True,
              help="The run is INVALID when the p99 send lag exceeds this x SLO.")
@click.option("--client-queue", type=click.IntRange(0), default=16, show_default=True,
              help="Requests a client may hold while waiting for credit.")
@click.option("--client-max-wait", type=Duration("us"), default="100us", show_default=True,
              help="How long a request may wait for credit before it fails client-side.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--driver", type=click.Choice(["engine", "client", "asyncio", "uvloop"]),
              default="engine", show_default=True,
              help="engine: CLIENTS sessions multiplexed over CONNECTIONS; client / asyncio / "
                   "uvloop: CLIENTS public client objects (Client.call_async with "
                   "done-callbacks, AsyncClient), a connection each.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the full result (with the per-bucket series) here.")
@click.option("--hgrm", "hgrm_prefix", type=click.Path(dir_okay=False),
              help="Write percentile distributions to PREFIX.latency.hgrm etc.")
@click.option("--stats-method", default=None,
              help="Server method returning its statistics (synthetic.stats), read after.")
@click.option("--progress/--no-progress", default=None,
              help="Live progress on stderr (default: when stderr is a terminal).")
@click.option("--key-file", type=click.Path(dir_okay=False), default=None,
              help=_KEY_FILE_HELP)
def bench(address, json_path, hgrm_prefix, stats_method, progress, cpus, service, schedule,
          key_file, **options) -> None:
    """Offer open-loop Poisson load to the server at ADDRESS and report what came back.

    Exit status: 0 for a valid run, 1 when the run is INVALID (the generator could not keep
    up, or connections were lost) or its accounting failed, 2 for bad arguments.
    """
    from microrpc import loadgen
    from microrpc.loadgen.report import live_progress, print_result

    try:
        spec = loadgen.LoadSpec(address=address, cpus=cpus or (), service=_service(service),
                                schedule=schedule or (),
                                auth_key=_read_key_file(key_file) if key_file else None,
                                **options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    total = spec.warmup + spec.measured_s
    try:
        with live_progress(total, progress) as callback:
            result = loadgen.run(spec, callback, stats_method)
    except loadgen.AccountingError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:   # connection refused, server gone: one clear line
        from microrpc.errors import RpcError
        if isinstance(exc, (RpcError, OSError)):
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        raise
    print_result(result)
    if json_path:
        result.to_json(json_path)
    if hgrm_prefix:
        result.write_hgrm(hgrm_prefix)
    sys.exit(0 if result.valid else 1)


@main.command("serve-synthetic")
@click.option("--address", default="tcp://127.0.0.1:0", show_default=True)
@click.option("--policy", default="none", show_default=True,
              help="none | breakwater[:key=value,...] | aqm[:THRESHOLD_NS] | limit:N")
@click.option("--service", default="exp:100us", show_default=True,
              help="Distribution used when a request does not name its service time.")
@click.option("--cpu", type=click.IntRange(0), default=None, help="Pin the server to this CPU.")
@click.option("--poll", type=click.Choice(["block", "spin", "adaptive"]), default="block",
              show_default=True)
@click.option("--max-seconds", type=click.FloatRange(0, min_open=True), default=3600.0,
              show_default=True, help="Stop by itself after this long.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--key-file", type=click.Path(dir_okay=False), default=None,
              help="The pre-shared auth key (hex text or raw bytes); needed to serve on an "
                   "address other machines reach, unless --insecure.")
@click.option("--insecure", is_flag=True,
              help="Serve on an address other machines reach without a key.")
def serve_synthetic(address, policy, service, cpu, poll, max_seconds, seed, key_file,
                    insecure) -> None:
    """Serve `spin` (busy-waits for the service time its request names, on the I/O thread)
    and `synthetic.stats`. Prints the bound address on one line, then serves until SIGINT,
    SIGTERM or --max-seconds."""
    import microrpc
    from microrpc.loadgen.synthetic import register_synthetic, statistics_dict

    try:
        overload = parse_policy(policy)
        default = ServiceTime.parse(service)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError as exc:
            raise click.UsageError(f"cannot pin to CPU {cpu}: {exc}") from None
    try:
        server = microrpc.Server(address, overload=overload, poll=poll,
                                 auth_key=_read_key_file(key_file) if key_file else None,
                                 insecure=insecure)
    except (OSError, ValueError) as exc:
        raise click.UsageError(f"cannot serve on {address}: {exc}") from None
    register_synthetic(server, default, seed)
    # Block the stop signals before the server thread starts (threads inherit the mask), so
    # that only this thread receives them, in sigtimedwait below; the mask is restored at
    # the end, since a caller in the same process (CliRunner) and the processes it starts
    # later would inherit it, and could then never be stopped by SIGTERM.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        server.start()
        click.echo(server.address)
        sys.stdout.flush()
        try:
            signal.sigtimedwait(stop_signals, max_seconds)
        finally:
            final = statistics_dict(server.statistics())
            server.stop(grace=0.5)
            click.echo(json.dumps({"final_statistics": final}), err=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


# -- microrpc stats ---------------------------------------------------------------------------

class _BadArgument(click.ClickException):
    exit_code = 2                           # an argument error, on one line


def _fetch_stats(client, address: str) -> dict:
    """One statistics snapshot from the server's built-in method; a clear ClickException
    (one line, exit 1) for anything that goes wrong."""
    from microrpc.errors import ConnectionLost, MethodNotFound, RpcError
    from microrpc.server import STATS_METHOD

    try:
        stats = client.call(STATS_METHOD)
    except MethodNotFound:
        raise click.ClickException(
            f"the server at {address} does not expose its statistics (it was started "
            f"with expose_stats=False)") from None
    except ConnectionLost as exc:
        raise click.ClickException(f"cannot reach {address}: {exc}") from None
    except RpcError as exc:
        raise click.ClickException(f"{address}: {type(exc).__name__}: {exc}") from None
    if not isinstance(stats, dict):
        raise click.ClickException(f"{address} answered {STATS_METHOD} with a "
                                   f"{type(stats).__name__}, not statistics")
    return stats


def _read_key_file(path: str) -> bytes:
    """The key in a key file (microrpc.auth.read_key_file); a bad one is an argument error
    (exit 2)."""
    from microrpc.auth import read_key_file

    try:
        return read_key_file(path)
    except OSError as exc:
        raise _BadArgument(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise _BadArgument(f"key file {path}: {exc}") from None


def _flatten(stats: dict, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted name, value) rows: the policy's statistics and the decode limits are maps."""
    rows = []
    for key, value in stats.items():
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _stats_table(stats: dict, address: str):
    from rich.table import Table

    table = Table(title=f"microrpc server {address}", title_justify="left")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for name, value in _flatten(stats):
        if value is None:
            text = "-"
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            text = str(value)
        elif isinstance(value, int):
            text = f"{value:,}"
        else:
            text = f"{value:,.3f}"
        table.add_row(name, text)
    return table


@main.command()
@click.argument("address")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON (one object per line with --watch) instead of a table.")
@click.option("--watch", type=click.FloatRange(0, min_open=True), default=None,
              metavar="SECONDS", help="Print again every SECONDS until Ctrl-C.")
@click.option("--count", type=click.IntRange(1), default=None,
              help="With --watch: stop after N snapshots.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=5.0,
              show_default=True, help="Seconds to wait for the server.")
@click.option("--key-file", type=click.Path(dir_okay=False), default=None,
              help=_KEY_FILE_HELP)
def stats(address, as_json, watch, count, timeout, key_file) -> None:
    """Print the statistics of the running microrpc server at ADDRESS (tcp://host:port or
    unix:///path): calls, errors, connections, queues, bounds and the overload policy's
    counters, read through its built-in `_microrpc.stats` method.

    Exit status: 0, 1 when the server cannot be reached or does not expose its statistics
    (Server(expose_stats=False)), 2 for bad arguments.
    """
    import time

    from rich.console import Console

    from microrpc.client import Client
    from microrpc.errors import RpcError

    if count is not None and watch is None:
        raise click.UsageError("--count needs --watch")
    key = _read_key_file(key_file) if key_file is not None else None
    try:
        client = Client(address, timeout=timeout, connect_timeout=timeout,   # connects
                        auth_key=key)
    except ValueError as exc:               # no scheme, unknown scheme, bad port
        raise _BadArgument(str(exc)) from None
    except RpcError as exc:                 # nobody listening, not a microrpc server
        raise click.ClickException(str(exc)) from None
    console = Console()
    shown = 0
    try:
        with client:
            while True:
                snapshot = _fetch_stats(client, address)
                shown += 1
                if as_json:
                    click.echo(json.dumps(snapshot, sort_keys=True))
                else:
                    if watch is not None and console.is_terminal:
                        console.clear()
                    console.print(_stats_table(snapshot, address))
                if watch is None or (count is not None and shown >= count):
                    return
                sys.stdout.flush()
                time.sleep(watch)           # the refresh interval the user asked for
    except KeyboardInterrupt:               # how --watch is meant to end
        return


if __name__ == "__main__":
    main()
