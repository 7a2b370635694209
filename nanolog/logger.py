"""``nanolog.Logger``: the compiled hot path plus its file, writer thread and lifecycle."""
from __future__ import annotations

import atexit
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

from nanolog._core import LoggerCore
from nanolog.format import MAX_IDS, parse_level
from nanolog.writer import Writer

POLICIES = ("block", "drop")
# A format can take two ids (with and without arguments) and the overflow entry one more;
# every id must stay below the decoders' limit.
_MAX_FORMATS = (MAX_IDS - 2) // 2


@dataclass(frozen=True)
class Statistics:
    """Counters of one logger, as the writer and the staging buffers see them."""
    records: int      # records staged (including ones not written yet)
    bytes: int        # bytes written to files (headers and dictionaries included)
    drops: int        # records dropped because a buffer was full (policy "drop")
    flushes: int      # drains that wrote something
    formats: int      # dictionary entries
    threads: int      # producer threads seen in this process
    rotations: int


class Logger(LoggerCore):
    """A binary logger writing ``path``.

    ``policy``: what a call does when its thread's buffer is full: ``"block"`` (the
    caller drains and writes, nothing is lost) or ``"drop"`` (the record is counted in a
    DROPS chunk). ``max_bytes`` > 0 rotates to ``app.1.nlog``, ``app.2.nlog`` ... keeping
    ``backup_count`` old files. In a forked child the logger continues in its own file,
    ``fork_path`` with ``{stem}``, ``{pid}`` and ``{suffix}`` filled in.
    """

    __slots__ = ("_path", "_writer", "_fork_path", "__weakref__")

    def __init__(self, path, level="DEBUG", *, policy: str = "block",
                 buffer_size: int = 1 << 20, max_bytes: int = 0, backup_count: int = 5,
                 flush_interval: float = 0.2, mode: str = "a",
                 fork_path: str = "{stem}.pid{pid}{suffix}", max_formats: int = 100_000):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
        if mode not in ("a", "w"):
            raise ValueError(f"mode must be 'a' or 'w', not {mode!r}")
        if max_bytes < 0 or backup_count < 0:
            raise ValueError("max_bytes and backup_count must be >= 0")
        if not 0 <= max_formats <= _MAX_FORMATS:
            raise ValueError(f"max_formats must be in 0..{_MAX_FORMATS}")
        self._path = Path(path)
        self._fork_path = fork_path
        self._writer = Writer(self, self._path, mode=mode, max_bytes=max_bytes,
                              backup_count=backup_count, interval=flush_interval)
        self._configure(parse_level(level), buffer_size, policy == "drop", max_formats,
                        self._writer.wake)
        self._writer.start()
        _live.add(self)

    @property
    def path(self) -> Path:
        return self._writer.path

    def set_level(self, level) -> None:
        self._set_level(parse_level(level))

    def flush(self) -> None:
        """Write everything logged so far (by every thread) to the file."""
        self._writer.flush_once()

    def close(self) -> None:
        """Write everything staged and close the file. Later calls raise ValueError."""
        self._close(quiet=False)

    def _close(self, quiet: bool) -> None:
        if self._writer.fd < 0:
            return
        # Refuse new records first, so nothing can be staged after the final drain.
        self._mark_closed(quiet)
        try:
            self._writer.close()
        finally:
            _live.discard(self)

    @property
    def closed(self) -> bool:
        return self._writer.fd < 0

    def statistics(self) -> Statistics:
        records, drops, formats, threads = self._counters()
        w = self._writer
        return Statistics(records=records, bytes=w.bytes, drops=drops, flushes=w.flushes,
                          formats=formats, threads=threads, rotations=w.rotations)

    def __enter__(self) -> "Logger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"level={self.level}"
        return f"<nanolog.Logger {str(self.path)!r} {state}>"

    # Called by the compiled core when a buffer is full under the "block" policy.
    def _make_room(self) -> None:
        if not self._writer.flush_once():
            raise RuntimeError("nanolog buffer full inside a flush of the same thread")

    def _after_fork_child(self) -> None:
        LoggerCore._after_fork_child(self)
        p = self._writer.path
        child = p.with_name(self._fork_path.format(stem=p.stem, pid=os.getpid(),
                                                   suffix=p.suffix))
        self._writer.reopen_in_child(child)
        self._writer.start()


# Every open logger, for the exit flush and the fork hook.
_live: "weakref.WeakSet[Logger]" = weakref.WeakSet()


def _close_all() -> None:
    # At exit: flush and close every logger; daemon threads that still log afterwards
    # have their records dropped silently instead of raising during shutdown.
    for log in list(_live):
        try:
            log._close(quiet=True)
        except Exception:  # one broken logger must not keep the others from flushing
            pass


def _fork_child() -> None:
    for log in list(_live):
        log._after_fork_child()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_fork_child)
