"""The gateway's ``/v1``: the discovery API over HTTP, in the Audius API's shape.

Each route names one :mod:`discovery.api` operation; the path gives ``id``
(or ``handle``), the query string the rest (``limit``, ``offset``,
``query``; trending's ``time`` is week, month or allTime and ``genre``).
``app_name``, which Audius clients send on every call, is accepted and
ignored; any other query parameter the operation does not take is a 400
naming it. Answers are JSON ``{"data": ..., "latest_indexed_block",
"latest_chain_block"}``; refusals ``{"error": message, "status": n}`` with
the API's status (400, 404), 413 for a listen body over MAX_BODY bytes, 429
(with ``Retry-After``) for a client over its listen rate. A node without
the discovery role answers every ``/v1`` path 404.

=================================== ===================== =========
route                               op                    method
=================================== ===================== =========
/v1/users/search?query=             search_users          GET
/v1/users/handle/{handle}           user_by_handle        GET
/v1/users/wallet/{wallet}           user_by_wallet        GET
/v1/users/{id}                      user                  GET
/v1/users/{id}/tracks               user_tracks           GET
/v1/users/{id}/playlists            user_playlists        GET
/v1/users/{id}/reposts              user_reposts          GET
/v1/users/{id}/followers            followers             GET
/v1/users/{id}/following            following             GET
/v1/users/{id}/feed                 feed                  GET
/v1/tracks/search?query=            search_tracks         GET
/v1/tracks/trending?time=&genre=    trending              GET
/v1/tracks/{id}                     track                 GET
/v1/tracks/{id}/reposts             track_reposters       GET
/v1/tracks/{id}/favorites           track_savers          GET
/v1/tracks/{id}/stream              stream (302 /ipfs/…)  GET
/v1/tracks/{id}/listen              listens.report        POST
/v1/playlists/search?query=         search_playlists      GET
/v1/playlists/{id}                  playlist              GET
/v1/playlists/{id}/tracks           playlist_tracks       GET
/v1/playlists/{id}/reposts          playlist_reposters    GET
/v1/playlists/{id}/favorites        playlist_savers       GET
=================================== ===================== =========

(HEAD is answered wherever GET is.)
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import parse_qsl, unquote

from discovery.api import APIError, BadRequest, parse_id
from discovery.listens import ListenRejected, RateLimited

if TYPE_CHECKING:
    from discovery.service import DiscoveryService

log = logging.getLogger("coliving.gateway")

PREFIX: Final = "/v1/"
MAX_BODY: Final = 4096  # a listen is a few hundred bytes
IGNORED: Final = frozenset({"app_name"})  # Audius clients name themselves on every call
TIMES: Final = {"week": "week", "month": "month", "allTime": "all"}

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Headers = list[tuple[bytes, bytes]]

_USER_LISTS: Final = {
    "tracks": "user_tracks",
    "playlists": "user_playlists",
    "reposts": "user_reposts",
    "followers": "followers",
    "following": "following",
    "feed": "feed",
}
_TRACK_LISTS: Final = {"reposts": "track_reposters", "favorites": "track_savers"}
_PLAYLIST_LISTS: Final = {
    "tracks": "playlist_tracks",
    "reposts": "playlist_reposters",
    "favorites": "playlist_savers",
}
_SEARCHES: Final = {
    "users": "search_users",
    "tracks": "search_tracks",
    "playlists": "search_playlists",
}


class Request(Protocol):
    method: str
    path: str
    query: bytes
    headers: dict[str, str]
    client: str


class Reply(Protocol):
    async def whole(
        self, status: int, body: bytes, content_type: str, extra: Headers | None = None
    ) -> None: ...

    async def error(self, status: int, message: str, extra: Headers | None = None) -> None: ...


class TooLarge(Exception):
    """The request body is over MAX_BODY bytes."""


CORS: Final[Headers] = [(b"access-control-allow-origin", b"*")]


def route(path: str) -> tuple[str, dict[str, Any]] | None:
    """The op a ``/v1`` path names and the parameters its path carries, or None.

    ``listen`` is the one op not of discovery.api (listens.report)."""
    parts = [unquote(p) for p in path[len(PREFIX) :].split("/")]
    if parts and parts[-1] == "" and len(parts) > 1:
        parts.pop()  # a trailing slash
    match parts:
        case [("users" | "tracks" | "playlists") as kind, "search"]:
            return _SEARCHES[kind], {}
        case ["tracks", "trending"]:
            return "trending", {}
        case ["users", "handle", handle] if handle:
            return "user_by_handle", {"handle": handle}
        case ["users", "wallet", wallet] if wallet:
            return "user_by_wallet", {"wallet": wallet}
        case ["users", item_id]:
            return "user", {"id": item_id}
        case ["users", item_id, sub] if sub in _USER_LISTS:
            return _USER_LISTS[sub], {"id": item_id}
        case ["tracks", item_id]:
            return "track", {"id": item_id}
        case ["tracks", item_id, "stream"]:
            return "stream", {"id": item_id}
        case ["tracks", item_id, "listen"]:
            return "listen", {"id": item_id}
        case ["tracks", item_id, sub] if sub in _TRACK_LISTS:
            return _TRACK_LISTS[sub], {"id": item_id}
        case ["playlists", item_id]:
            return "playlist", {"id": item_id}
        case ["playlists", item_id, sub] if sub in _PLAYLIST_LISTS:
            return _PLAYLIST_LISTS[sub], {"id": item_id}
    return None


def query_params(op: str, query: bytes, from_path: dict[str, Any]) -> dict[str, Any]:
    """The API parameters of a query string (BadRequest for one given twice,
    one the path already gives, or trending's ``time`` out of its three)."""
    try:
        pairs = parse_qsl(query.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise BadRequest("the query string is not UTF-8") from None
    params: dict[str, Any] = {}
    for name, value in pairs:
        if name in IGNORED:
            continue
        if name in params:
            raise BadRequest(f"{name} given twice")
        params[name] = value
    # the API's own names for what HTTP carries in the path or as ``time``
    # are not query parameters here
    clash = sorted(k for k in params if k in from_path or (op == "trending" and k == "window"))
    if clash:
        raise BadRequest(f"unknown parameters for {op}: {', '.join(clash)}")
    if op == "trending" and "time" in params:
        time = params.pop("time")
        if time not in TIMES:
            raise BadRequest(f"time must be one of {', '.join(TIMES)}")
        params["window"] = TIMES[time]
    if op == "trending" and params.get("genre") == "":
        del params["genre"]  # ``?genre=`` from a form: all genres
    return {**params, **from_path}


async def read_body(receive: Receive, declared: str | None, limit: int = MAX_BODY) -> bytes:
    """The request body, at most ``limit`` bytes (TooLarge otherwise)."""
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise TooLarge
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        if len(body) > limit:
            raise TooLarge
        if not message.get("more_body", False):
            break
    return body


def _json(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


async def handle(
    discovery: DiscoveryService | None, request: Request, receive: Receive, reply: Reply
) -> None:
    """Answer one request under ``/v1/``."""
    if discovery is None:
        await reply.error(404, "this node does not run the discovery role", CORS)
        return
    found = route(request.path)
    if found is None:
        await reply.error(404, f"no such route: {request.path}", CORS)
        return
    op, from_path = found
    allowed = "POST" if op == "listen" else "GET, HEAD"
    if request.method not in allowed.split(", "):
        await reply.error(405, f"only {allowed} here", [(b"allow", allowed.encode()), *CORS])
        return
    try:
        if op == "listen":
            await _listen(discovery, request, receive, reply, from_path["id"])
            return
        params = query_params(op, request.query, from_path)
        data = await discovery.api.call(op, params)
    except APIError as exc:
        await reply.error(exc.status, exc.message, CORS)
        return
    except Exception:
        log.exception("/v1 %s failed", op)
        await reply.error(500, "internal error", CORS)
        return
    if op == "stream":
        location = data["path"].encode()
        await reply.whole(
            302,
            _json({"data": data}),
            "application/json",
            [(b"location", location), (b"cache-control", b"no-store"), *CORS],
        )
        return
    status = discovery.api.status()
    envelope = {
        "data": data,
        "latest_indexed_block": status.get("latest_indexed_block"),
        "latest_chain_block": status.get("latest_chain_block"),
    }
    await reply.whole(200, _json(envelope), "application/json", CORS)


async def _listen(
    discovery: DiscoveryService, request: Request, receive: Receive, reply: Reply, raw_id: str
) -> None:
    track_id = parse_id(raw_id)
    try:
        raw = await read_body(receive, request.headers.get("content-length"))
    except TooLarge:
        await reply.error(413, f"a listen is at most {MAX_BODY} bytes", CORS)
        return
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("a listen is a JSON object")
    if "track_id" not in body:
        body["track_id"] = track_id
    elif body["track_id"] != track_id or isinstance(body["track_id"], bool):
        raise BadRequest(f"the body's track_id is not the path's ({track_id})")
    try:
        result = await discovery.listens.report(body, request.client)
    except ListenRejected as exc:
        raise BadRequest(str(exc)) from None
    except RateLimited as exc:
        wait = str(max(1, math.ceil(exc.retry_after))).encode()
        await reply.error(429, str(exc), [(b"retry-after", wait), *CORS])
        return
    await reply.whole(200, _json({"data": result}), "application/json", CORS)
