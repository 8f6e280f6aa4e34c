"""The one error class of ``sidecar.http2.hpack``: a header block that is malformed or over a limit.

Both classes derive from python-hyper's ``hpack`` exceptions so that ``h2``, which catches those, treats them as
it treats its own codec's (a COMPRESSION_ERROR, or a refused oversized header list). This module stays plain
Python: a compiled class cannot derive from an interpreted one.
"""

from __future__ import annotations

from hpack.exceptions import HPACKDecodingError, OversizedHeaderListError


class HeaderBlockError(HPACKDecodingError):
    """A malformed header block: the connection's HPACK state is lost, so it ends with COMPRESSION_ERROR."""


class HeaderListTooLarge(HeaderBlockError, OversizedHeaderListError):
    """The decoded header list is over ``max_header_list_size`` (RFC 7541 sizes): an HPACK bomb, or too big."""
