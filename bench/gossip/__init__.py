"""Gossip at scale on the simulated network: `python -m bench.gossip`."""
