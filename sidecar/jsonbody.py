"""A request body as JSON: the one parse every JSON API route makes, and the errors it gives."""

from __future__ import annotations

import json
from typing import Any

from sidecar.errors import InvalidArgument


def json_body(raw: bytes, shape: str) -> Any:
    """``raw`` parsed as JSON; InvalidArgument when it is empty (``shape`` names what is required: "a JSON object")
    or not JSON."""
    if not raw:
        raise InvalidArgument(f"request body is empty; {shape} is required")
    try:
        return json.loads(raw)
    # ValueError covers JSONDecodeError, UnicodeDecodeError and an integer of more than 4300 digits
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"request body is not valid JSON: {e}") from None
