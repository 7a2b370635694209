"""Synthetic servers for the overload benchmark: `microrpc serve-synthetic` child processes,
pinned to one CPU, bounded in time, stopped by their own handle."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from microrpc import loadgen
from microrpc.loadgen.procs import child_cwd

START_TIMEOUT_S = 30.0

# address -> server process, while its ``synthetic_server`` block runs (for cpu_clock).
_RUNNING: dict[str, subprocess.Popen] = {}


@contextmanager
def synthetic_server(policy: str, cpu: int | None, max_seconds: float = 600.0
                     ) -> Iterator[str]:
    """Start a synthetic server with ``policy``; yields its address."""
    argv = [sys.executable, "-m", "microrpc.cli", "serve-synthetic", "--policy", policy,
            "--max-seconds", str(max_seconds)]
    if cpu is not None:
        argv += ["--cpu", str(cpu)]
    # Not in our working directory: from the repository root, `python -m` would import the
    # source tree instead of the installed package (see child_cwd).
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=child_cwd())
    try:
        address = proc.stdout.readline().strip()
        if not address.startswith(("tcp://", "unix://")):
            proc.wait(START_TIMEOUT_S)
            raise RuntimeError(f"server {policy!r} did not start: {proc.stderr.read()[-2000:]}")
        _RUNNING[address] = proc
        yield address
    finally:
        _RUNNING.pop(address, None)
        stop_process(proc, 10.0)


def stats(address: str) -> dict:
    return loadgen.fetch_server_stats(address, "synthetic.stats")


def cpu_clock(address: str) -> tuple[int, int] | None:
    """(CPU time of every thread of the server at ``address``, monotonic time), both in ns,
    read from /proc without talking to the server: a call would itself change what the
    policy sees (its first completion sets the server's per-request cost). Two reads a run
    apart give the server's CPU share; 1 - share is how long it slept for want of work.
    None where /proc has no per-thread schedstat."""
    proc = _RUNNING.get(address)
    if proc is None:
        return None
    total = 0
    try:
        task_dir = f"/proc/{proc.pid}/task"
        for tid in os.listdir(task_dir):
            with open(f"{task_dir}/{tid}/schedstat") as f:
                total += int(f.read().split()[0])     # ns on the CPU
    except (OSError, ValueError, IndexError):
        return None
    return total, time.monotonic_ns()


def cpu_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """CPU time over wall time between two cpu_clock reads (one core = 1.0)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def pid(address: str) -> int | None:
    """The process id of the server at ``address`` (while its ``synthetic_server`` runs)."""
    proc = _RUNNING.get(address)
    return proc.pid if proc is not None and proc.poll() is None else None


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop a child we started: SIGTERM, SIGKILL after ``grace`` seconds; close its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream:
            stream.close()
