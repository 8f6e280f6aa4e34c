"""Benchmark of the proxy engine against HAProxy on the same nginx backend (``python -m bench.proxy``)."""
