"""Operating the sidecar live: decision explanations, self-demotion, config transactions, rotation.

Each module is a pure core (time passed in) with, where it needs one, a thin asyncio driver; ``sidecar.app``
wires them to the running parts.
"""
