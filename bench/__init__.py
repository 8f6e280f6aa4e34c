"""Benchmarks: each runs against a real peer and prints ratios (``python -m bench.NAME``)."""
