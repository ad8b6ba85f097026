"""Discovery queries: ``/coliving/discovery/1.0.0``, the discovery API over libp2p.

One request and one response per stream, each a length-prefixed CBOR map
(:mod:`protocols.wire`) of at most MAX_REQUEST / MAX_RESPONSE bytes::

    {"id": int, "op": str, "params": {str: value}}
        -> {"id": int, "data": <the op's answer>}
        -> {"id": int, "error": str, "status": int}

``op`` and ``params`` are those of :mod:`discovery.api` (``params`` may be
left out when empty); ``status`` is the HTTP status the same refusal gets
on the gateway's ``/v1`` (400 a bad parameter or an unknown op, 404 no such
user, track or playlist, 500 the node failed). An op or a parameter this
node does not know (a client newer than the node) and a key of the request
map other than these three get an error reply, no offence. A request that
does not parse (not CBOR, not a map, an id that is not an integer in
``[0, 2**63)``, an op that is not a string, params that are not a map with
string keys, over MAX_REQUEST bytes) gets the stream reset and a
DecodingError raised to the node, which counts it against the peer
(protocols.conduct).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import cbor2

from p2p.abc import Stream
from protocols.errors import DecodingError, NoAnswerError, ProtocolError, UnsupportedError
from protocols.wire import FrameReader, cbor_exact, write_frame

PROTOCOL: Final = "/coliving/discovery/1.0.0"
MAX_REQUEST: Final = 4 * 1024
MAX_RESPONSE: Final = 1024 * 1024
REPLY_TIMEOUT: Final = 10.0  # what a client should allow a node to answer in
_KEYS: Final = frozenset({"id", "op", "params"})
_ids = itertools.count(1)

log = logging.getLogger("coliving.discovery")

Answer = Callable[[str, dict[str, Any]], Awaitable[Any]]


class DiscoveryQueryError(ProtocolError):
    """The node answered with an error: ``status`` as on HTTP, and its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class UnsupportedRequest(UnsupportedError):
    """A well-formed request with a key this version does not know."""

    def __init__(self, msg_id: int, what: str) -> None:
        super().__init__(what)
        self.msg_id = msg_id


def encode_request(msg_id: int, op: str, params: dict[str, Any]) -> bytes:
    return cbor2.dumps({"id": msg_id, "op": op, "params": params})


def decode_request(data: bytes) -> tuple[int, str, dict[str, Any]]:
    """``(id, op, params)``; DecodingError for what does not parse,
    UnsupportedRequest for unknown keys of the request map."""
    if len(data) > MAX_REQUEST:
        raise DecodingError(f"discovery request over {MAX_REQUEST} bytes")
    obj: Any = cbor_exact(data, "discovery request")
    if not isinstance(obj, dict):
        raise DecodingError("discovery request must be a map")
    msg_id, op, params = obj.get("id"), obj.get("op"), obj.get("params", {})
    if not isinstance(msg_id, int) or isinstance(msg_id, bool) or not 0 <= msg_id < 2**63:
        raise DecodingError("discovery request id must be a non-negative integer")
    if not isinstance(op, str):
        raise DecodingError("discovery request op must be a string")
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise DecodingError("discovery request params must be a map with string keys")
    if unknown := sorted(map(str, set(obj) - _KEYS)):
        raise UnsupportedRequest(msg_id, f"unknown keys in discovery request: {unknown}")
    return msg_id, op, params


def encode_reply(msg_id: int, reply: dict[str, Any]) -> bytes:
    """The reply's bytes; an answer over MAX_RESPONSE becomes a 500 error reply."""
    data = cbor2.dumps({**reply, "id": msg_id})
    if len(data) > MAX_RESPONSE:
        data = cbor2.dumps(
            {"id": msg_id, "error": f"answer over {MAX_RESPONSE} bytes", "status": 500}
        )
    return data


async def serve(stream: Stream, answer: Answer) -> None:
    """Answer one request on ``stream`` with ``answer(op, params)``: its value
    is the reply's data; an exception with a ``status`` (discovery.api.APIError)
    an error reply with that status; any other a 500."""
    try:
        data = await FrameReader(stream).read_frame(MAX_REQUEST)
        if data is None:  # a liveness probe opens a stream and asks nothing: no offence
            await stream.close()
            return
        msg_id, op, params = decode_request(data)
    except UnsupportedRequest as exc:
        msg_id, reply = exc.msg_id, {"error": str(exc), "status": 400}
    except DecodingError:
        await stream.reset()
        raise
    else:
        try:
            reply = {"data": await answer(op, params)}
        except Exception as exc:
            status = getattr(exc, "status", None)
            if isinstance(status, int) and 400 <= status < 600:
                reply = {"error": str(exc), "status": status}
            else:
                log.exception("discovery %s failed", op)
                reply = {"error": f"internal error: {type(exc).__name__}", "status": 500}
    await write_frame(stream, encode_reply(msg_id, reply))
    await stream.close()


def decode_reply(data: bytes, msg_id: int) -> Any:
    """The data of a reply to request ``msg_id``; DiscoveryQueryError for an
    error reply, DecodingError for one that is not a reply."""
    reply: Any = cbor_exact(data, "discovery reply")
    if not isinstance(reply, dict) or reply.get("id") != msg_id:
        raise DecodingError("discovery reply does not match the request id")
    if "error" in reply:
        status = reply.get("status")
        if not isinstance(status, int) or isinstance(status, bool):
            raise DecodingError("discovery error reply without an integer status")
        raise DiscoveryQueryError(status, str(reply["error"]))
    if "data" not in reply:
        raise DecodingError("discovery reply has neither data nor error")
    return reply["data"]


async def ask(stream: Stream, op: str, params: dict[str, Any] | None = None) -> Any:
    """Send one request on ``stream`` and return the reply's data; raises
    DiscoveryQueryError for an error reply, NoAnswerError when the stream
    ends unanswered, DecodingError for a reply that does not parse."""
    msg_id = next(_ids)
    request = encode_request(msg_id, op, params or {})
    if len(request) > MAX_REQUEST:
        raise ValueError(f"discovery request over {MAX_REQUEST} bytes")
    await write_frame(stream, request)
    data = await FrameReader(stream).read_frame(MAX_RESPONSE)
    await stream.close()
    if data is None:
        raise NoAnswerError("the node closed the stream without answering")
    return decode_reply(data, msg_id)
