"""HTTP/2: a sans-IO connection core over python-hyper's ``h2`` (``connection``), the guards it adds in front
of ``h2`` (``guard``), the h2c prior-knowledge sniffer (``preface``) and gRPC's pure parts (``grpc``)."""
