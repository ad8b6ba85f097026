"""Content-Type of a file: sniffed from its first bytes, else guessed from its name."""

from __future__ import annotations

import mimetypes

SNIFF_BYTES = 16  # every signature below fits in the first 16 bytes
OCTET_STREAM = "application/octet-stream"


def sniff(head: bytes) -> str | None:
    """The audio type the leading bytes announce, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[:4] == b"fLaC":
        return "audio/flac"
    if head[:4] == b"OggS":
        return "audio/ogg"
    if head[:3] == b"ID3":
        return "audio/mpeg"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # 11 sync bits; layer bits 00 mean an ADTS (AAC) frame, not MPEG audio
        return "audio/aac" if (head[1] >> 1) & 0b11 == 0 else "audio/mpeg"
    return None


def content_type(head: bytes, name: str = "") -> str:
    """Sniffed type, else the name's extension, else ``application/octet-stream``."""
    found = sniff(head)
    if found is not None:
        return found
    if name:
        guessed, _ = mimetypes.guess_type(name, strict=False)
        if guessed is not None:
            return guessed
    return OCTET_STREAM
