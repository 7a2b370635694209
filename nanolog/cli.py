"""The ``nanolog`` command: decode, tail and summarise binary log files."""
from __future__ import annotations

import collections
import csv
import datetime as _dt
import io
import json
import os
import re
import sys
import time
import traceback

import click

from nanolog._decode import Decoder
from nanolog.decode import READ_SIZE
from nanolog.errors import DamagedLogError, LogFileError
from nanolog.format import level_name, parse_level
from nanolog.reference import format_text

# Exit codes scripts can rely on.
EXIT_OK = 0
EXIT_DAMAGED = 1      # decoded up to damage or truncation; the rest is reported on stderr
EXIT_USAGE = 2        # click's code for bad options and missing files
EXIT_NOT_A_LOG = 3    # empty, not a nanolog file, or an unsupported format version
EXIT_IO = 4           # the operating system refused (permissions, I/O error)
EXIT_INTERNAL = 5     # not the file's fault: out of memory, or a bug in nanolog

FORMATS = ("text", "json", "csv")  # what `decode` writes; text is the default

EXIT_CODES_HELP = """\b
Exit codes:
  0  every input decoded completely
  1  an input is damaged or truncated: everything before the damage was
     written, and the offset where it starts is printed on stderr
  2  usage error (bad option, missing file)
  3  an input is empty, not a nanolog file, or of an unknown format version
  4  an input could not be read (operating-system error)
  5  decoding failed for a reason that is not the input's (out of
     memory, or a bug in nanolog: NANOLOG_DEBUG=1 shows the traceback)
A reader that stops early (nanolog decode app.nlog | head) ends the
command quietly with 0: what was not read was not checked either.
"""


def _time_arg(value: str | None) -> int | None:
    """``--since``/``--until``: seconds since the epoch, or an ISO date/time (local)."""
    if value is None:
        return None
    try:
        return int(float(value) * 1e9)
    except ValueError:
        pass
    try:
        moment = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither seconds since the epoch nor an "
                                 "ISO date/time such as 2024-05-01T12:00:00") from None
    return int(moment.timestamp() * 1e9)


def _level_arg(value: str | None) -> int:
    if value is None:
        return 0
    try:
        return parse_level(int(value) if value.isdigit() else value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


class _Failures:
    """The worst error across inputs decides the exit code."""

    def __init__(self):
        self.code = EXIT_OK

    def report(self, err: Exception, path=None) -> None:
        if isinstance(err, DamagedLogError):
            code = EXIT_DAMAGED
            click.echo(f"nanolog: {err} (everything before offset {err.offset} was decoded)",
                       err=True)
        elif isinstance(err, LogFileError):
            code = EXIT_NOT_A_LOG
            click.echo(f"nanolog: {err}", err=True)
        elif isinstance(err, OSError):
            code = EXIT_IO
            click.echo(f"nanolog: {err}", err=True)
        else:
            code = EXIT_INTERNAL
            _internal_error(err, path)
        self.code = max(self.code, code)


def _internal_error(err: BaseException, path=None) -> None:
    """Say what went wrong in one line; the traceback only on request (NANOLOG_DEBUG=1)."""
    where = f"{path}: " if path else ""
    if isinstance(err, MemoryError):
        click.echo(f"nanolog: {where}out of memory", err=True)
    else:
        click.echo(f"nanolog: {where}internal error ({type(err).__name__}: {err}); this is "
                   "a bug in nanolog, please report it with the input", err=True)
    if os.environ.get("NANOLOG_DEBUG"):
        traceback.print_exception(err)


class _Group(click.Group):
    """The last safety net: no command ends in a traceback (exit 5 instead)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            _reader_left()
        except Exception as e:
            _internal_error(e)
            sys.exit(EXIT_INTERNAL)


def _reader_left() -> None:
    """``nanolog decode app.nlog | head``: the reader took what it wanted and closed the
    pipe. That is no error of the file's or ours, so exit 0 without a word, as ``head``'s
    user expects (141, the shell's SIGPIPE status, would fail a ``set -o pipefail``
    script). Every command ends here, whatever click version is installed (click < 8.2
    exits 1). stdout is pointed at /dev/null first: Python flushes it at exit, and a
    flush into the closed pipe would print "Exception ignored ... BrokenPipeError"."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    sys.exit(EXIT_OK)


def _records(path, dec: Decoder):
    """Yield a file's records through ``dec``; damage is left in ``dec.damage``."""
    with open(path, "rb") as f:
        while dec.damage is None:
            data = f.read(READ_SIZE)
            if not data:
                break
            dec.feed(data)
            yield from dec.take_records()
    dec.finish()
    yield from dec.take_records()


def _jsonable(value):
    if isinstance(value, (int, float, str, bool)) or value is None:
        if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
            return repr(value)
        return value
    return repr(value)


def _iso(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(sec)) + f".{frac:09d}"


@click.group(cls=_Group, epilog=EXIT_CODES_HELP)
@click.version_option(package_name="microrpc-toolkit", prog_name="nanolog")
def main():
    """Read nanolog binary log files: decode to text, JSON lines or CSV; follow; summarise."""


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "-f", "fmt", type=click.Choice(FORMATS),
              help="Output format (default: text).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines: the same as -f json.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV: the same as -f csv.")
