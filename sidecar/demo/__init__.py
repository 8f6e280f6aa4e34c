"""``sidecar demo``: a complete local mesh with live traffic (``mesh``), beside small demo services (``app``).

Nothing is imported here, so that ``python -m sidecar.demo.app`` stays free of the demo's terminal view.
"""
