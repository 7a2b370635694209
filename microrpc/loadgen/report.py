"""How ``microrpc bench`` shows a run: live progress on stderr (only on a terminal) and the
summary table at the end (rich; plain text when the output is not a terminal)."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from microrpc.loadgen.result import OUTCOMES, LoadResult

__all__ = ["live_progress", "result_table", "print_result"]


@contextmanager
def live_progress(total_s: float, enabled: bool | None = None
                  ) -> Iterator[Callable[[dict], None] | None]:
    """A progress callback for :func:`microrpc.loadgen.run`, drawing on stderr, or None when
    stderr is not a terminal (or ``enabled`` is False). Refreshes only when called (no
    refresh thread competing with the generator for the GIL)."""
    console = Console(stderr=True)
    if enabled is None:
        enabled = console.is_terminal
    if not enabled:
        yield None
        return
    progress = Progress(TextColumn("[bold]bench"), BarColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[line]}"), console=console,
                        auto_refresh=False, transient=True)
    task = progress.add_task("run", total=max(total_s, 1e-3), line="starting")

    def update(snap: dict) -> None:
        line = (f"offered {snap['offered']:,}  ok {snap['ok']:,}  "
                f"rejected {snap['rejected']:,}  timeouts {snap['timeout']:,}  "
                f"errors {snap['error']:,}  in flight {snap['pending']:,}")
        progress.update(task, completed=min(snap["elapsed"], total_s), line=line)
        progress.refresh()

    with progress:
        yield update


def _us(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.1f} us"


def result_table(result: LoadResult) -> Table:
    t = result.tally
    status = "VALID" if result.valid else "INVALID"
    table = Table(title=f"microrpc bench: {result.config['address']}  [{status}]",
                  show_header=True, header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("detail")
    table.add_row("offered", f"{t.offered:,}",
                  f"{result.offered_rate:,.0f}/s over {result.measured_s:g} s")
    for name in OUTCOMES:
        table.add_row(f"  {name}", f"{t.counts[name]:,}", f"{100 * result.fraction(name):.3f} %")
    table.add_row("goodput", f"{result.goodput:,.0f}/s",
                  f"ok within the SLO of {_us(t.slo_ns / 1e3)} ({t.good:,})")
    table.add_row("throughput", f"{result.throughput:,.0f}/s", "ok responses")
    for p in (50, 90, 99, 99.9):
        table.add_row(f"latency p{p:g}", _us(result.latency_us(p)),
                      "of ok responses, from the intended send time")
    table.add_row("latency max", _us(t.latency.get_max_value() / 1e3
                                     if t.latency.get_total_count() else None), "")
    table.add_row("reject latency p99", _us(result.reject_latency_us(99)),
                  "time until a reject (server or client side) reached the caller")
    lag = t.send_lag
    table.add_row("send lag p99", _us(lag.get_value_at_percentile(99) / 1e3
                                      if lag.get_total_count() else None),
                  "generator's own delay behind the schedule")
    if t.error_types:
        table.add_row("error types", "", ", ".join(f"{k} {v}" for k, v in
                                                   sorted(t.error_types.items())))
    if t.late_replies:
        table.add_row("late replies", f"{t.late_replies:,}", "after the call timed out")
    for reason in result.invalid_reasons:
        table.add_row("[red]INVALID[/red]", "", reason)
    return table


def print_result(result: LoadResult, file=None) -> None:
    console = Console(file=file or sys.stdout)
    console.print(result_table(result))
