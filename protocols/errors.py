"""The error types every protocol shares."""

from __future__ import annotations


class DecodingError(ValueError):
    """Any malformed, oversized or out-of-bounds input from the wire or disk.

    Every parser raises this one type, so a handler has one thing to catch
    before it resets the stream and lowers the peer's score.
    """


class TruncatedError(DecodingError):
    """The stream ended inside a message. No offence: a peer that crashed, or
    whose network went, looks the same on the wire as one that stopped writing."""


class UnsupportedError(DecodingError):
    """Well formed, but asks for what this version does not know (a peer newer
    than us): an error reply, no offence."""


def is_offence(exc: DecodingError) -> bool:
    """Whether a peer's input that failed to decode counts against it (the one
    rule for every protocol): a message cut short or one for a newer version
    does not."""
    return not isinstance(exc, TruncatedError | UnsupportedError)


class ProtocolError(Exception):
    """A peer broke the protocol in a way that is not a decoding problem."""


class NoAnswerError(ProtocolError):
    """The peer's stream ended before its answer: a transport failure, not a refusal."""


class BadBlockError(ProtocolError):
    """A provider sent a block whose bytes do not hash to the CID asked for."""

    def __init__(self, cid: object, peer: object) -> None:
        super().__init__(f"block from {peer} does not match {cid}")
        self.cid = cid
        self.peer = peer


class NotFoundError(Exception):
    """No reachable provider holds the content."""
