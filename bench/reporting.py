"""What every benchmark suite prints the same way: the console, tables whose cells are never
cut, a spread of repetitions in one short cell, and the summary a suite ends with.

The summary is also how bench/run.py learns how a suite went: when the environment names a
file in SUMMARY_FILE_ENV, the suite writes its summary lines there too. A suite that exits
without writing it did not get as far as its report.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from rich import box
from rich.console import Console, ConsoleOptions
from rich.table import Table
from rich.text import Text

SUMMARY_FILE_ENV = "BENCH_SUMMARY_FILE"
# Piped to a file or a CI log, with no COLUMNS to go by: wide enough that the suites' widest
# tables keep one line per row.
PIPED_WIDTH = 170


def make_console() -> Console:
    """COLUMNS wins when set (so `COLUMNS=80` shows what an 80-column terminal gets, piped or
    not); else a terminal's own width; else PIPED_WIDTH, without colour."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return Console(width=int(columns))
    console = Console()
    if not console.is_terminal:
        console = Console(width=PIPED_WIDTH)
    return console


class _WordTable(Table):
    """A rich Table that keeps each column at least as wide as the longest word of its
    header and cells when every column can have that: rich then wraps a cell between words
    ("Client + / callback") rather than inside one ("callba / ck"). When they cannot all
    have it, no column keeps a minimum and rich folds inside words: a minimum it cannot
    meet pushes the table past the terminal's edge, where the terminal cuts it."""

    def add_row(self, *cells: Any, **kwargs: Any) -> None:
        for column, cell in zip(self.columns, cells):
            if isinstance(cell, str):
                column.min_width = max(column.min_width or 0, _longest_word(cell))
        super().add_row(*cells, **kwargs)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Any:
        # One space of padding each side of a cell (the default), plus the borders.
        needed = sum((c.min_width or 0) + 2 for c in self.columns) + self._extra_width
        if needed > options.max_width:
            for column in self.columns:
                column.min_width = None
        yield from super().__rich_console__(console, options)


def _longest_word(markup: str) -> int:
    return max((len(word) for word in Text.from_markup(markup).plain.split()), default=0)


def table(title: str, columns: Iterable[str], *, legend: str | None = None, left: int = 1,
          plain: bool = False) -> Table:
    """A table whose every column folds a long cell onto more lines instead of cutting it
    with an ellipsis; the first ``left`` columns are labels (left-aligned), the rest figures.
    ``legend`` goes under the table: what is better, against which peer."""
    t = _WordTable(title=title, caption=legend, caption_justify="left", title_justify="left",
                   box=box.ASCII if plain else box.SIMPLE_HEAD)
    for i, name in enumerate(columns):
        t.add_column(name, justify="left" if i < left else "right", overflow="fold",
                     min_width=_longest_word(name))
    return t


def fmt_spread(s: dict | None, digits: int | None = 1, scale: float = 1.0,
               missing: str = "-") -> str:
    """A spread over repetitions ({"min", "median", "max"}) as "median (min..max)", or the
    median alone when every repetition agreed. Parentheses, not brackets: rich reads
    "[min..max]" as markup and drops it. ``digits=None``: as many decimals as a figure of
    that size needs to show three significant digits, and none from 100 up."""
    if not s:
        return missing
    if digits is None:
        size = abs(s["median"] * scale)
        digits = 0 if size >= 100 else 1 if size >= 10 else 2

    def f(v: float) -> str:
        return f"{v * scale:,.{digits}f}"

    med = f(s["median"])
    lo, hi = f(s["min"]), f(s["max"])
    if lo != hi:
        return f"{med} ({lo}..{hi})"
    return med


@dataclass
class Target:
    """One target of a suite: ``met`` is None when this run could not measure it; ``why``
    says what was measured against what bar (or why nothing was)."""
    name: str
    met: bool | None
    why: str = ""


def summary_lines(suite: str, runs_total: int, invalid: list[tuple[str, str]],
                  targets: list[Target], note: str = "") -> list[str]:
    """The suite's last words: a head line (runs valid / total, targets met / total, which
    runs were INVALID, any ``note``), then one line per INVALID run and per target not met
    or not measured, with its reason. ``invalid`` holds (run name, reason) pairs."""
    valid = runs_total - len(invalid)
    measured = [t for t in targets if t.met is not None]
    met = sum(1 for t in measured if t.met)
    head = f"{suite}: runs valid {valid}/{runs_total}"
    if invalid:
        head += f" (INVALID: {', '.join(name for name, _ in invalid)})"
    head += f"; targets met {met}/{len(measured)}"
    if len(measured) < len(targets):
        head += f", {len(targets) - len(measured)} not measured"
    if note:
        head += f"; {note}"
    lines = [head]
    lines += [f"  INVALID {name}: {why}" for name, why in invalid]
    lines += [f"  NOT MET {t.name}: {t.why}" for t in measured if not t.met]
    lines += [f"  not measured {t.name}: {t.why}" for t in targets if t.met is None]
    return lines


def emit_summary(console: Console, lines: list[str]) -> None:
    """Prints the summary and, under bench/run.py, hands it over (see SUMMARY_FILE_ENV)."""
    for line in lines:
        console.print(line, markup=False, highlight=False)
    path = os.environ.get(SUMMARY_FILE_ENV)
    if path:
        try:
            Path(path).write_text("\n".join(lines) + "\n")
        except OSError as exc:
            print(f"could not write the summary to {path}: {exc}", file=sys.stderr)
