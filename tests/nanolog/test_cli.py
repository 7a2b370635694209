"""Golden-file tests of the ``nanolog`` command line (timestamps, pids and paths masked).

Regenerate the expected files after an intended change with
``NANOLOG_UPDATE_GOLDEN=1 pytest tests/nanolog/test_cli.py`` and review the diff.
"""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanolog.format import FILE_HEADER, MAGIC

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("NANOLOG_UPDATE_GOLDEN") == "1"

# The program that writes the sample log: fixed content, one thread, so only times and
# pids differ between runs.
WRITER = """
import sys, nanolog
with nanolog.Logger(sys.argv[1]) as log:
    log.info("server listening on %s:%d", "127.0.0.1", 8080)
    for i in range(3):
        log.debug("request %d from %s took %.1f us", i, "10.0.0.%d" % i, 12.5 + i)
    log.flush()  # two write blocks, so a damaged tail still leaves records to decode
    log.warning("slow request %d: %.3f ms (limit %d ms)", 7, 25.25, 20)
    log.error("failed: %r", ValueError("bad input"))
    log.info("payload %s, flags %s/%s, missing %s", b"\\x00\\x01", True, False, None)
    log.critical("shutting down, 100%% done")
    log.info("unicode: %s", "na\\u00efve caf\\u00e9 \\u2713")
"""