@click.option("--level", "-l", help="Lowest level to show (name or number).")
@click.option("--since", help="Only records at or after this time (epoch seconds or ISO).")
@click.option("--until", help="Only records at or before this time (epoch seconds or ISO).")
@click.option("--grep", "-e", "pattern", help="Only records whose message matches this "
              "regular expression (Python syntax).")
@click.option("--unordered", is_flag=True, help="Keep file order instead of merging threads "
              "into time order (faster; each thread stays in order).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True),
              help="Write here instead of stdout.")
def decode(files, fmt, as_json, as_csv, level, since, until, pattern, unordered, output):
    """Decode FILES (in the order given) to text, JSON lines or CSV."""
    fmt = _output_format(fmt, as_json, as_csv)
    min_level = _level_arg(level)
    t_from, t_to = _time_arg(since), _time_arg(until)
    try:
        regex = re.compile(pattern) if pattern is not None else None
    except re.error as e:
        raise click.BadParameter(f"bad regular expression: {e}", param_hint="--grep") from None
    failures = _Failures()
    try:
        out = open(output, "wb") if output else sys.stdout.buffer
    except OSError as e:
        failures.report(e)
        sys.exit(failures.code)
    try:
        writer = None
        if fmt == "csv":
            text_out = io.TextIOWrapper(out, encoding="utf-8", errors="backslashreplace",
                                        newline="", write_through=True)
            writer = csv.writer(text_out)
            writer.writerow(["time", "level", "thread", "pid", "message", "format", "file",
                             "line"])
        for path in files:
            dec = Decoder(ordered=not unordered, path=path, min_level=min_level,
                          time_from=t_from, time_to=t_to)
            try:
                if fmt == "text" and regex is None:
                    _decode_text(path, dec, out)
                else:
                    for r in _records(path, dec):
                        message = r.message
                        if regex is not None and not regex.search(message):
                            continue
                        if fmt == "text":
                            out.write((format_text(r) + "\n").encode("utf-8", "backslashreplace"))
                        elif fmt == "json":
                            line = json.dumps({
                                "time": _iso(r.time), "time_ns": r.time,
                                "level": r.level_name, "thread": r.thread_name,
                                "thread_id": r.thread, "pid": r.pid, "message": message,
                                "format": r.format, "args": [_jsonable(a) for a in r.args],
                                "file": r.file, "line": r.line}, ensure_ascii=False)
                            out.write(line.encode("utf-8", "backslashreplace") + b"\n")
                        else:
                            writer.writerow([_iso(r.time), r.level_name, r.thread_name, r.pid,
                                             message, r.format, r.file, r.line])
                if dec.damage is not None:
                    failures.report(dec.damage)
            except BrokenPipeError:
                raise  # the reader left: _reader_left(), not a failure of this file
            except Exception as e:  # the file's, the system's, or (exit 5) nanolog's fault
                failures.report(e, path)
            out.flush()
    finally:
        if output:
            out.close()
    sys.exit(failures.code)


def _output_format(fmt: str | None, as_json: bool, as_csv: bool) -> str:
    """One output format from ``-f``, ``--json`` and ``--csv``; two different ones are a
    usage error (not a silent choice of one)."""
    asked = {f for f, on in ((fmt, fmt is not None), ("json", as_json), ("csv", as_csv)) if on}
    if len(asked) > 1:
        raise click.UsageError(f"choose one output format, not {' and '.join(sorted(asked))}")
    return asked.pop() if asked else "text"


def _decode_text(path, dec: Decoder, out) -> None:
    with open(path, "rb") as f:
        while dec.damage is None:
            data = f.read(READ_SIZE)
            if not data:
                break
            dec.feed(data)
            out.write(dec.take_text())
    dec.finish()
    out.write(dec.take_text())


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-n", "--lines", "count", default=10, show_default=True,
              type=click.IntRange(min=0), help="How many of the last records to print.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing records as the file grows "
              "(and continue in a new file when the log is rotated).")
