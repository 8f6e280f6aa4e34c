"""What the hypothesis searches share: a settings profile and corpus-based mutation.

``make test`` runs a short, derandomized search (the same inputs every run, so a failure reproduces);
``SIDECAR_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/fuzz`` runs a longer random campaign.
A campaign's failure is saved by hand as ``corpus/<target>/finding-*`` and fixed, so it is replayed forever.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.fuzz.targets import corpus

_CAMPAIGN = int(os.environ.get("SIDECAR_FUZZ_EXAMPLES", "0"))


def fuzz_settings(examples: int) -> settings:
    """``examples`` inputs per search in ``make test``; the campaign's count when one is running."""
    return settings(
        max_examples=_CAMPAIGN or examples,
        derandomize=not _CAMPAIGN,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@st.composite
def mutated(draw: st.DrawFn, target: str, max_noise: int = 64) -> bytes:
    """A seed of ``target``'s corpus with a few edits: bytes flipped, cut, spliced, repeated or inserted."""
    seeds = corpus(target)
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.integers(0, 5))
        at = draw(st.integers(0, len(data)))
        if edit == 0 and data:  # flip one byte
            at = min(at, len(data) - 1)
            data[at] = draw(st.integers(0, 255))
        elif edit == 1:  # cut the tail
            del data[at:]
        elif edit == 2:  # insert noise
            data[at:at] = draw(st.binary(max_size=max_noise))
        elif edit == 3:  # splice another seed's tail
            other = draw(st.sampled_from(seeds))
            data[at:] = other[draw(st.integers(0, len(other))):]
        elif edit == 4 and data:  # repeat a slice
            end = draw(st.integers(at, min(len(data), at + max_noise)))
            data[at:at] = data[at:end] * draw(st.integers(1, 8))
        else:  # delete a slice
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


def inputs(target: str, max_noise: int = 64) -> st.SearchStrategy[bytes]:
    """Pure noise or a mutated seed."""
    return st.one_of(st.binary(max_size=512), mutated(target, max_noise))
