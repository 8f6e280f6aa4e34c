"""The service catalog: local registrations, their health checks, and the mesh-wide view."""