def _mask(text: str, tmp: Path) -> str:
    text = text.replace(str(tmp), "<tmp>")
    text = re.sub(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d\.\d{9}", "<time>", text)
    text = re.sub(r'"time_ns": \d+', '"time_ns": <ns>', text)
    text = re.sub(r'"(pid|thread_id)": \d+', r'"\1": <id>', text)
    text = re.sub(r"(?m)^(<time>,\w+,\w+,)\d+,", r"\1<pid>,", text)
    # Byte counts and offsets depend on varint-coded timestamps; test_decode.py checks
    # the offsets exactly, the golden files check the messages.
    text = re.sub(r"offset \d+", "offset <n>", text)
    text = re.sub(r"needs \d+ bytes, the file has \d+ left", "needs <n> bytes, the file has <n> left", text)
    text = re.sub(r"\d+ bytes \(", "<n> bytes (", text)
    if text.startswith("$ nanolog stats"):
        text = re.sub(r"\d+\.\d+", "<dec>", text)  # shares, rates and spans vary
        text = re.sub(r" +", " ", text)  # ... and so do the column widths
    return text


def nanolog_cli(args, cwd):
    # Run from tmp (not the repository root, whose nanolog/ would shadow the installed one).
    return subprocess.run([sys.executable, "-m", "nanolog.cli", *args], cwd=cwd,
                          capture_output=True, timeout=60,
                          env={**os.environ, "TZ": "UTC", "COLUMNS": "120"})


def check(name: str, args, tmp: Path):
    proc = nanolog_cli(args, tmp)
    got = (f"$ nanolog {' '.join(args)}\n--- stdout\n{proc.stdout.decode()}"
           f"--- stderr\n{proc.stderr.decode()}--- exit {proc.returncode}\n")
    got = _mask(got, tmp)
    path = GOLDEN / f"{name}.txt"
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"no golden file {path.name}; run with NANOLOG_UPDATE_GOLDEN=1")
        path.write_bytes(got.encode())
    assert got == path.read_bytes().decode()
    return proc


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    good = tmp / "app.nlog"
    proc = subprocess.run([sys.executable, "-c", WRITER, str(good)], cwd=tmp,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = good.read_bytes()
    (tmp / "empty.nlog").write_bytes(b"")
    (tmp / "truncated.nlog").write_bytes(data[:-10])
    corrupt = bytearray(data)
    corrupt[len(data) - 30] ^= 0xFF          # inside the last RECORDS chunk
    (tmp / "corrupt.nlog").write_bytes(bytes(corrupt))
    (tmp / "foreign.log").write_text("2024-05-01 12:00:00 INFO hello\n")
    (tmp / "future.nlog").write_bytes(FILE_HEADER.pack(MAGIC, 2, 0) + data[FILE_HEADER.size:])
    return tmp


CASES = {
    "decode_text": ["decode", "app.nlog"],
    "decode_json": ["decode", "--format", "json", "app.nlog"],
    "decode_csv": ["decode", "-f", "csv", "app.nlog"],
    "decode_level": ["decode", "--level", "WARNING", "app.nlog"],
    "decode_grep": ["decode", "--grep", r"request \d from", "app.nlog"],
    "decode_until_epoch": ["decode", "--until", "0", "app.nlog"],
    "stats_plain": ["stats", "app.nlog"],
    "tail_2": ["tail", "-n", "2", "app.nlog"],
    "error_empty": ["decode", "empty.nlog"],
    "error_truncated": ["decode", "truncated.nlog"],
    "error_corrupt": ["decode", "corrupt.nlog"],
    "error_foreign": ["decode", "foreign.log"],
    "error_future_version": ["decode", "future.nlog"],
    "error_missing": ["decode", "missing.nlog"],
    "error_bad_level": ["decode", "--level", "LOUD", "app.nlog"],
    "stats_truncated": ["stats", "truncated.nlog"],
    "tail_corrupt": ["tail", "corrupt.nlog"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(logs, name):
    check(name, CASES[name], logs)


def test_exit_codes(logs):
    codes = {n: nanolog_cli(a, logs).returncode for n, a in CASES.items() if n.startswith("error")}
    assert codes == {"error_empty": 3, "error_truncated": 1, "error_corrupt": 1,
                     "error_foreign": 3, "error_future_version": 3, "error_missing": 2,
                     "error_bad_level": 2}


def test_output_file_and_several_inputs(logs):
    proc = nanolog_cli(["decode", "-o", "out.txt", "app.nlog", "truncated.nlog"], logs)
    assert proc.returncode == 1 and proc.stdout == b""
    lines = (logs / "out.txt").read_text().splitlines()
    assert len(lines) > 10 and "truncated" in proc.stderr.decode()


@pytest.mark.parametrize("command", ["decode", "tail", "stats"])
def test_every_command_has_help(command, logs):
    proc = nanolog_cli([command, "--help"], logs)
    assert proc.returncode == 0 and b"Usage: " in proc.stdout and b"Exit codes" in proc.stdout


def _readline(proc, timeout):
    """One line of the child's stdout, failing (not hanging) after ``timeout`` seconds."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            pytest.fail(f"no complete line from tail -f within {timeout} s (got {buf!r})")
        chunk = os.read(proc.stdout.fileno(), 1)
        if not chunk:
            pytest.fail(f"tail -f exited early (got {buf!r})")
        buf += chunk
    return buf


def test_tail_follow_prints_new_records(tmp_path):
    path = tmp_path / "live.nlog"
    import nanolog
    log = nanolog.Logger(path, flush_interval=0.05)
    log.info("before %d", 0)
    log.flush()
    proc = subprocess.Popen([sys.executable, "-m", "nanolog.cli", "tail", "-f", "--interval",
                             "0.02", str(path)], cwd=tmp_path, stdout=subprocess.PIPE)
    try:
        assert b"before 0" in _readline(proc, 30)
        for i in range(1, 4):
            log.info("live %d", i)
            log.flush()
            line = _readline(proc, 30)
            assert line.endswith(f"live {i}\n".encode()), line
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()


# --- a reader that leaves early (`nanolog decode app.nlog | head -1`) ----------------------

@pytest.fixture(scope="module")
def big_log(tmp_path_factory):
    """Distinct formats, so that every command's output (stats too) is several times a
    pipe's 64 KiB buffer: the command is still writing when the reader leaves."""
    path = tmp_path_factory.mktemp("pipe") / "big.nlog"
    import nanolog
    with nanolog.Logger(path, mode="w") as log:
        for i in range(3000):
            log.info(f"format {i:04d} with argument %d and some padding text", i)
    return path


@pytest.mark.parametrize("args", [
    ["decode", "-f", "json"], ["decode", "--json"], ["decode"], ["decode", "--csv"],
    ["decode", "--grep", "format"], ["tail", "-n", "3000"], ["stats"],
], ids=" ".join)
def test_closed_pipe_ends_quietly_with_0(big_log, args):
    proc = subprocess.Popen([sys.executable, "-m", "nanolog.cli", *args, str(big_log)],
                            cwd=big_log.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = _readline(proc, 30)
        proc.stdout.close()  # what `head -1` does after its line
        assert proc.wait(timeout=60) == 0
        assert proc.stderr.read() == b""
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert first.strip()


def test_tail_follow_ends_quietly_when_its_reader_leaves(tmp_path):
    path = tmp_path / "live.nlog"
    import nanolog
    log = nanolog.Logger(path, flush_interval=0.05)
    log.info("before %d", 0)
    log.flush()
    proc = subprocess.Popen([sys.executable, "-m", "nanolog.cli", "tail", "-f", "--interval",
                             "0.02", str(path)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert b"before 0" in _readline(proc, 30)
        proc.stdout.close()
        # tail -f notices only when it next writes: keep logging until it has (bounded).
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            log.info("after %d", 1)
            log.flush()
            try:
                proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        assert proc.returncode == 0
        assert proc.stderr.read() == b""
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()


def test_json_and_csv_flags_are_the_format_option(logs):
    for flag, fmt in (("--json", "json"), ("--csv", "csv")):
        by_flag = nanolog_cli(["decode", flag, "app.nlog"], logs)
        by_option = nanolog_cli(["decode", "-f", fmt, "app.nlog"], logs)
        assert by_flag.returncode == 0 and by_flag.stdout.count(b"\n") >= 9
        assert by_flag.stdout == by_option.stdout
    both = nanolog_cli(["decode", "--json", "-f", "csv", "app.nlog"], logs)
    assert both.returncode == 2 and b"choose one output format" in both.stderr
    same = nanolog_cli(["decode", "--json", "-f", "json", "app.nlog"], logs)
    assert same.returncode == 0
    help_text = nanolog_cli(["decode", "--help"], logs).stdout
    assert b"--json" in help_text and b"--csv" in help_text
