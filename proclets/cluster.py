"""Cluster: spawn proclets and migrate them; Cluster.local starts one on this machine.

``Cluster(controller_address, key=...)`` uses a running cluster (controller and runtimes
started with the ``proclets`` command); ``Cluster.local(runtimes=N)`` starts a controller
and N runtime processes here (``python -m proclets ...``, the installed package), waits
until every runtime has registered, and stops them all when its ``with`` block ends, also
on an exception. Its processes die with the process that started them (Linux's parent-death
signal), and a runtime that cannot reach its controller for 10 s exits on its own.
"""
from __future__ import annotations

import os
import secrets
import selectors
import signal
import subprocess
import sys
import time
from typing import Any

from microrpc.errors import RemoteError, RpcError

from proclets import _protocol as P
from proclets.errors import MigrationError, NotImportable, ProcletError, ProcletLost
from proclets.migration import MigrationStats
from proclets.proclet import class_path
from proclets.ref import ProcletRef, connect, disconnect, poll_pause, to_wire

__all__ = ["Cluster", "LocalCluster"]

# How long Cluster.local waits for a process to print its address and for the runtimes to
# register (a cold Python start with these imports takes ~0.3 s; CI machines are slower).
START_TIMEOUT = 30.0
# Seconds a stopped process gets after SIGTERM before SIGKILL.
STOP_GRACE = 2.0


def _reraise(exc: RemoteError) -> None:
    kinds = {"NotImportable": NotImportable, "MigrationError": MigrationError,
             "ProcletError": ProcletError, "ProcletLost": ProcletLost}
    kind = kinds.get(exc.remote_type)
    if kind is not None:
        raise kind(exc.message) from None
    raise exc


