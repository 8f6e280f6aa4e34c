"""The embedded DNS responder: service and node names of the catalog under ``dns.domain``.

``answerer``  the pure core: query + catalog snapshot → DnsReply | Forward | Drop (no I/O, no clock);
              with the forwarder, the only modules that carry dnspython's messages (loaded with the first query)
``outcomes``  the answerer's outcomes and settings, without dnspython
``wire``      the few raw-bytes operations of the hot path (question key, ID patch, header-only replies)
``cache``     wire-format responses by question and by exact query bytes, per catalog version
``ratelimit`` per-client token buckets, time passed in
``forwarder`` names outside the domain → ``dns.upstreams`` (UDP, TCP on truncation, failover)
``server``    the asyncio driver: UDP and TCP on one port (``DnsServer``)
``counters``  what the responder did since start, for ``/metrics``
"""
