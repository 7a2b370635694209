"""Every ```python block in README.md runs as written: as a program of its own, from an
empty directory, to exit 0 within a minute. A block that is only part of a program says so
on its first line, ``# fragment of examples/NAME.py``; it is then checked against that
example (which must exist and be run by test_examples.py) instead of being run."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FRAGMENT = re.compile(r"# fragment of (examples/[\w.-]+\.py)\s*$")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the opening fence, code) of every ```python block."""
    blocks = []
    for m in re.finditer(r"^```python\n(.*?)^```\s*$", text, re.S | re.M):
        blocks.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return blocks


BLOCKS = python_blocks(README.read_text())


def _tested_examples() -> set[str]:
    spec = importlib.util.spec_from_file_location(
        "readme_test_examples", Path(__file__).with_name("test_examples.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return set(mod.EXPECT)


def test_the_readme_has_python_blocks():
    # The microrpc and nanolog sections each show one; an empty list would test nothing.
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("line,code", BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_block_runs_as_written(line, code, tmp_path):
    first = code.splitlines()[0] if code else ""
    marker = FRAGMENT.match(first)
    if marker:
        example = ROOT / marker.group(1)
        assert example.is_file(), f"README.md:{line} names a missing {marker.group(1)}"
        assert example.name in _tested_examples(), f"{example.name} is not run by a test"
        source = example.read_text()
        # A fragment must not drift from its example: every line of it is in there.
        missing = [ln for ln in code.splitlines()[1:]
                   if ln.split("#")[0].strip() and ln.split("#")[0].strip() not in source]
        assert not missing, f"README.md:{line}: not in {example.name}: {missing}"
        return
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"README.md:{line}\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip(), f"README.md:{line} printed nothing"


def test_fragment_marker_is_recognised(tmp_path):
    # The marker the README would use, and how a block is found, on a made-up text.
    text = "x\n```python\n# fragment of examples/echo.py\nprint(1)\n```\n```bash\nls\n```\n"
    [(line, code)] = python_blocks(text)
    assert line == 2 and FRAGMENT.match(code.splitlines()[0]).group(1) == "examples/echo.py"