class Cluster:
    """A cluster reached through its controller at ``controller``."""

    def __init__(self, controller: str, key: bytes | None = None) -> None:
        self.controller = controller
        self.session = connect(controller, key=key)
        self._next = 0

    # -- runtimes -----------------------------------------------------------------------

    def runtimes(self) -> list[str]:
        """The addresses of the live runtimes (``on=``/``to=`` index this list)."""
        return sorted(address for _, address in self.session.controller.runtimes())

    def _address(self, where: int | str | None) -> str:
        if isinstance(where, str):
            return where
        runtimes = self.runtimes()
        if not runtimes:
            raise ProcletError("no runtime has registered with the controller")
        if where is None:
            self._next += 1
            return runtimes[self._next % len(runtimes)]
        return runtimes[where]

    # -- proclets -----------------------------------------------------------------------

    def spawn(self, cls: type, *args: Any, on: int | str | None = None,
              timeout: float = 10.0, **kwargs: Any) -> ProcletRef:
        """Create ``cls(*args, **kwargs)`` on runtime ``on`` (an index into
        :meth:`runtimes`, an address, or None: round robin) and return its ref. The class
        must be importable by the runtimes (module path); NotImportable otherwise."""
        path = class_path(cls)
        address = self._address(on)
        pid = secrets.randbits(62) + 1
        try:
            self.session.admin(address).call(P.SPAWN, pid, path,
                                              [to_wire(a) for a in args], kwargs,
                                              timeout=timeout)
        except RemoteError as exc:
            _reraise(exc)
        self.session.locations[pid] = address
        return ProcletRef(pid, self.controller)

    def where(self, ref: ProcletRef) -> str:
        """The address of the runtime the controller says holds ``ref``'s proclet."""
        return self.session.locate(ref.pid, time.monotonic() + 5.0)

    def migrate(self, ref: ProcletRef, to: int | str, *,
                timeout: float = 60.0) -> MigrationStats:
        """Move the proclet to runtime ``to`` (index or address) while its callers keep
        calling; returns the migration's statistics. MigrationError if it could not be
        moved (it then serves where it was)."""
        destination = self._address(to)
        # The cached location first (no controller round trip); if that runtime no longer
        # has it, ask the controller and try once more.
        cached = self.session.locations.get(ref.pid)
        source = cached or self.where(ref)
        while True:
            if source == destination and cached is not None:
                cached = None
                source = self.where(ref)           # a stale cache may name the destination
                continue
            if source == destination:
                raise MigrationError(f"proclet {ref.pid} is already on {destination}")
            try:
                stats = self.session.admin(source).call(P.MIGRATE, ref.pid, destination,
                                                         timeout=timeout)
                break
            except RemoteError as exc:
                if cached is not None and exc.remote_type == "MigrationError":
                    cached, previous = None, source
                    source = self.where(ref)
                    if source != previous:
                        continue
                _reraise(exc)
        self.session.locations[ref.pid] = destination
        return MigrationStats(**stats)

    def destroy(self, ref: ProcletRef, *, timeout: float = 10.0) -> bool:
        """Delete the proclet for good: its state and completion records are dropped, and
        every later call through any ref to it ends with ProcletLost (a call that was
        running completes; a retry of it after the destroy ends with ProcletLost, even if
        an earlier copy ran). True if it existed; False if it was already gone (lost,
        destroyed, or never made). DeadlineExceeded if its runtime could not be told
        within ``timeout``: the directory says gone already, and that runtime drops it
        when it registers again."""
        deadline = time.monotonic() + timeout
        while True:
            status, _, address, _ = self.session.controller.forget(ref.pid)
            if status != P.UNKNOWN:
                break
            poll_pause(deadline, f"the controller does not know proclet {ref.pid} yet")
        self.session.locations.pop(ref.pid, None)
        if status == P.GONE:
            return False
        while True:
            try:
                answer = self.session.admin(address).call(
                    P.DESTROY, ref.pid, timeout=max(deadline - time.monotonic(), 0.001))
            except (RpcError, OSError) as exc:
                answer = str(exc)
            if answer in (P.DROPPED, P.NOT_HERE):
                break
            poll_pause(deadline, f"runtime {address} did not drop proclet {ref.pid} "
                                  f"({answer})")
        # Runtimes it left keep a tombstone naming where it went: free those too (best
        # effort; a missed one costs a few hundred bytes, and a call there still ends lost).
        for other in self.runtimes():
            if other != address:
                try:
                    self.session.admin(other).call(P.DESTROY, ref.pid, timeout=1.0)
                except (RpcError, OSError):
                    pass
        return True

    def info(self, runtime: int | str) -> dict:
        """A runtime's id, address and proclets (pid -> lifecycle state)."""
        return self.session.admin(self._address(runtime)).call(P.INFO)

    def close(self) -> None:
        """Forget this process's session with the cluster (refs to it stop working here);
        the cluster itself runs on."""
        if getattr(self, "session", None) is not None:
            disconnect(self.controller)
            self.session = None

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @staticmethod
    def local(runtimes: int = 1, **options: Any) -> "LocalCluster":
        """A controller and ``runtimes`` runtime processes on this machine (a context
        manager). Options: ``key`` (bytes; default random), ``pythonpath`` (extra
        directories the runtimes import proclet classes from; this process's sys.path is
        passed on too, after the runtimes' own), ``workers`` per runtime, ``lease_ttl`` (client leases, seconds)."""
        return LocalCluster(runtimes, **options)


