"""Messaging between services: request-response, brokerless publish-subscribe, streams and dead letters.

Modules: ``envelope`` (the ServiceMessage and request bodies), ``delivery`` (the pure redelivery core:
outcome in, next step out), ``store`` (the durable outbox, topic logs and dead letters in SQLite),
``writer`` (group commit), ``subscriptions`` (the mesh-wide subscription book), ``service`` (the driver:
streams, request-response, the internal delivery receiver) and ``routes`` (the HTTP handlers).
"""
