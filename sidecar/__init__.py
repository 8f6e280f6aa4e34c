"""sidecar: a sidecar proxy for microservices."""

__version__ = "0.1.0"
