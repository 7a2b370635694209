"""Pieces of bench/proclets_bench.py: the proclet classes it moves and calls
(workloads), its peers' servers (peers) and the client processes of the continuous
migration run (client)."""
