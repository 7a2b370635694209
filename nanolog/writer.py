"""The background writer: drains the staging buffers and appends chunks to the file.

One lock serialises every drain-and-write, whoever runs it: the writer thread (every
``flush_interval`` or when a buffer is half full), ``Logger.flush``, or a producer whose
buffer is full under the ``block`` policy (it pays for one write instead of losing
records). The drain holds the GIL only while it copies; the write is ``os.write``, which
releases the GIL, so producers keep logging while the bytes go to the kernel.
"""
from __future__ import annotations

import os
import threading
import warnings
import zlib
from pathlib import Path

from nanolog._core import clock_pair
from nanolog.errors import NotANanologFile, UnsupportedVersion
from nanolog.format import (CHUNK_HEADER, CHUNK_TRAILER, FILE_HEADER, K_DROPS, K_RECORDS,
                            K_SESSION, MAGIC, MAX_CHUNK, SESSION, VERSION)


def varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def chunk(kind: int, *parts) -> list:
    """The buffers of one framed chunk (header, payload parts, crc), ready for join."""
    length = sum(len(p) for p in parts)
    if length > MAX_CHUNK:
        raise ValueError(f"chunk of {length} bytes exceeds the {MAX_CHUNK}-byte limit")
    header = CHUNK_HEADER.pack(kind, length)
    crc = zlib.crc32(header)
    for p in parts:
        crc = zlib.crc32(p, crc)
    return [header, *parts, CHUNK_TRAILER.pack(crc)]


def rotated_name(path: Path, index: int) -> Path:
    """``app.nlog`` -> ``app.1.nlog``: the index goes before the suffix."""
    return path.with_name(f"{path.stem}.{index}{path.suffix}")


