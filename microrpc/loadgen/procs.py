"""Several load-generator processes for one run (``LoadSpec.procs`` > 1).

Each child is ``python -m microrpc.loadgen.procs``, a fresh interpreter (not a fork: the
caller may have threads or a running server, and multiprocessing's spawn would re-import
the caller's ``__main__``). They talk over the child's stdin/stdout, one line per message:

    parent -> child   {"index": i, "spec": {...}}        (JSON)
    child  -> parent  ready <b64 msgpack null>           (connected, sessions built)
    parent -> child   <start time, monotonic ns>         (the same for every child)
    child  -> parent  progress <b64 msgpack dict>        (about every 200 ms)
    child  -> parent  done <b64 msgpack tally>           (Tally.to_wire(), checked)

All children start their schedules at one monotonic instant (CLOCK_MONOTONIC is
system-wide), so their time buckets line up when the tallies are merged.
"""
from __future__ import annotations

import base64
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

import msgpack

import microrpc
from microrpc import _native
from microrpc.loadgen.engine import LoadSpec, make_generator, pin
from microrpc.loadgen.result import Tally

__all__ = ["run_processes"]

_START_DELAY_NS = 100_000_000     # time for the start line to reach every child
_READY_TIMEOUT_S = 60.0
_MAX_LINE = 1 << 30               # a tally line is bounded by the run's request count


def child_cwd() -> str:
    """The working directory for a ``python -m microrpc...`` child: the directory this
    process imported ``microrpc`` from.

    ``python -m`` and ``python -c`` put the child's working directory first on
    ``sys.path``. Started in the caller's directory, a child run from the root of a source
    checkout would import that tree (which has no compiled modules when the package was
    installed from it, not built in place) instead of the package its parent runs. Started
    here, it finds exactly its parent's ``microrpc``: installed, editable or on PYTHONPATH
    alike. Nothing a child is given is a relative path (unix addresses are absolute).
    """
    return os.path.dirname(os.path.dirname(os.path.abspath(microrpc.__file__)))


def _encode(tag: bytes, payload: Any) -> bytes:
    return tag + b" " + base64.b64encode(msgpack.packb(payload)) + b"\n"


def _decode(line: bytes) -> tuple[str, Any]:
    tag, _, data = line.strip().partition(b" ")
    return tag.decode("ascii", "replace"), msgpack.unpackb(base64.b64decode(data),
                                                           strict_map_key=False)


def spec_from_dict(d: dict) -> LoadSpec:
    d = dict(d)
    d["schedule"] = tuple(tuple(seg) for seg in d.get("schedule", ()))
    d["cpus"] = tuple(d.get("cpus", ()))
    if d.get("auth_key") is not None:
        d["auth_key"] = bytes.fromhex(d["auth_key"])
    return LoadSpec(**d)


def _child_main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    msg = json.loads(stdin.readline(1 << 20))
    spec = spec_from_dict(msg["spec"])
    index = int(msg["index"])
    pin(spec, index)

    def progress(snap: dict) -> None:
        stdout.write(_encode(b"progress", snap))
        stdout.flush()

    engine = make_generator(spec, index, progress)
    engine.connect()
    stdout.write(_encode(b"ready", None))
    stdout.flush()
    start_ns = int(stdin.readline(100))
    tally = engine.run(start_ns)
    tally.check(f"process {index}")
    stdout.write(_encode(b"done", tally.to_wire()))
    stdout.flush()


def _reader(index: int, stream: Any, out: queue.Queue) -> None:
    for line in iter(lambda: stream.readline(_MAX_LINE), b""):
        out.put((index, line))
    out.put((index, None))


def run_processes(spec: LoadSpec, progress: Callable[[dict], None] | None) -> list[Tally]:
    """Run ``spec`` in ``spec.procs`` child processes; return their tallies (each checked)."""
    bound = spec.warmup + spec.measured_s + spec.drain + spec.timeout + 60.0
    lines: queue.Queue = queue.Queue()
    children: list[subprocess.Popen] = []
    errs = []
    spec_json = json.dumps(spec.to_wire())
    try:
        for i in range(spec.procs):
            err = tempfile.TemporaryFile()
            errs.append(err)
            p = subprocess.Popen([sys.executable, "-m", "microrpc.loadgen.procs"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                 cwd=child_cwd())
            children.append(p)
            threading.Thread(target=_reader, args=(i, p.stdout, lines), daemon=True).start()
            p.stdin.write(json.dumps({"index": i, "spec": json.loads(spec_json)}).encode() + b"\n")
            p.stdin.flush()

        def failed(i: int, why: str) -> RuntimeError:
            children[i].wait(5.0)
            errs[i].seek(0)
            tail = errs[i].read()[-2000:].decode("utf-8", "replace").strip()
            return RuntimeError(f"generator process {i} {why} (exit code "
                                f"{children[i].returncode}): {tail or 'no error output'}")

        ready: set[int] = set()
        give_up = time.monotonic() + _READY_TIMEOUT_S
        while len(ready) < len(children):
            try:
                i, line = lines.get(timeout=max(give_up - time.monotonic(), 0.01))
            except queue.Empty:
                raise RuntimeError(f"generator processes not ready within "
                                   f"{_READY_TIMEOUT_S:g} s") from None
            if line is None:
                raise failed(i, "exited before it was ready")
            if _decode(line)[0] == "ready":
                ready.add(i)
        start_ns = _native.monotonic_ns() + _START_DELAY_NS
        for p in children:
            p.stdin.write(b"%d\n" % start_ns)
            p.stdin.flush()

        results: dict[int, Tally] = {}
        snaps: dict[int, dict] = {}
        give_up = time.monotonic() + bound
        while len(results) < len(children):
            try:
                i, line = lines.get(timeout=max(give_up - time.monotonic(), 0.01))
            except queue.Empty:
                raise RuntimeError(f"generator processes did not finish within {bound:.0f} s") \
                    from None
            if line is None:
                if i not in results:
                    raise failed(i, "exited without a result")
                continue
            tag, payload = _decode(line)
            if tag == "done":
                results[i] = Tally.from_wire(payload)
            elif tag == "progress" and progress is not None:
                snaps[i] = payload
                total = {k: sum(s[k] for s in snaps.values()) for k in payload}
                total["elapsed"] = max(s["elapsed"] for s in snaps.values())
                progress(total)
        for i, p in enumerate(children):
            if p.wait(10.0) != 0:
                raise failed(i, "failed after its result")
        return [results[i] for i in range(len(children))]
    finally:
        for p in children:
            if p.poll() is None:
                p.kill()          # only our own children, by handle
                p.wait(5.0)
            for s in (p.stdin, p.stdout):
                try:
                    s.close()
                except OSError:
                    pass
        for err in errs:
            err.close()


if __name__ == "__main__":
    _child_main()