class _Process:
    def __init__(self, argv: list[str], env: dict, what: str) -> None:
        self.what = what
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
        self.address = self._read_address()

    def _read_address(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(0.1):
                    line = self.proc.stdout.readline().decode().strip()
                    if line:
                        return line
                    break                        # EOF: it exited
                if self.proc.poll() is not None:
                    break
        self.stop()
        raise ProcletError(f"the {self.what} did not start (exit code "
                           f"{self.proc.returncode}); see its error output above")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(10)
        self.proc.stdout.close()


# ``python -m proclets``, but without the working directory first on sys.path (what -m and
# -c put there): run from a source checkout (the benchmarks run from the repository root),
# it would import the checkout's packages, which have no compiled modules, instead of the
# installed ones. (Python 3.11's -P does this; 3.10 is supported.)
_LAUNCH = ("import sys; del sys.path[0]; import runpy; "
           "runpy.run_module('proclets', run_name='__main__', alter_sys=True)")


class LocalCluster(Cluster):
    """``Cluster.local``: the processes it started, stopped on exit. ``on=i`` names the
    i-th runtime started (also after others died)."""

    def __init__(self, runtimes: int = 1, *, key: bytes | None = None,
                 pythonpath: tuple | list = (), workers: int = 8,
                 lease_ttl: float | None = None) -> None:
        if runtimes < 1:
            raise ValueError("runtimes must be at least 1")
        self.key = key or secrets.token_bytes(32)
        paths = [os.path.abspath(p) for p in pythonpath]
        paths += [p for p in sys.path if p and os.path.isdir(p) and p not in paths]
        self._env = dict(os.environ)
        self._env[P.PATH_ENV] = os.pathsep.join(paths)
        # The children read the key from their environment (as readable as a 0600 file
        # to the same user, and nothing to delete when this process is killed).
        self._env[P.KEY_ENV] = self.key.hex()
        self._saved_env = {k: os.environ.get(k) for k in (P.KEY_ENV, P.CONTROLLER_ENV)}
        self._lease_ttl = lease_ttl
        self._workers = workers
        self.controller_process: _Process | None = None
        self.runtime_processes: list[_Process] = []
        try:
            self.controller_process = self._start_controller("tcp://127.0.0.1:0")
            os.environ[P.KEY_ENV] = self.key.hex()
            os.environ[P.CONTROLLER_ENV] = self.controller_process.address
            super().__init__(self.controller_process.address, key=self.key)
            for _ in range(runtimes):
                self.runtime_processes.append(self._start_runtime())
            self.wait_registered(runtimes)
        except BaseException:
            self.close()
            raise

    def _argv(self, *args: str) -> list[str]:
        return [sys.executable, "-c", _LAUNCH, *args, "--exit-with-parent"]

    def _start_controller(self, listen: str) -> _Process:
        extra = ["--lease-ttl", str(self._lease_ttl)] if self._lease_ttl else []
        return _Process(self._argv("controller", "--listen", listen, *extra), self._env,
                        "controller")

    def _start_runtime(self) -> _Process:
        return _Process(self._argv("runtime", "--controller", self.controller,
                                   "--listen", "tcp://127.0.0.1:0",
                                   "--workers", str(self._workers)),
                        self._env, "runtime")

    def wait_registered(self, count: int, timeout: float = START_TIMEOUT) -> None:
        """Wait (polling, bounded) until ``count`` runtimes are registered."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if len(self.runtimes()) >= count:
                    return
            except Exception:
                pass                                # the controller is (re)starting
            if time.monotonic() > deadline:
                raise ProcletError(f"{count} runtimes did not register within {timeout} s")
            time.sleep(0.02)

    def _address(self, where: int | str | None) -> str:
        if isinstance(where, int):
            return self.runtime_processes[where].address
        return super()._address(where)

    @property
    def addresses(self) -> list[str]:
        """The runtimes' addresses, in the order they were started."""
        return [p.address for p in self.runtime_processes]

    def add_runtime(self) -> int:
        """Start one more runtime; returns its index."""
        self.runtime_processes.append(self._start_runtime())
        self.wait_registered(len([p for p in self.runtime_processes
                                  if p.proc.poll() is None]))
        return len(self.runtime_processes) - 1

    def kill_runtime(self, index: int) -> None:
        """SIGKILL runtime ``index`` (fault injection)."""
        self.runtime_processes[index].kill()

    def restart_controller(self) -> None:
        """Kill the controller and start a new one on the same address; it relearns the
        directory from the runtimes (this waits until they have all registered again)."""
        self.controller_process.kill()
        self.controller_process = self._start_controller(self.controller)
        self.wait_registered(len([p for p in self.runtime_processes
                                  if p.proc.poll() is None]))

    def close(self) -> None:
        """Stop every process this cluster started (SIGTERM, then SIGKILL)."""
        super().close()
        for process in self.runtime_processes:
            process.stop()
        if self.controller_process is not None:
            self.controller_process.stop()
        self.runtime_processes = []
        self.controller_process = None
        for name, value in getattr(self, "_saved_env", {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
