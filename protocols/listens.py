"""Listen batches on gossipsub topic ``/coliving/listens/1``.

A staked discovery node that accepted listens from its clients shares them
with the other discovery nodes in batches. A batch is CBOR, a map with
exactly these keys::

    {"v": 1, "listens": [<listen>, ...]}

and each listen is a map with exactly one of these two key sets::

    signed:    {"user": <user id>, "track": <track id>, "ts": <unix s>,
                "sig": <65 bytes: r || s || v, EIP-191 over chain.listen's text>}
    anonymous: {"id": <16 bytes, chosen by the origin>, "track": <track id>,
                "ts": <unix s>}

Ids and times are integers in [0, 2**63); a batch holds 1 to MAX_LISTENS
listens and is at most MAX_BYTES long, one CBOR item with nothing after it.
Anything else raises :class:`~protocols.errors.DecodingError` (a version
other than 1 raises its subclass UnsupportedError: no offence, a newer peer).

gossipsub's strict signing authenticates the origin of a batch. Receivers
accept a batch only from a staked discovery node, re-verify every signed
listen against the index and trust anonymous ones to that origin
(discovery/listens.py holds that policy; this module only speaks the wire).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import cbor2

from protocols.errors import DecodingError, UnsupportedError
from protocols.wire import cbor_exact

TOPIC: Final = "/coliving/listens/1"
VERSION: Final = 1
MAX_LISTENS: Final = 512
MAX_BYTES: Final = 64 * 1024
SIGNATURE_LEN: Final = 65
ANONYMOUS_ID_LEN: Final = 16
MAX_INT: Final = 2**63 - 1  # ids and times fit a signed 64-bit column

_BATCH_KEYS: Final = frozenset({"v", "listens"})
_SIGNED_KEYS: Final = frozenset({"user", "track", "ts", "sig"})
_ANONYMOUS_KEYS: Final = frozenset({"id", "track", "ts"})


@dataclass(frozen=True, slots=True)
class SignedListen:
    """User ``user_id`` listened to ``track_id`` at ``timestamp``, signed by their wallet."""

    user_id: int
    track_id: int
    timestamp: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class AnonymousListen:
    """Someone listened to ``track_id`` at ``timestamp``; ``listen_id`` is the
    origin node's random name for it (what makes two copies one listen)."""

    listen_id: bytes
    track_id: int
    timestamp: int


Listen = SignedListen | AnonymousListen


@dataclass(frozen=True, slots=True)
class ListenBatch:
    listens: tuple[Listen, ...]


def _check_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INT:
        raise DecodingError(f"{what} must be an integer in [0, 2**63)")
    return value


def _check_bytes(value: object, length: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise DecodingError(f"{what} must be {length} bytes")
    return value


def _listen_obj(listen: Listen) -> dict[str, Any]:
    if isinstance(listen, SignedListen):
        return {
            "user": listen.user_id,
            "track": listen.track_id,
            "ts": listen.timestamp,
            "sig": listen.signature,
        }
    return {"id": listen.listen_id, "track": listen.track_id, "ts": listen.timestamp}


def encode(batch: ListenBatch) -> bytes:
    """The batch's bytes; ValueError if it breaks a bound (the caller's bug)."""
    if not 0 < len(batch.listens) <= MAX_LISTENS:
        raise ValueError(f"a listen batch holds 1 to {MAX_LISTENS} listens")
    try:
        # the same checks as decode: never send what a receiver refuses
        for listen in batch.listens:
            _listen_from_obj(_listen_obj(listen))
    except DecodingError as exc:
        raise ValueError(str(exc)) from None
    data: bytes = cbor2.dumps({"v": VERSION, "listens": [_listen_obj(x) for x in batch.listens]})
    if len(data) > MAX_BYTES:
        raise ValueError("listen batch over the size limit: send fewer listens")
    return data


def _listen_from_obj(obj: object) -> Listen:
    if not isinstance(obj, dict):
        raise DecodingError("each listen must be a map")
    keys = set(obj)
    if keys == _SIGNED_KEYS:
        return SignedListen(
            _check_int(obj["user"], "listen user"),
            _check_int(obj["track"], "listen track"),
            _check_int(obj["ts"], "listen ts"),
            _check_bytes(obj["sig"], SIGNATURE_LEN, "listen sig"),
        )
    if keys == _ANONYMOUS_KEYS:
        return AnonymousListen(
            _check_bytes(obj["id"], ANONYMOUS_ID_LEN, "anonymous listen id"),
            _check_int(obj["track"], "listen track"),
            _check_int(obj["ts"], "listen ts"),
        )
    raise DecodingError(
        "a listen must have keys user, track, ts, sig (signed) or id, track, ts (anonymous)"
    )


def decode(data: bytes) -> ListenBatch:
    """The batch in ``data``; DecodingError for anything but a well-formed one."""
    if len(data) > MAX_BYTES:
        raise DecodingError(f"listen batch of {len(data)} bytes is over {MAX_BYTES}")
    obj: Any = cbor_exact(data, "listen batch")
    if not isinstance(obj, dict) or set(obj) != _BATCH_KEYS:
        raise DecodingError("a listen batch must be a map with keys v, listens")
    version = obj["v"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise DecodingError("listen batch version must be an integer")
    if version != VERSION:
        raise UnsupportedError(f"listen batch version {version} (this node speaks {VERSION})")
    listens = obj["listens"]
    if not isinstance(listens, list) or not 0 < len(listens) <= MAX_LISTENS:
        raise DecodingError(f"listens must be a list of 1 to {MAX_LISTENS}")
    return ListenBatch(tuple(_listen_from_obj(x) for x in listens))
