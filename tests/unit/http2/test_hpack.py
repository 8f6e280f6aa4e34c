"""sidecar.http2.hpack against RFC 7541: every Appendix C example byte for byte (decoded, and encoded where
the example's choices are the encoder's), the dynamic table's evictions, and the limits."""

from __future__ import annotations

import pytest
from hpack.struct import NeverIndexedHeaderTuple

from sidecar.http2.hpack import Decoder, Encoder, encode_integer
from sidecar.http2.hpack_errors import HeaderBlockError, HeaderListTooLarge
from sidecar.http2.huffman import huffman_decode, huffman_encode

H = list[tuple[bytes, bytes]]

REQ1: H = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com")]
REQ2: H = [*REQ1, (b"cache-control", b"no-cache")]
REQ3: H = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"),
           (b":authority", b"www.example.com"), (b"custom-key", b"custom-value")]
DATE1 = (b"date", b"Mon, 21 Oct 2013 20:13:21 GMT")
LOCATION = (b"location", b"https://www.example.com")
RESP1: H = [(b":status", b"302"), (b"cache-control", b"private"), DATE1, LOCATION]
RESP2: H = [(b":status", b"307"), (b"cache-control", b"private"), DATE1, LOCATION]
RESP3: H = [(b":status", b"200"), (b"cache-control", b"private"), (b"date", b"Mon, 21 Oct 2013 20:13:22 GMT"),
            LOCATION, (b"content-encoding", b"gzip"),
            (b"set-cookie", b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")]

# (section, headers, block in hex, dynamic table afterwards, newest first)
C3 = [
    ("C.3.1", REQ1, "828684410f7777772e6578616d706c652e636f6d", [REQ1[3]]),
    ("C.3.2", REQ2, "828684be58086e6f2d6361636865", [REQ2[4], REQ1[3]]),
    ("C.3.3", REQ3, "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565", [REQ3[4], REQ2[4], REQ1[3]]),
]
C4 = [
    ("C.4.1", REQ1, "828684418cf1e3c2e5f23a6ba0ab90f4ff", [REQ1[3]]),
    ("C.4.2", REQ2, "828684be5886a8eb10649cbf", [REQ2[4], REQ1[3]]),
    ("C.4.3", REQ3, "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf", [REQ3[4], REQ2[4], REQ1[3]]),
]
C5 = [
    ("C.5.1", RESP1, "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d54"
                     "6e1768747470733a2f2f7777772e6578616d706c652e636f6d", [LOCATION, DATE1, RESP1[1], RESP1[0]]),
    ("C.5.2", RESP2, "4803333037c1c0bf", [RESP2[0], LOCATION, DATE1, RESP1[1]]),
    ("C.5.3", RESP3, "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738666f6f"
                     "3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630303b207665"
                     "7273696f6e3d31", [RESP3[5], RESP3[4], RESP3[2]]),
]
C6 = [
    ("C.6.1", RESP1, "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b"
                     "97c8e9ae82ae43d3", [LOCATION, DATE1, RESP1[1], RESP1[0]]),
    ("C.6.2", RESP2, "4883640effc1c0bf", [RESP2[0], LOCATION, DATE1, RESP1[1]]),
    ("C.6.3", RESP3, "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335df"
                     "dfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
     [RESP3[5], RESP3[4], RESP3[2]]),
]
SERIES = [(C3, 4096, False), (C4, 4096, True), (C5, 256, False), (C6, 256, True)]


def table(decoder: Decoder) -> H:
    return list(reversed(decoder._entries))


@pytest.mark.parametrize(("examples", "size", "huffman"), SERIES, ids=["C.3", "C.4", "C.5", "C.6"])
def test_appendix_c_blocks_decode_to_their_headers_and_tables(examples: list[tuple[str, H, str, H]], size: int,
                                                              huffman: bool) -> None:
    decoder = Decoder()
    decoder.header_table_size = size
    for section, headers, block, after in examples:
        assert decoder.decode(bytes.fromhex(block), raw=True) == headers, section
        assert table(decoder) == after, section
        assert decoder._size == sum(len(n) + len(v) + 32 for n, v in after), section


@pytest.mark.parametrize(("examples", "size", "huffman"), SERIES, ids=["C.3", "C.4", "C.5", "C.6"])
def test_appendix_c_headers_encode_to_the_exact_blocks(examples: list[tuple[str, H, str, H]], size: int,
                                                       huffman: bool) -> None:
    """The examples index every literal, so the encoder is built without its list of unindexed fields."""
    encoder = Encoder(table_size=size, not_indexed=frozenset())
    for section, headers, block, _ in examples:
        assert encoder.encode(headers, huffman=huffman).hex() == block, section


def test_appendix_c2_field_representations() -> None:
    # C.2.1 literal with indexing, C.2.2 without indexing, C.2.3 never indexed, C.2.4 indexed
    decoder = Decoder()
    custom = bytes.fromhex("400a637573746f6d2d6b65790d637573746f6d2d686561646572")
    assert decoder.decode(custom, raw=True) == [(b"custom-key", b"custom-header")]
    assert table(decoder) == [(b"custom-key", b"custom-header")] and decoder._size == 55
    decoder = Decoder()
    assert decoder.decode(bytes.fromhex("040c2f73616d706c652f70617468"), raw=True) == [(b":path", b"/sample/path")]
    assert table(decoder) == []
    decoder = Decoder()
    [secret] = decoder.decode(bytes.fromhex("100870617373776f726406736563726574"), raw=True)
    assert secret == (b"password", b"secret") and isinstance(secret, NeverIndexedHeaderTuple)
    assert table(decoder) == []
    assert Decoder().decode(b"\x82", raw=True) == [(b":method", b"GET")]
    # and the encoder writes the never-indexed form for a sensitive field, leaving its table alone
    encoder = Encoder()
    assert encoder.encode([(b"password", b"secret", True)], huffman=False).hex() == "100870617373776f726406736563726574"
    assert encoder.encode([NeverIndexedHeaderTuple(b"password", b"secret")], huffman=False)[0] == 0x10
    assert encoder._entries == []


def test_appendix_c1_integers() -> None:
    assert encode_integer(10, 5, 0) == b"\x0a"
    assert encode_integer(1337, 5, 0) == bytes([31, 154, 10])
    assert encode_integer(42, 8, 0) == b"\x2a"


def test_huffman_round_trips_every_octet_and_rejects_bad_padding() -> None:
    data = bytes(range(256))
    assert huffman_decode(huffman_encode(data)) == data
    assert huffman_encode(b"www.example.com").hex() == "f1e3c2e5f23a6ba0ab90f4ff"
    with pytest.raises(HeaderBlockError, match="padding"):
        huffman_decode(bytes.fromhex("f1e3c2e5f23a6ba0ab90f4ff") + b"\xff")  # over 7 bits of padding
    with pytest.raises(HeaderBlockError, match="padding"):
        huffman_decode(b"\x00")  # '0' (00000) then padding 000, not the EOS prefix
    with pytest.raises(HeaderBlockError, match="EOS"):
        huffman_decode(b"\xff\xff\xff\xff")  # EOS itself (30 ones)


def test_size_updates_evict_and_are_bounded_by_our_setting() -> None:
    decoder = Decoder()
    decoder.decode(bytes.fromhex("828684410f7777772e6578616d706c652e636f6d"), raw=True)
    assert decoder._size == 57
    decoder.decode(b"\x20", raw=True)  # size update to 0 empties the table
    assert table(decoder) == [] and decoder.header_table_size == 0
    with pytest.raises(HeaderBlockError, match="invalid table index 62"):
        decoder.decode(b"\xbe", raw=True)
    decoder.max_allowed_table_size = 100
    with pytest.raises(HeaderBlockError, match="over the 100 allowed"):
        decoder.decode(encode_integer(101, 5, 0x20), raw=True)
    with pytest.raises(HeaderBlockError, match="after a header field"):
        decoder.decode(b"\x82\x20", raw=True)


def test_our_lower_setting_must_be_acknowledged_by_a_size_update() -> None:
    decoder = Decoder()
    decoder.max_allowed_table_size = 1024  # our SETTINGS lowered it: the peer's next block must say so
    with pytest.raises(HeaderBlockError, match="did not shrink"):
        decoder.decode(b"\x82", raw=True)
    assert decoder.decode(encode_integer(1024, 5, 0x20) + b"\x82", raw=True) == [(b":method", b"GET")]


def test_encoder_signals_the_peers_table_size_and_evicts() -> None:
    encoder, decoder = Encoder(), Decoder()
    headers = [(b"x-name-%d" % i, b"v" * 40) for i in range(200)]
    assert decoder.decode(encoder.encode(headers), raw=True) == headers  # 200 x 81 octets: evicts most
    assert encoder._size <= 4096 and len(encoder._entries) == len(decoder._entries)
    encoder.header_table_size = 0
    encoder.header_table_size = 512
    block = encoder.encode(headers[-3:])
    assert block[:1] == b"\x20" and block[1:4] == encode_integer(512, 5, 0x20)  # the minimum, then the final
    decoder.max_allowed_table_size = 4096
    assert decoder.decode(block, raw=True) == headers[-3:]
    assert decoder.header_table_size == 512 and decoder._entries == encoder._entries


def test_an_hpack_bomb_stops_at_the_header_list_limit() -> None:
    """One 4 KB entry referenced over and over: the decoded list would be huge, the block is tiny."""
    decoder = Decoder(max_header_list_size=65536)
    big = b"\x40\x01x" + encode_integer(4000, 7, 0) + b"v" * 4000
    block = big + b"\xbe" * 10000
    with pytest.raises(HeaderListTooLarge):
        decoder.decode(block, raw=True)


@pytest.mark.parametrize("block", [
    b"\x80",  # index 0
    b"\xff\x80\x80\x80\x80\x80\x01",  # an integer of more than 5 continuation octets
    b"\xff",  # a truncated integer
    b"\x40\x05abc",  # a name longer than the block
    b"\x40",  # a literal without its name
    b"\x44\x83\xff\xff\xff",  # a Huffman value holding EOS
    bytes([0x80 | 62]),  # a dynamic index with an empty table
])
def test_malformed_blocks_raise_the_one_error_class(block: bytes) -> None:
    with pytest.raises(HeaderBlockError):
        Decoder().decode(block, raw=True)


def test_str_headers_encode_and_decode_as_text() -> None:
    encoder, decoder = Encoder(), Decoder()
    block = encoder.encode([(":method", "GET"), ("x-é", "ü")])
    assert decoder.decode(block) == [(":method", "GET"), ("x-é", "ü")]
    with pytest.raises(HeaderBlockError, match="UTF-8"):
        Decoder().decode(b"\x00\x01x\x01\xff")


def test_values_new_on_every_request_go_as_plain_literals_outside_the_cache() -> None:
    encoder, decoder = Encoder(), Decoder()
    traceparent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    headers = [(b":status", b"200"), (b"traceparent", traceparent), (b"x-request-id", b"9e3f" * 9),
               (b"content-type", b"application/grpc")]
    block = encoder.encode(headers)
    assert decoder.decode(block, raw=True) == headers
    # not indexed, name from the table, value's length without the Huffman bit, then its octets as they are
    assert encode_integer(len(traceparent), 7, 0) + traceparent in block
    assert traceparent not in encoder._strings and b"9e3f" * 9 not in encoder._strings
    assert b"application/grpc" in encoder._strings   # a value that comes again is Huffman-coded once and kept


def test_a_not_indexed_name_enters_the_table_once_and_later_fields_refer_to_it() -> None:
    encoder, decoder = Encoder(), Decoder()
    first = [(b"x-request-id", b"a" * 36), (b"content-length", b"100")]
    second = [(b"x-request-id", b"b" * 36), (b"content-length", b"7")]
    assert decoder.decode(encoder.encode(first), raw=True) == first
    assert encoder._entries == [(b"x-request-id", b"a" * 36)]   # content-length's name is in the static table
    block = encoder.encode(second)
    assert decoder.decode(block, raw=True) == second and len(encoder._entries) == 1
    # without indexing, the name by its index (62: the newest dynamic entry), the value as it is
    assert block.startswith(bytes([0x0F, 62 - 15, 36]) + b"b" * 36)
