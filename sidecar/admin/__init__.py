"""The admin port: readiness, health, views of the mesh, metrics and the operator's controls."""
