"""The receiver's reading of a push batch's sequence numbers: one a message, ascending, positive."""

from __future__ import annotations

import pytest

from sidecar.errors import InvalidArgument
from sidecar.messaging.receiver import parse_seqs


def test_sequence_numbers_are_read_one_a_message_in_order() -> None:
    assert parse_seqs("3,7,8", 3) == [3, 7, 8]


@pytest.mark.parametrize(("text", "count"), [("", 1), ("1,2", 3), ("2,1", 2), ("1,1", 2), ("0", 1), ("-4", 1),
                                             ("a", 1), ("1,,2", 2)])
def test_anything_else_is_refused_with_the_rule(text: str, count: int) -> None:
    with pytest.raises(InvalidArgument, match="x-sidecar-seqs"):
        parse_seqs(text, count)