def check_appendable(fd: int, path: Path) -> int:
    """Size of an existing file, after checking it is a nanolog file we may append to.

    A file whose last writer died in the middle of a write ends in a torn chunk. Appending
    after it would hide everything new behind the damage (a decoder stops there), so the
    torn chunk is made whole first, with a warning: a torn RECORDS chunk keeps the whole
    records a decoder reads from it (``_seal_torn_records``), anything else is cut off.
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    head = os.pread(fd, FILE_HEADER.size, 0)
    if len(head) < FILE_HEADER.size or not head.startswith(MAGIC):
        raise NotANanologFile("refusing to append: not a nanolog file", str(path))
    _, version, _ = FILE_HEADER.unpack(head)
    if version != VERSION:
        raise UnsupportedVersion(f"refusing to append to format version {version} "
                                 f"(this writer writes version {VERSION})", str(path), version)
    end, session_at = _whole_chunks_end(fd, size)
    if end < size:
        sealed = _seal_torn_records(fd, path, end, size, session_at)
        if sealed > end:
            warnings.warn(f"{path}: kept the whole records of a torn chunk at offset {end} "
                          f"and cut the {size + CHUNK_TRAILER.size - sealed} bytes after them (a "
                          "previous writer stopped in the middle of a write)", stacklevel=4)
        else:
            warnings.warn(f"{path}: cut a torn tail of {size - end} bytes at offset {end} "
                          "(a previous writer stopped in the middle of a write)", stacklevel=4)
            os.ftruncate(fd, end)
        size = sealed
    return size


def _whole_chunks_end(fd: int, size: int) -> tuple[int, int | None]:
    """Offset just past the last chunk whose framing fits in the file, and the offset of
    the last SESSION chunk (lengths only: reading every header is cheap, checking every
    CRC would read the whole file)."""
    pos = FILE_HEADER.size
    session_at = None
    with open(fd, "rb", buffering=1 << 20, closefd=False) as f:
        while pos + CHUNK_HEADER.size + CHUNK_TRAILER.size <= size:
            f.seek(pos)
            header = f.read(CHUNK_HEADER.size)
            kind, length = CHUNK_HEADER.unpack(header)
            end = pos + CHUNK_HEADER.size + length + CHUNK_TRAILER.size
            if length > MAX_CHUNK or end > size:
                break
            if kind == K_SESSION:
                session_at = pos
            pos = end
    return pos, session_at


def _seal_torn_records(fd: int, path: Path, torn_at: int, size: int,
                       session_at: int | None) -> int:
    """Make a torn RECORDS chunk at ``torn_at`` whole with the records a decoder keeps
    from it (``docs/nanolog-format.md``, "A torn RECORDS chunk"), so that appending does
    not lose what ``nanolog decode`` would show; return the new end of the file, or
    ``torn_at`` if there is nothing to keep (then the caller cuts the chunk off).

    Which records are whole takes the session's dictionary, so the decoder reads the
    file from its last SESSION chunk: the cost of a crash, paid once by the next writer.
    """
    if session_at is None or os.pread(fd, 1, torn_at) != bytes([K_RECORDS]):
        return torn_at
    from nanolog._decode import Decoder  # only after a crash: the writer never decodes

    dec = Decoder(min_level=1 << 16)  # above every level: check records, build none
    dec.feed(os.pread(fd, FILE_HEADER.size, 0))
    pos = session_at
    while pos < size:
        block = os.pread(fd, min(4 << 20, size - pos), pos)
        if not block:
            break
        dec.feed(block)
        dec.take_records()  # lets the decoder drop the blocks it has checked
        pos += len(block)
    dec.finish()
    if dec.damage is None:
        return torn_at
    stop = dec.damage.offset - FILE_HEADER.size + session_at  # first byte not decoded
    # The payload starts with three varints (thread, round, base time); records follow.
    head = os.pread(fd, 30, torn_at + CHUNK_HEADER.size)
    i = 0
    for _ in range(3):
        while i < len(head) and head[i] & 0x80:
            i += 1
        i += 1
    if stop <= torn_at + CHUNK_HEADER.size + i:  # damage before it, or no whole record
        return torn_at
    # The trailer goes in before the length is made honest: a crash in between leaves a
    # torn chunk again (its length still runs past the end), never a corrupt one.
    payload = os.pread(fd, stop - torn_at - CHUNK_HEADER.size, torn_at + CHUNK_HEADER.size)
    header = CHUNK_HEADER.pack(K_RECORDS, len(payload))
    crc = zlib.crc32(payload, zlib.crc32(header))
    # A descriptor of its own: the writer's is O_APPEND, where pwrite() appends anyway.
    wfd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(wfd, CHUNK_TRAILER.pack(crc), stop)
        os.ftruncate(wfd, stop + CHUNK_TRAILER.size)
        os.pwrite(wfd, header, torn_at)
    finally:
        os.close(wfd)
    return stop + CHUNK_TRAILER.size


class Writer:
    def __init__(self, core, path: Path, *, mode: str, max_bytes: int, backup_count: int,
                 interval: float):
        self.core = core
        self.path = path
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.interval = interval
        self.lock = threading.Lock()
        self.event = threading.Event()
        self.owner = 0
        self.fd = -1
        self.size = 0
        self.bytes = 0
        self.flushes = 0
        self.rotations = 0
        self.stopping = False
        self.thread: threading.Thread | None = None
        self._open(mode, meta_end=0)

    # ---- file handling ---------------------------------------------------------------------

    def _open(self, mode: str, meta_end: int) -> None:
        """Open ``path`` and write a header (if new), a SESSION and the dictionary so far."""
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND  # read: to check the header
        if mode == "w":
            flags |= os.O_TRUNC
        fd = os.open(self.path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            size = check_appendable(fd, self.path)
            parts = [] if size else [FILE_HEADER.pack(MAGIC, VERSION, 0)]
            mono, real = clock_pair()
            parts += chunk(K_SESSION, SESSION.pack(mono, real, os.getpid()))
            for kind, payload in self.core._meta_upto(meta_end):
                parts += chunk(kind, payload)
            data = b"".join(parts)
            self._write(fd, data)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.size = size + len(data)
        self.bytes += len(data)

    @staticmethod
    def _write(fd: int, data) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)  # releases the GIL for the system call
            view = view[n:]

    @staticmethod
    def _writev(fd: int, parts: list) -> None:
        """Write every buffer in order with as few system calls as possible (no join copy)."""
        i = 0
        while i < len(parts):
            group = parts[i:i + 512]  # well under IOV_MAX (1024 on Linux)
            n = os.writev(fd, group)  # releases the GIL for the system call
            for buf in group:
                if n >= len(buf):
                    n -= len(buf)
                    i += 1
                else:
                    parts[i] = memoryview(buf)[n:]
                    break

    def _rotate(self, meta_end: int) -> None:
        os.close(self.fd)
        self.fd = -1
        if self.backup_count > 0:
            oldest = rotated_name(self.path, self.backup_count)
            if oldest.exists():
                oldest.unlink()
            for i in range(self.backup_count - 1, 0, -1):
                src = rotated_name(self.path, i)
                if src.exists():
                    src.rename(rotated_name(self.path, i + 1))
            self.path.rename(rotated_name(self.path, 1))
        else:
            self.path.unlink()
        self.rotations += 1
        self._open("a", meta_end)

    # ---- draining --------------------------------------------------------------------------

    def flush_once(self) -> bool:
        """Drain every buffer and write what was in them. False if this thread is already
        inside a flush (a log call from a signal handler during one): the caller drops."""
        me = threading.get_ident()
        if self.owner == me:
            return False
        with self.lock:
            self.owner = me
            try:
                self._flush_locked()
            finally:
                self.owner = 0
        return True

    def _flush_locked(self) -> None:
        if self.fd < 0:
            raise ValueError("I/O operation on a closed nanolog.Logger")
        rnd, meta_start, meta, block, chunks, drops = self.core._drain()
        if not (meta or chunks or drops):
            return
        parts: list = []
        for kind, payload in meta:
            parts += chunk(kind, payload)
        view = memoryview(block)
        for thread, base, start, end in chunks:
            parts += chunk(K_RECORDS, varint(thread) + varint(rnd) + varint(base),
                           view[start:end])
        for thread, count, ts in drops:
            parts += chunk(K_DROPS, varint(thread) + varint(count) + varint(ts))
        total = sum(len(p) for p in parts)
        if self.max_bytes and self.size + total > self.max_bytes and chunks:
            self._rotate(meta_start)
        self._writev(self.fd, parts)
        self.size += total
        self.bytes += total
        self.flushes += 1

    # ---- the thread --------------------------------------------------------------------------

    def start(self) -> None:
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="nanolog-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            self.event.wait(self.interval)
            self.event.clear()
            if self.stopping:
                break
            try:
                self.flush_once()
            except ValueError:
                break  # closed under us

    def wake(self) -> None:
        self.event.set()

    def stop(self) -> None:
        self.stopping = True
        self.event.set()
        t = self.thread
        if t is not None and t is not threading.current_thread():
            t.join()
        self.thread = None

    def close(self) -> None:
        self.stop()
        try:
            self.flush_once()
        finally:
            with self.lock:
                if self.fd >= 0:
                    os.close(self.fd)
                self.fd = -1

    def reopen_in_child(self, path: Path) -> None:
        """After fork: fresh locks and thread, the child's own file (new session)."""
        self.lock = threading.Lock()
        self.event = threading.Event()
        self.owner = 0
        if self.fd >= 0:
            os.close(self.fd)  # the parent's descriptor: the parent keeps writing it
        self.fd = -1
        self.path = path
        self.bytes = self.flushes = self.rotations = 0
        self.thread = None
        self._open("a", meta_end=0)
