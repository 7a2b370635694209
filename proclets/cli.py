"""The ``proclets`` command: ``proclets controller`` and ``proclets runtime``.

    proclets controller --listen tcp://0.0.0.0:7000 --key-file cluster.key
    proclets runtime --controller tcp://HOST:7000 --listen tcp://0.0.0.0:0 --advertise HOST2 \
        --key-file cluster.key

Each prints its bound address on stdout (one line) once it serves, and runs until SIGTERM or
Ctrl-C. The key file holds the cluster key (hex, or raw bytes; at least 16 bytes); without
one, the PROCLETS_CLUSTER_KEY environment variable (hex) is used. A key is required: every
connection between the processes of a cluster proves it holds it (microrpc's
authenticated handshake) before any frame, and runtimes accept pickled state only that way.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

import click

from proclets import _protocol as P

__all__ = ["main"]


def _version() -> str:
    from microrpc import _distribution_version
    return _distribution_version()


_KEY_HELP = ("The cluster key: hex or raw bytes, at least 16 (default: "
             f"${P.KEY_ENV}, hex). Required.")


def _key(path: str | None) -> bytes:
    """The cluster key: required, since runtimes accept pickled state from its holders.
    From ``--key-file`` (microrpc.auth.read_key_file: hex text, or else raw bytes) or else
    the environment (hex)."""
    from microrpc import auth
    try:
        if path is not None:
            return auth.read_key_file(path)
        env = os.environ.get(P.KEY_ENV)
        if not env:
            raise click.UsageError(
                f"no cluster key: give --key-file FILE (hex text or raw bytes, at least "
                f"{auth.MIN_KEY_SIZE} bytes; e.g. `python -c 'import secrets; "
                f"print(secrets.token_hex(32))' > cluster.key`) or set {P.KEY_ENV} (hex)")
        try:
            key = bytes.fromhex(env)
        except ValueError:
            raise click.UsageError(f"{P.KEY_ENV} is not hex") from None
        return auth.check_key(key)
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}",
                                 param_hint="--key-file") from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--key-file" if path else P.KEY_ENV
                                 ) from None


def _address(value: str, param: str) -> str:
    from microrpc import transport
    try:
        transport.parse_address(value)
    except Exception as exc:
        raise click.BadParameter(f"{value!r}: {exc}", param_hint=param) from None
    if not value.startswith("tcp://"):
        raise click.BadParameter(f"{value!r} is not tcp://HOST:PORT", param_hint=param)
    return value


def _die(message: str) -> None:
    click.echo(f"proclets: {message}", err=True)
    sys.exit(1)


@click.group()
@click.version_option(_version(), prog_name="proclets")
def main() -> None:
    """Proclets: migratable logical processes with exactly-once calls."""
    for path in os.environ.get(P.PATH_ENV, "").split(os.pathsep):
        if path and path not in sys.path:
            sys.path.append(path)


@main.command()
@click.option("--listen", required=True, help="tcp://HOST:PORT to serve on (port 0: any).")
@click.option("--key-file", type=click.Path(dir_okay=False), help=_KEY_HELP)
@click.option("--lease-ttl", type=click.FloatRange(min=0.01), default=P.LEASE_TTL,
              show_default=True, help="Seconds a client lease lives without renewal.")
@click.option("--exit-with-parent", is_flag=True, hidden=True)
def controller(listen: str, key_file: str | None, lease_ttl: float,
               exit_with_parent: bool) -> None:
    """Run the controller (directory, membership, client leases)."""
    from proclets import controller as ctl
    from proclets.runtime import _die_with_parent
    listen = _address(listen, "--listen")
    key = _key(key_file)
    if exit_with_parent:
        _die_with_parent()
    try:
        server, _, stop = ctl.serve(listen, key, ctl.Controller(lease_ttl=lease_ttl))
    except OSError as exc:
        _die(f"cannot listen on {listen}: {exc.strerror or exc}")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    click.echo(server.address)
    sys.stdout.flush()
    parent = os.getppid()
    while not done.wait(0.5):
        if exit_with_parent and os.getppid() != parent:
            break
    stop()


@main.command()
@click.option("--controller", "controller_address", required=True,
              help="The controller's tcp://HOST:PORT.")
@click.option("--listen", default="tcp://127.0.0.1:0", show_default=True,
              help="tcp://HOST:PORT to serve on (port 0: any).")
@click.option("--key-file", type=click.Path(dir_okay=False), help=_KEY_HELP)
@click.option("--advertise", metavar="HOST",
              help="The host others reach this runtime by (needed with a wildcard "
                   "--listen such as tcp://0.0.0.0:0).")
@click.option("--workers", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Threads for @blocking methods and migrations.")
@click.option("--orphan-timeout", type=click.FloatRange(min=0.1), default=P.ORPHAN_TIMEOUT,
              show_default=True, help="Exit when the controller is unreachable this long.")
@click.option("--exit-with-parent", is_flag=True, hidden=True)
def runtime(controller_address: str, listen: str, key_file: str | None,
            advertise: str | None, workers: int, orphan_timeout: float,
            exit_with_parent: bool) -> None:
    """Run a runtime that hosts proclets."""
    from proclets.runtime import advertised, run
    controller_address = _address(controller_address, "--controller")
    listen = _address(listen, "--listen")
    try:
        advertised(listen, advertise)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    key = _key(key_file)
    try:
        code = run(controller_address, listen, key, workers=workers, advertise=advertise,
                   exit_with_parent=exit_with_parent, orphan_timeout=orphan_timeout)
    except OSError as exc:
        _die(f"cannot listen on {listen}: {exc.strerror or exc}")
    sys.exit(code)
