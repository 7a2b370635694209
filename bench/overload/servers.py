"""Synthetic servers for the overload benchmark: `microrpc serve-synthetic` child processes,
pinned to one CPU, bounded in time, stopped by their own handle."""
from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

from microrpc import loadgen

START_TIMEOUT_S = 30.0


@contextmanager
def synthetic_server(policy: str, cpu: int | None, max_seconds: float = 600.0
                     ) -> Iterator[str]:
    """Start a synthetic server with ``policy``; yields its address."""
    argv = [sys.executable, "-m", "microrpc.cli", "serve-synthetic", "--policy", policy,
            "--max-seconds", str(max_seconds)]
    if cpu is not None:
        argv += ["--cpu", str(cpu)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = proc.stdout.readline().strip()
        if not address.startswith(("tcp://", "unix://")):
            proc.wait(START_TIMEOUT_S)
            raise RuntimeError(f"server {policy!r} did not start: {proc.stderr.read()[-2000:]}")
        yield address
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
        for stream in (proc.stdout, proc.stderr):
            stream.close()


def stats(address: str) -> dict:
    return loadgen.fetch_server_stats(address, "synthetic.stats")
