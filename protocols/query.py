"""Query: ``/coliving/query/1.0.0``, small request/response questions to a node.

One request and one response per stream, each a length-prefixed CBOR map of
at most MAX_REQUEST / MAX_RESPONSE bytes, carrying a message id::

    {"id": int, "op": "providers", "cid": <CID bytes>}
        -> {"id": int, "providers": [{"peer": str, "addrs": [str]}]}
    {"id": int, "op": "peers"}  -> {"id": int, "peers": [{"peer": str, "addrs": [str]}]}
    {"id": int, "op": "info"}   -> {"id": int, "peer": str, "addrs": [str], "pins": int,
                                    "blocks": int, "bytes": int}
    {"id": int, "op": "replicate", "cid": <CID bytes>}
        -> {"id": int, "ok": true} once the asked node holds and pinned the CID
           (only staked content nodes may ask, and only an owner of the CID obeys)
    any error                   -> {"id": int, "error": str}

An op or a key this node does not know (a client newer than the node) gets an
error reply (naming the ops it answers); a request that does not parse gets the stream
reset, and counts against the peer (protocols.conduct).
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any, Final

import cbor2

from p2p.abc import Stream
from protocols.cid import CID
from protocols.errors import DecodingError, NoAnswerError, ProtocolError, UnsupportedError
from protocols.wire import FrameReader, cbor_exact, write_frame

PROTOCOL: Final = "/coliving/query/1.0.0"
MAX_REQUEST: Final = 1024
MAX_RESPONSE: Final = 256 * 1024
OPS: Final = ("providers", "peers", "info", "replicate")
_ids = itertools.count(1)

Answer = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
# how long a node may take to answer: a replicate request fetches a whole file
REPLY_TIMEOUT: Final = 10.0


class UnsupportedQuery(UnsupportedError):
    """A well-formed query this node cannot answer: an op or a key it does not know."""

    def __init__(self, msg_id: int, what: str) -> None:
        super().__init__(what)
        self.msg_id = msg_id


def decode_request(data: bytes) -> tuple[int, str, dict[str, Any]]:
    if len(data) > MAX_REQUEST:
        raise DecodingError(f"query over {MAX_REQUEST} bytes")
    obj: Any = cbor_exact(data, "query")
    if not isinstance(obj, dict):
        raise DecodingError("query must be a map")
    msg_id, op = obj.get("id"), obj.get("op")
    if not isinstance(msg_id, int) or isinstance(msg_id, bool) or not 0 <= msg_id < 2**63:
        raise DecodingError("query id must be a non-negative integer")
    if op not in OPS:
        raise UnsupportedQuery(
            msg_id, f"unknown query op {op!r} (this node answers {', '.join(OPS)})"
        )
    args: dict[str, Any] = {}
    if op in ("providers", "replicate"):
        raw = obj.get("cid")
        if not isinstance(raw, bytes):
            raise DecodingError(f"{op} query needs cid bytes")
        args["cid"] = CID.from_bytes(raw)
    if unknown := sorted(map(str, set(obj) - {"id", "op", "cid"})):
        raise UnsupportedQuery(msg_id, f"unknown keys in query: {unknown}")
    return msg_id, str(op), args


async def serve(stream: Stream, answer: Answer) -> None:
    """Answer one query on ``stream``."""
    reader = FrameReader(stream)
    data = await reader.read_frame(MAX_REQUEST)
    if data is None:  # a liveness probe opens a stream and asks nothing: no offence
        await stream.close()
        return
    reply: dict[str, Any]
    try:
        msg_id, op, args = decode_request(data)
    except UnsupportedQuery as exc:
        msg_id, reply = exc.msg_id, {"error": str(exc)}
    else:
        try:
            reply = await answer(op, args)
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
    reply["id"] = msg_id
    await write_frame(stream, cbor2.dumps(reply))
    await stream.close()


async def ask(stream: Stream, op: str, **args: Any) -> dict[str, Any]:
    """Send one query and return the reply map; raises ProtocolError on an error reply."""
    msg_id = next(_ids)
    request: dict[str, Any] = {"id": msg_id, "op": op}
    if "cid" in args:
        request["cid"] = args["cid"].to_bytes()
    await write_frame(stream, cbor2.dumps(request))
    data = await FrameReader(stream).read_frame(MAX_RESPONSE)
    await stream.close()
    if data is None:
        raise NoAnswerError("the node closed the stream without answering")
    reply: Any = cbor_exact(data, "reply")
    if not isinstance(reply, dict) or reply.get("id") != msg_id:
        raise DecodingError("reply does not match the query id")
    if "error" in reply:
        raise ProtocolError(str(reply["error"]))
    return reply
