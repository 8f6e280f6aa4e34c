"""Mesh policy on top of the generic proxy engine: which service a request names, who may call whom."""
