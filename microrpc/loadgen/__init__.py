"""``microrpc bench`` (also ``microrpc.bench``): an open-loop load generator for any
microrpc server.

Requests arrive on a Poisson schedule (piecewise-constant rate, so steps can be run). The
schedule never waits for the server: a request is due at its *intended* send time whatever
happened to earlier ones, and its latency is measured from that intended time (a generator
that waited for replies, or measured from the actual send, would hide exactly the queueing
an overloaded server causes: "coordinated omission"). How late the generator itself was
(actual submit time - intended) is recorded too, and a run whose p99 send lag exceeds
``max_lag_fraction`` x SLO is marked INVALID: the generator, not the server, was the
bottleneck. More processes (``procs``) split the rate and the clients; their tallies are
merged (HdrHistograms added, series summed). Every run is bounded: the schedule ends, then
replies get at most ``drain`` seconds, and whatever is still unanswered counts as a timeout.

The modules, each depending only on those above it:

* ``synthetic``: service-time distributions and the server side (``spin``), no I/O;
* ``result``: the per-process tally, merging, the checked accounting, ``LoadResult``;
* ``engine``: ``LoadSpec``, the Poisson schedule and one generator process's loop;
* ``procs``: several generator processes, each a child interpreter;
* ``runner``: ``run()``, one engine or several processes, merged and judged;
* ``report``: the live progress and the summary table (rich), for the command line.

This package is loaded on first use of ``microrpc.bench`` (it needs hdrhistogram), and
``report`` only by whoever shows a result (it needs rich). See docs/loadgen.md.
"""
from microrpc.loadgen.engine import LoadSpec, PoissonSchedule, schedule_seed
from microrpc.loadgen.result import OUTCOMES, AccountingError, LoadResult
from microrpc.loadgen.runner import fetch_server_stats, run

__all__ = [
    "LoadSpec",
    "PoissonSchedule",
    "schedule_seed",
    "run",
    "fetch_server_stats",
    "AccountingError",
    "LoadResult",
    "OUTCOMES",
]