@click.option("--interval", default=0.2, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds between checks for new data with --follow.")
@click.option("--level", "-l", help="Lowest level to show (name or number).")
def tail(file, count, follow, interval, level):
    """Print the last records of FILE; with -f, follow it as it grows."""
    min_level = _level_arg(level)
    failures = _Failures()
    out = sys.stdout.buffer
    dec = Decoder(path=file, min_level=min_level)
    try:
        last = collections.deque(maxlen=count)
        with open(file, "rb") as f:
            try:
                while dec.damage is None:
                    data = f.read(READ_SIZE)
                    if not data:
                        break
                    dec.feed(data)
                    last.extend(dec.take_text().splitlines(keepends=True))
                if not follow:
                    dec.finish()
                else:
                    dec.complete_round()
                last.extend(dec.take_text().splitlines(keepends=True))
            except BrokenPipeError:
                raise  # the reader left: _reader_left()
            except Exception as e:  # the file's, the system's, or (exit 5) nanolog's fault
                failures.report(e, file)
                sys.exit(failures.code)
            out.write(b"".join(last))
            out.flush()
            if not follow:
                if dec.damage is not None:
                    failures.report(dec.damage)
                sys.exit(failures.code)
            _follow(file, f, dec, out, interval, min_level, failures)
    except KeyboardInterrupt:
        sys.exit(failures.code)


def _follow(path, f, dec, out, interval, min_level, failures):
    inode = os.fstat(f.fileno()).st_ino
    while True:
        data = f.read(READ_SIZE)
        if data:
            dec.feed(data)
            out.write(dec.take_text())
            out.flush()
            if dec.damage is not None:
                failures.report(dec.damage)
                sys.exit(failures.code)
            continue
        # Idle: whatever round is pending is as complete as it will get for now.
        dec.complete_round()
        pending = dec.take_text()
        if pending:
            out.write(pending)
            out.flush()
        time.sleep(interval)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue  # between a rotation's rename and the new file's creation
        if st.st_ino != inode or st.st_size < f.tell():
            # Rotated (renamed away and recreated) or truncated: finish what the old file
            # got before it was renamed, then start over in the new one.
            if st.st_ino != inode:
                rest = f.read()
                if rest:
                    dec.feed(rest)
                dec.complete_round()
                out.write(dec.take_text())
                out.flush()
            f.close()
            f = open(path, "rb")
            inode = os.fstat(f.fileno()).st_ino
            dec = Decoder(path=path, min_level=min_level)


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--top", default=0, type=click.IntRange(min=0),
              help="Only the N most frequent formats (0: all).")
def stats(files, top):
    """Records per format string, rates and totals for FILES."""
    failures = _Failures()
    counts: dict = collections.Counter()
    first = last = None
    total = 0
    drops = 0
    threads = set()
    size = 0
    for path in files:
        dec = Decoder(path=path, ordered=False)
        try:
            size += os.path.getsize(path)
            for r in _records(path, dec):
                counts[(r.level, r.format)] += 1
                t = r.time
                first = t if first is None or t < first else first
                last = t if last is None or t > last else last
                threads.add((r.pid, r.thread))
                total += 1
            drops += dec.drops
            if dec.damage is not None:
                failures.report(dec.damage)
        except Exception as e:  # the file's, the system's, or (exit 5) nanolog's fault
            failures.report(e, path)
    span = (last - first) / 1e9 if total > 1 else 0.0
    rows = counts.most_common(top or None)
    headers = ["records", "share", "rate/s", "level", "format"]
    body = [[f"{n}", f"{100 * n / total:.1f}%", f"{n / span:.1f}" if span else "-",
             level_name(lvl), fmt] for (lvl, fmt), n in rows]
    summary = (f"{total} records, {len(counts)} formats, {len(threads)} threads, "
               f"{drops} dropped, {size} bytes ({size / total:.1f} B/record)" if total else
               f"0 records, {drops} dropped, {size} bytes")
    if total > 1:
        summary += f", {span:.3f} s span, {total / span:.1f} records/s" if span else ""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        table = Table(title="nanolog stats", caption=summary)
        for h in headers:
            table.add_column(h, justify="right" if h in ("records", "share", "rate/s") else "left")
        for row in body:
            table.add_row(*row)
        Console().print(table)
    else:
        widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
                  for i, h in enumerate(headers)]
        lines = ["  ".join(h.rjust(w) if i < 3 else h.ljust(w)
                           for i, (h, w) in enumerate(zip(headers, widths))).rstrip()]
        for row in body:
            lines.append("  ".join(c.rjust(w) if i < 3 else c.ljust(w)
                                   for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        lines.append(summary)
        click.echo("\n".join(lines))
    sys.exit(failures.code)


if __name__ == "__main__":
    main(prog_name="nanolog")
