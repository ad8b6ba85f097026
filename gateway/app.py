"""The gateway's ASGI application: content by CID, the player, pins, health, metrics.

Routes (GET and HEAD, and POST on ``/v1/tracks/{id}/listen`` and under
``/identity/``; any other method is 405):

``/ipfs/{cid}``     the file, ``Cache-Control: immutable`` (a CID never changes)
``/content/{cid}``  the same, plus ``Content-Disposition`` with the pin's name
``/``, ``/player``  the web player (gateway/player.html)
``/api/pins``       JSON list of this node's pins: cid, name, size, pinned_at
``/health``         signed JSON (see :mod:`gateway.health`)
``/metrics``        Prometheus text (see :mod:`gateway.metrics`)
``/v1/...``         the discovery API in the Audius shape, on a discovery node
                    (users, tracks, playlists, search, trending, feed, stream,
                    listens: the route table is in :mod:`gateway.v1`)
``/identity/...``   hedgehog accounts and the gas relay in the Audius identity
                    service's shape, on an identity node (GET, POST and OPTIONS:
                    the route table is in :mod:`gateway.identity`)

Content answers: 400 for a string that is not a CID, 404 when no holder is
known, 502 when holders were found and none delivered verified blocks, 504
when the first byte did not come within ``first_byte_timeout``. Range
handling is in :mod:`gateway.ranges`. The status is decided before any byte
is sent (the headers wait for the first chunk); a failure after that aborts
the connection, so a client sees a short body against its Content-Length,
never a hang: each later chunk must come within ``stall_timeout``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import trio

from gateway import health, identity, v1
from gateway.metrics import CONTENT_TYPE as METRICS_TYPE
from gateway.metrics import GatewayMetrics
from gateway.ranges import ByteRange, Unsatisfiable, if_range_allows, none_match, parse_range
from gateway.source import ContentError, FileInfo, Source
from protocols.cid import CID
from protocols.errors import DecodingError

if TYPE_CHECKING:
    from node import Node

log = logging.getLogger("coliving.gateway")

Message = dict[str, Any]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

IMMUTABLE = "public, max-age=29030400, immutable"


@dataclass(frozen=True)
class Timeouts:
    first_byte: float = 30.0
    stall: float = 30.0


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One answered request, kept in ``GatewayApp.recent`` for tests and operators."""

    method: str
    path: str
    range: str | None
    status: int
    bytes: int
    seconds: float


class StreamAborted(Exception):
    """The body broke off after the headers went out: the connection is dropped."""


class _Request:
    __slots__ = ("client", "headers", "method", "path", "query", "started")

    def __init__(self, scope: Scope) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query: bytes = scope.get("query_string", b"")
        peer = scope.get("client")  # (host, port), or None on a Unix socket
        self.client: str = str(peer[0]) if peer else "unknown"
        self.headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            # repeated fields join with commas (RFC 9110 5.3): two Ranges become a multi-range
            self.headers[name] = f"{self.headers[name]},{value}" if name in self.headers else value
        self.started = time.perf_counter()

    @property
    def head(self) -> bool:
        return self.method == "HEAD"


class _Reply:
    """Wraps ASGI ``send``: remembers the status and counts body bytes."""

    def __init__(self, send: Send, head: bool) -> None:
        self._send = send
        self.head = head
        self.status = 0
        self.bytes = 0

    async def start(self, status: int, headers: Headers) -> None:
        self.status = status
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, data: bytes, *, more: bool = False) -> None:
        if self.head:
            data = b""
        self.bytes += len(data)
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def whole(
        self, status: int, body: bytes, content_type: str, extra: Headers | None = None
    ) -> None:
        headers: Headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            *(extra or []),
        ]
        await self.start(status, headers)
        await self.body(body)

    async def error(self, status: int, message: str, extra: Headers | None = None) -> None:
        body = json.dumps({"error": message, "status": status}).encode()
        await self.whole(status, body, "application/json", extra)


