"""HTTP ``Range`` and conditional headers (RFC 9110 sections 13 and 14), for one known size.

Decisions, each allowed by RFC 9110:

* A single range (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``) is answered 206
  when satisfiable, 416 with ``Content-Range: bytes */size`` when not (first
  byte at or past the end, a zero suffix, any range of an empty file).
* A Range field we cannot parse (bad syntax, ``last < first``, a unit other
  than ``bytes``) is ignored: 200 with the whole representation. Section 14.2
  says a server MAY ignore Range and MUST ignore an unknown unit; ignoring is
  also what a client that sent garbage can always cope with, where a 400
  would break playback for no gain.
* A multi-range request (``bytes=0-1,5-6``) is ignored too (200, full body):
  section 14.2 allows it, and multipart/byteranges buys nothing for streaming.
* ``If-Range`` with anything but our strong ETag (a date, another tag) makes
  us ignore Range, as section 13.1.5 requires.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# a position needs no more digits than a 64-bit size
_SPEC = re.compile(r"^\s*(\d{0,19})\s*-\s*(\d{0,19})\s*$")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """A satisfiable range: bytes ``start`` up to but not including ``end``."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


class Unsatisfiable(Exception):
    """The Range was valid but selects nothing of a representation this size (416)."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range ``header`` asks for, or None to send the whole body.

    Raises :class:`Unsatisfiable` for a well-formed range outside ``size``.
    """
    if header is None:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parts = spec.split(",")
    if len(parts) != 1:
        return None  # multi-range (or a trailing comma): served whole, see above
    match = _SPEC.match(parts[0])
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return ByteRange(max(0, size - n), size)
    start = int(first)
    if last:
        stop = int(last)
        if stop < start:
            return None  # invalid range-spec: ignored like any syntax error
        if start >= size:
            raise Unsatisfiable
        return ByteRange(start, min(stop, size - 1) + 1)
    if start >= size:
        raise Unsatisfiable
    return ByteRange(start, size)


def _tags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def none_match(header: str | None, etag: str) -> bool:
    """``If-None-Match`` matches ``etag`` (weak comparison, section 13.1.2)."""
    if header is None:
        return False
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in _tags(header))


def if_range_allows(header: str | None, etag: str) -> bool:
    """Whether to honour Range given ``If-Range`` (strong comparison only)."""
    return header is None or header.strip() == etag
