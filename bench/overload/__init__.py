"""Helpers of bench/overload_bench.py: synthetic server processes, analysis, plot."""
