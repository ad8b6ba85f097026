"""A small, bounded protobuf reader/writer for the three schemas we speak.

Why not the protobuf runtime: dag-pb has a canonical byte order (links before
data) that generated code does not produce, so CIDs would differ from IPFS's;
and a hand-sized reader lets every malformed input become one DecodingError
with explicit bounds instead of a library-specific exception.
"""

from __future__ import annotations

from collections.abc import Iterator

from protocols.cid import decode_uvarint, encode_uvarint
from protocols.errors import DecodingError

VARINT = 0
I64 = 1
LEN = 2
I32 = 5


def key(field: int, wire_type: int) -> bytes:
    return encode_uvarint((field << 3) | wire_type)


def field_bytes(field: int, value: bytes | memoryview) -> bytes:
    return key(field, LEN) + encode_uvarint(len(value)) + bytes(value)


def field_varint(field: int, value: int) -> bytes:
    return key(field, VARINT) + encode_uvarint(value)


def iter_fields(data: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield (field number, wire type, value) for each field of a message.

    LEN values come back as memoryviews into ``data`` (no copy). Groups and
    unknown wire types are rejected; unknown field numbers are the caller's
    choice to skip.
    """
    view = memoryview(data)
    pos = 0
    end = len(view)
    while pos < end:
        tag, pos = decode_uvarint(view, pos, max_bytes=5)
        field, wire_type = tag >> 3, tag & 7
        if field == 0:
            raise DecodingError("protobuf field number 0")
        if wire_type == VARINT:
            value, pos = decode_uvarint(view, pos, max_bytes=10)
            yield field, wire_type, value
        elif wire_type == LEN:
            length, pos = decode_uvarint(view, pos, max_bytes=5)
            if length > end - pos:
                raise DecodingError("protobuf length runs past the end")
            yield field, wire_type, view[pos : pos + length]
            pos += length
        elif wire_type == I64:
            if pos + 8 > end:
                raise DecodingError("truncated fixed64")
            yield field, wire_type, int.from_bytes(view[pos : pos + 8], "little")
            pos += 8
        elif wire_type == I32:
            if pos + 4 > end:
                raise DecodingError("truncated fixed32")
            yield field, wire_type, int.from_bytes(view[pos : pos + 4], "little")
            pos += 4
        else:
            raise DecodingError(f"unsupported protobuf wire type {wire_type}")


def expect_len(wire_type: int, value: int | memoryview, what: str) -> memoryview:
    if wire_type != LEN or not isinstance(value, memoryview):
        raise DecodingError(f"{what}: expected bytes")
    return value


def expect_varint(wire_type: int, value: int | memoryview, what: str) -> int:
    if wire_type != VARINT or not isinstance(value, int):
        raise DecodingError(f"{what}: expected varint")
    return value