class GatewayApp:
    """The ASGI callable. One per node; see the module doc for routes."""

    def __init__(self, node: Node, *, timeouts: Timeouts | None = None, keep: int = 256) -> None:
        self.node = node
        self.timeouts = timeouts or Timeouts()
        self.source = Source(node)
        self.metrics = GatewayMetrics(node)
        self.recent: deque[RequestRecord] = deque(maxlen=keep)
        self.player = resources.files("gateway").joinpath("player.html").read_bytes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets here
        request = _Request(scope)
        reply = _Reply(send, request.head)
        route = "other"
        try:
            route = await self._route(request, receive, reply)
        finally:
            elapsed = time.perf_counter() - request.started
            self.recent.append(
                RequestRecord(
                    request.method,
                    request.path,
                    request.headers.get("range"),
                    reply.status,
                    reply.bytes,
                    elapsed,
                )
            )
            self.metrics.requests.labels(route, str(reply.status)).inc()

    async def _route(self, request: _Request, receive: Receive, reply: _Reply) -> str:
        path = request.path
        if path.startswith(v1.PREFIX):  # it has a POST route and answers methods itself
            await v1.handle(self.node.discovery, request, receive, reply)
            return "v1"
        if path.startswith(identity.PREFIX):  # POSTs and CORS preflights: it answers methods
            await identity.handle(self.node.identity, request, receive, reply)
            return "identity"
        if request.method not in ("GET", "HEAD"):
            await reply.error(405, "only GET and HEAD", [(b"allow", b"GET, HEAD")])
            return "other"
        for prefix, immutable in (("/ipfs/", True), ("/content/", False)):
            if path.startswith(prefix):
                await self._content(request, receive, reply, path[len(prefix) :], immutable)
                return "content"
        if path in ("/", "/player", "/player.html"):
            await reply.whole(200, self.player, "text/html; charset=utf-8")
            return "player"
        if path == "/api/pins":
            await reply.whole(200, self._pins_json(), "application/json")
            return "pins"
        if path == "/health":
            document = health.sign(self.node, await health.health_body(self.node))
            body = json.dumps(document, indent=1).encode()
            await reply.whole(200, body, "application/json", [(b"cache-control", b"no-store")])
            return "health"
        if path == "/metrics":
            await reply.whole(200, self.metrics.render(), METRICS_TYPE)
            return "metrics"
        await reply.error(404, f"no such page: {path}")
        return "other"

    def _pins_json(self) -> bytes:
        pins = sorted(self.node.store.pins(), key=lambda p: (p.name.lower(), str(p.cid)))
        return json.dumps(
            {
                "peer_id": self.node.peer_id,
                "pins": [
                    {"cid": str(p.cid), "name": p.name, "size": p.size, "pinned_at": p.pinned_at}
                    for p in pins
                ],
            }
        ).encode()

    # -- content ----------------------------------------------------------

    async def _content(
        self, request: _Request, receive: Receive, reply: _Reply, rest: str, immutable: bool
    ) -> None:
        text, _, subpath = rest.partition("/")
        try:
            cid = CID.parse(text)
        except DecodingError as exc:
            await reply.error(400, f"{text!r} is not a CID: {exc}")
            return
        if subpath:
            await reply.error(404, "paths inside a CID are not supported: files only")
            return
        etag = f'"{cid}"'
        cache = IMMUTABLE if immutable else "public, max-age=3600"
        common: Headers = [
            (b"etag", etag.encode()),
            (b"cache-control", cache.encode()),
            (b"accept-ranges", b"bytes"),
            (b"x-content-type-options", b"nosniff"),
            (b"access-control-allow-origin", b"*"),
            (b"access-control-expose-headers", b"Content-Range, Content-Length, ETag"),
        ]
        if none_match(request.headers.get("if-none-match"), etag):
            await reply.start(304, common)
            await reply.body(b"")
            return
        deadline = trio.current_time() + self.timeouts.first_byte
        try:
            with trio.fail_at(deadline):
                info = await self.source.info(cid)
        except ContentError as exc:
            await reply.error(exc.status, str(exc))
            return
        except trio.TooSlowError:
            await reply.error(504, f"{cid}: no block within {self.timeouts.first_byte} s")
            return
        headers = [*common, (b"content-type", info.content_type.encode())]
        if not immutable and info.name:
            headers.append(
                (b"content-disposition", f"inline; filename*=UTF-8''{quote(info.name)}".encode())
            )
        rng: ByteRange | None = None
        if if_range_allows(request.headers.get("if-range"), etag):
            try:
                rng = parse_range(request.headers.get("range"), info.size)
            except Unsatisfiable:
                await reply.error(
                    416,
                    f"range not satisfiable: the file has {info.size} bytes",
                    [*common, (b"content-range", f"bytes */{info.size}".encode())],
                )
                return
        if rng is None:
            status, start, end = 200, 0, info.size
        else:
            status, start, end = 206, rng.start, rng.end
            headers.append((b"content-range", rng.content_range(info.size).encode()))
        headers.append((b"content-length", str(end - start).encode()))
        if request.head or start == end:
            await reply.start(status, headers)
            await reply.body(b"")
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
            await self._stream(
                reply, info, (start, end), status, headers, request.started, deadline
            )
            nursery.cancel_scope.cancel()

    async def _stream(
        self,
        reply: _Reply,
        info: FileInfo,
        span: tuple[int, int],
        status: int,
        headers: Headers,
        started: float,
        deadline: float,
    ) -> None:
        """Send ``[start, end)``: the headers go once the first chunk is in hand."""
        start, end = span
        body = self.source.read(info.cid, start, end)
        async with aclosing(body):
            try:
                with trio.fail_at(deadline):
                    first = await anext(body)
            except ContentError as exc:
                await reply.error(exc.status, str(exc))
                return
            except trio.TooSlowError:
                await reply.error(504, f"{info.cid}: no block within {self.timeouts.first_byte} s")
                return
            except StopAsyncIteration:
                await reply.error(502, f"{info.cid}: the fetch ended before the first byte")
                return
            await reply.start(status, headers)
            self.metrics.first_byte.observe(time.perf_counter() - started)
            await reply.body(first, more=True)
            sent = len(first)
            try:
                while sent < end - start:
                    with trio.fail_after(self.timeouts.stall):
                        chunk = await anext(body)
                    await reply.body(chunk, more=True)
                    sent += len(chunk)
                    self.metrics.bytes_sent.inc(len(chunk))
            except (ContentError, trio.TooSlowError, StopAsyncIteration) as exc:
                why = "stalled" if isinstance(exc, trio.TooSlowError) else str(exc) or "ended"
                log.warning("%s: aborting the response after %d bytes: %s", info.cid, sent, why)
                raise StreamAborted(f"{info.cid} after {sent} bytes: {why}") from None
            self.metrics.bytes_sent.inc(len(first))
            await reply.body(b"")


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    """Stop fetching when the client goes away (a player that seeks drops its request)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
