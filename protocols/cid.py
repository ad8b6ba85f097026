"""Content identifiers: CIDv1 (and CIDv0 on input) with sha2-256 multihashes.

Only what the network needs: the two codecs UnixFS files use (``raw`` for
leaves, ``dag-pb`` for inner nodes) and the sha2-256 hash. Anything else is
rejected with :class:`DecodingError` rather than half-supported, so a block is
never accepted under a hash we do not check.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Final

from protocols.errors import DecodingError

RAW: Final = 0x55
DAG_PB: Final = 0x70
SHA2_256: Final = 0x12
_DIGEST_LEN: Final = 32
_CODECS: Final = {RAW: "raw", DAG_PB: "dag-pb"}
_B58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
MAX_CID_BYTES: Final = 64


def encode_uvarint(value: int) -> bytes:
    """Unsigned LEB128, as multiformats and protobuf use it."""
    if value < 0:
        raise ValueError("uvarint cannot encode a negative number")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_uvarint(
    data: bytes | memoryview, offset: int = 0, *, max_bytes: int = 9
) -> tuple[int, int]:
    """Decode a uvarint at ``offset``; return (value, offset after it)."""
    if offset < len(data) and data[offset] < 0x80:
        return data[offset], offset + 1  # one byte: most tags and lengths, always minimal
    value = 0
    shift = 0
    for i in range(max_bytes):
        pos = offset + i
        if pos >= len(data):
            raise DecodingError("truncated varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise DecodingError("varint is not minimally encoded")
            return value, pos + 1
        shift += 7
    raise DecodingError(f"varint longer than {max_bytes} bytes")


@dataclass(frozen=True, slots=True)
class CID:
    """A CIDv1 over sha2-256. ``codec`` is RAW or DAG_PB."""

    codec: int
    digest: bytes

    def __post_init__(self) -> None:
        if self.codec not in _CODECS:
            raise DecodingError(f"unsupported codec 0x{self.codec:x}")
        if len(self.digest) != _DIGEST_LEN:
            raise DecodingError("sha2-256 digest must be 32 bytes")

    @classmethod
    def for_block(cls, codec: int, data: bytes | memoryview) -> CID:
        return cls(codec, hashlib.sha256(data).digest())

    def matches(self, data: bytes | memoryview) -> bool:
        """True when ``data`` hashes to this CID: the check before every store."""
        return hashlib.sha256(data).digest() == self.digest

    @property
    def codec_name(self) -> str:
        return _CODECS[self.codec]

    @property
    def multihash(self) -> bytes:
        return bytes((SHA2_256, _DIGEST_LEN)) + self.digest

    def to_bytes(self) -> bytes:
        return b"\x01" + encode_uvarint(self.codec) + self.multihash

    def prefix(self) -> bytes:
        """Bitswap 1.1 block prefix: version, codec, hash function, digest length."""
        return b"\x01" + encode_uvarint(self.codec) + bytes((SHA2_256, _DIGEST_LEN))

    def __str__(self) -> str:
        return "b" + base64.b32encode(self.to_bytes()).decode("ascii").lower().rstrip("=")

    def __repr__(self) -> str:
        return f"CID({self})"

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> CID:
        data = bytes(data)
        if len(data) > MAX_CID_BYTES:
            raise DecodingError("CID too long")
        if len(data) == 34 and data[0] == SHA2_256 and data[1] == _DIGEST_LEN:
            return cls(DAG_PB, data[2:])  # CIDv0: a bare multihash
        version, pos = decode_uvarint(data)
        if version != 1:
            raise DecodingError(f"unsupported CID version {version}")
        codec, pos = decode_uvarint(data, pos)
        hash_fn, pos = decode_uvarint(data, pos)
        length, pos = decode_uvarint(data, pos)
        if hash_fn != SHA2_256:
            raise DecodingError(f"unsupported multihash 0x{hash_fn:x}")
        if length != _DIGEST_LEN or len(data) - pos != _DIGEST_LEN:
            raise DecodingError("bad digest length")
        return cls(codec, data[pos:])

    @classmethod
    def from_prefix(cls, prefix: bytes, data: bytes | memoryview) -> CID:
        """Rebuild a CID from a Bitswap block prefix by hashing ``data``."""
        return cls.for_block(cls.codec_of_prefix(prefix), data)

    @staticmethod
    def codec_of_prefix(prefix: bytes) -> int:
        """The codec a Bitswap block prefix names (checking the rest of it)."""
        version, pos = decode_uvarint(prefix)
        codec, pos = decode_uvarint(prefix, pos)
        hash_fn, pos = decode_uvarint(prefix, pos)
        length, pos = decode_uvarint(prefix, pos)
        if version == 0:
            codec = DAG_PB
        elif version != 1:
            raise DecodingError(f"unsupported CID version {version}")
        if hash_fn != SHA2_256 or length != _DIGEST_LEN:
            raise DecodingError("unsupported block prefix hash")
        if codec not in _CODECS:
            raise DecodingError(f"unsupported codec 0x{codec:x}")
        return codec

    @classmethod
    def parse(cls, text: str) -> CID:
        """Parse a CID string: base32 CIDv1 (``b...``) or base58 CIDv0 (``Qm...``)."""
        text = text.strip()
        if not text or len(text) > 128:
            raise DecodingError("not a CID")
        if text.startswith("Qm") and len(text) == 46:
            return cls.from_bytes(_b58decode(text))
        if text[0] not in "bB":
            raise DecodingError("only base32 CIDv1 (b...) and CIDv0 (Qm...) are supported")
        body = text[1:].upper()
        try:
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        except ValueError as exc:
            raise DecodingError(f"bad base32 in CID: {exc}") from None
        return cls.from_bytes(raw)


def _b58decode(text: str) -> bytes:
    num = 0
    for char in text:
        index = _B58_ALPHABET.find(char)
        if index < 0:
            raise DecodingError("bad base58 in CID")
        num = num * 58 + index
    raw = num.to_bytes((num.bit_length() + 7) // 8, "big")
    pad = len(text) - len(text.lstrip("1"))
    return b"\x00" * pad + raw
