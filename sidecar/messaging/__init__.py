"""Messaging between services: request-response, brokerless publish-subscribe, streams and dead letters.

Pure cores: ``envelope`` (the ServiceMessage and request bodies), ``delivery`` (the redelivery core: outcome in,
next step out), ``subscriptions`` (the mesh-wide subscription book), ``scopes`` (topic scopes). Durable state:
``store`` (the outbox, topic logs and dead letters in SQLite) and ``writer`` (group commit). Drivers, one job each,
wired together by ``service`` (see its table): ``context``, ``requests``, ``publisher``, ``streams``, ``courier``,
``reconcile``, ``local_subs``, ``topic_log``, ``readers``, ``receiver``, ``deadletters``. ``routes`` holds the HTTP
handlers.
"""
