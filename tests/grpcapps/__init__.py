"""Apps that speak HTTP/2 for the gRPC and HTTP/2 tests and benchmarks: a gRPC echo service with knobs
(``service``, ``server``), an h2c HTTP/2 app that is not gRPC (``h2app``), and how to start either as a
subprocess (``launch``)."""
