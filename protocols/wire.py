"""Length-prefixed framing over a byte stream, with a hard size bound.

A frame is ``uvarint(len) || payload``. Reading a frame larger than the
caller's bound raises DecodingError before any of the payload is buffered.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

from p2p.abc import Stream, StreamError
from protocols.cid import encode_uvarint
from protocols.errors import DecodingError, TruncatedError

READ_CHUNK = 1 << 20


def frame(payload: bytes) -> bytes:
    return encode_uvarint(len(payload)) + payload


class FrameReader:
    """Buffered frame reader; reads the stream in large slices for throughput.

    A frame that spans several reads is joined once, and the read that
    completes it asks for no more than the frame still lacks, so a large
    frame usually comes out of that one join with no further copy (a growing
    bytearray would copy it twice and touch fresh pages as it grows).
    """

    __slots__ = ("_buf", "_eof", "_pos", "stream")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._buf = b""
        self._pos = 0
        self._eof = False

    async def _fill(self, need: int) -> bool:
        """Ensure ``need`` unread bytes are buffered; False on clean EOF before any."""
        have = len(self._buf) - self._pos
        if have >= need:
            return True
        if self._eof:
            return False
        parts: list[bytes | memoryview] = [memoryview(self._buf)[self._pos :]] if have else []
        while have < need:
            # the first read of a frame takes a big slice; the one that ends it, no more
            chunk = await self.stream.read(need - have if have else max(READ_CHUNK, need))
            if not chunk:
                self._eof = True
                break
            parts.append(chunk)
            have += len(chunk)
        if len(parts) == 1 and isinstance(parts[0], bytes):
            self._buf = parts[0]
        else:
            self._buf = b"".join(parts)
        self._pos = 0
        return have >= need

    async def read_frame(self, max_size: int) -> bytes | None:
        """The next frame, or None at a clean end of stream between frames."""
        length = 0
        shift = 0
        for i in range(10):
            if not await self._fill(1):
                if i == 0:
                    return None
                raise TruncatedError("stream ended inside a length prefix")
            byte = self._buf[self._pos]
            self._pos += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        else:
            raise DecodingError("length prefix too long")
        if length > max_size:
            raise DecodingError(f"frame of {length} bytes exceeds the {max_size} byte limit")
        if not await self._fill(length):
            raise TruncatedError(f"stream ended inside a {length} byte frame")
        return self._take(length)

    def _take(self, n: int) -> bytes:
        if self._pos == 0 and n == len(self._buf):
            out = self._buf  # the buffer is exactly this frame: no copy
            self._buf = b""
            return out
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    async def read_exact(self, n: int) -> bytes:
        if not await self._fill(n):
            raise TruncatedError(f"stream ended {n} bytes short")
        return self._take(n)


async def write_frame(stream: Stream, payload: bytes) -> None:
    await stream.write(frame(payload))


__all__ = ["DecodingError", "FrameReader", "StreamError", "TruncatedError", "frame", "write_frame"]


def cbor_exact(data: bytes, what: str) -> Any:
    """One CBOR item that is the whole of ``data`` (DecodingError otherwise).

    cbor2.loads stops after the first item and ignores what follows, so two
    different byte strings would be one message; a wire message has no room
    for bytes after it.
    """
    buf = io.BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(buf).decode()
    except Exception as exc:  # cbor2 raises several types on garbage
        raise DecodingError(f"{what} is not CBOR: {exc}") from None
    if buf.tell() != len(data):
        raise DecodingError(f"{what} has {len(data) - buf.tell()} bytes after its CBOR item")
    return obj
