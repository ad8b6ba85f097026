"""The gateway's ``/identity/``: hedgehog accounts and the gas relay, in the Audius
identity service's shape.

Bodies and answers are plain JSON (no ``data`` envelope), so a stock
``@audius/hedgehog`` client's getFn / setAuthFn / setUserFn are a fetch()
each. The checks and limits are :mod:`identity.accounts`' and
:mod:`identity.relay`'s; this module only reads requests and writes answers.

``POST /identity/authentication``
    body ``{iv, cipherText, lookupKey[, oldLookupKey]}``; ``{"ok": true}``
``GET /identity/authentication?lookupKey=..[&username=..]``
    ``{iv, cipherText, lookupKey}``, or 404
``GET /identity/authentication/check?lookupKey=..``
    ``{"exists": bool}``
``POST /identity/user``
    body ``{username (the email), walletAddress}``; the pair as stored
``GET /identity/users/check?email=..`` or ``?handle=..``
    ``{"exists": bool}`` (a handle: whether a user in the discovery index has it)
``POST /identity/relay``
    body ``{contractAddress, senderAddress, encodedABI, gasLimit}``; ``{txHash, block}``

Refusals are ``{"error": sentence, "status": n}`` (relay refusals add
``"reason"``): 400 bad input (also an unknown query parameter or body key,
a parameter given twice, JSON that does not parse or repeats a key), 404
(no such account, route, or role: a node without the identity role answers
every path here 404; one without a relay wallet answers ``/identity/relay``
404), 405, 409 taken, 413 a body over MAX_BODY (the relay's: RELAY_MAX_BODY),
429 with ``Retry-After`` (seconds, rounded up), 502 a relayed transaction
failed on chain, 503 the chain cannot be reached.

CORS: a browser app on another origin calls these, so every answer carries
``Access-Control-Allow-Origin: *`` (and exposes ``Retry-After``), and an
``OPTIONS`` preflight on any path here is a 204 allowing GET, POST and the
headers asked for. No cookies or credentials are involved: none are used.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import parse_qsl

from chain.access import ChainUnavailable
from chain.relay import RelayFailed
from discovery.listens import RateLimited
from gateway.v1 import Request, TooLarge, read_body
from identity.accounts import BadInput, IdentityRefused
from identity.relay import MAX_BODY as RELAY_MAX_BODY
from identity.relay import RelayRefused

if TYPE_CHECKING:
    from identity.service import IdentityService

log = logging.getLogger("coliving.gateway")

PREFIX: Final = "/identity/"
MAX_BODY: Final = 4096  # an auth document is under 1.5 KiB, a user one under 400 bytes
METHODS: Final = "GET, POST, OPTIONS"

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Headers = list[tuple[bytes, bytes]]

CORS: Final[Headers] = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-expose-headers", b"Retry-After"),
]
_TOKEN_LIST: Final = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*")

# path -> (method, what it does)
ROUTES: Final = {
    ("authentication", "POST"): "save_auth",
    ("authentication", "GET"): "login",
    ("authentication/check", "GET"): "auth_check",
    ("user", "POST"): "add_user",
    ("users/check", "GET"): "users_check",
    ("relay", "POST"): "relay",
}
_PARAMS: Final = {
    "login": ({"lookupKey"}, {"lookupKey", "username"}),
    "auth_check": ({"lookupKey"}, {"lookupKey"}),
    "users_check": (set(), {"email", "handle"}),
}


class Reply(Protocol):
    async def start(self, status: int, headers: Headers) -> None: ...

    async def body(self, data: bytes, *, more: bool = False) -> None: ...

    async def whole(
        self, status: int, body: bytes, content_type: str, extra: Headers | None = None
    ) -> None: ...

    async def error(self, status: int, message: str, extra: Headers | None = None) -> None: ...


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise BadInput(f"the key {key!r} is given twice", reason="malformed")
        document[key] = value
    return document


def _constant(name: str) -> Any:
    raise BadInput(f"{name} is not a JSON number", reason="malformed")


def parse_json(raw: bytes) -> Any:
    """A JSON body (BadInput if it does not parse, repeats a key or says NaN)."""
    try:
        return json.loads(raw, object_pairs_hook=_no_repeats, parse_constant=_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadInput(f"the body is not JSON: {exc}", reason="malformed") from None


def query_params(query: bytes, required: set[str], allowed: set[str]) -> dict[str, str]:
    try:
        pairs = parse_qsl(query.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise BadInput("the query string is not UTF-8", reason="malformed") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise BadInput(f"{name} given twice", reason="malformed")
        params[name] = value
    if unknown := sorted(set(params) - allowed):
        raise BadInput(f"unknown parameters: {', '.join(unknown)}", reason="malformed")
    if missing := sorted(required - set(params)):
        raise BadInput(f"missing parameters: {', '.join(missing)}", reason="malformed")
    return params


def _json(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


async def _preflight(request: Request, reply: Reply) -> None:
    asked = request.headers.get("access-control-request-headers", "").strip()
    allow_headers = asked if _TOKEN_LIST.fullmatch(asked) else "Content-Type"
    await reply.start(
        204,
        [
            *CORS,
            (b"access-control-allow-methods", METHODS.encode()),
            (b"access-control-allow-headers", allow_headers.encode()),
            (b"access-control-max-age", b"86400"),
            (b"allow", METHODS.encode()),
        ],
    )
    await reply.body(b"")


async def handle(
    service: IdentityService | None, request: Request, receive: Receive, reply: Reply
) -> None:
    """Answer one request under ``/identity/``."""
    if service is None:
        await reply.error(404, "this node does not run the identity role", CORS)
        return
    path = request.path[len(PREFIX) :].rstrip("/")
    methods = [m for (p, m) in ROUTES if p == path]
    if not methods:
        await reply.error(404, f"no such route: {request.path}", CORS)
        return
    if request.method == "OPTIONS":
        await _preflight(request, reply)
        return
    if request.method not in methods:
        allowed = ", ".join([*methods, "OPTIONS"])
        await reply.error(405, f"only {allowed} here", [(b"allow", allowed.encode()), *CORS])
        return
    op = ROUTES[(path, request.method)]
    try:
        answer = await _answer(service, op, request, receive)
    except TooLarge:
        limit = RELAY_MAX_BODY if op == "relay" else MAX_BODY
        await reply.error(413, f"the body is over {limit} bytes", CORS)
        return
    except IdentityRefused as exc:
        await reply.error(exc.status, str(exc), CORS)
        return
    except RelayRefused as exc:
        body = _json({"error": str(exc), "status": 400, "reason": exc.reason})
        await reply.whole(400, body, "application/json", CORS)
        return
    except RateLimited as exc:
        wait = str(max(1, math.ceil(exc.retry_after))).encode()
        await reply.error(429, str(exc), [(b"retry-after", wait), *CORS])
        return
    except ChainUnavailable as exc:
        await reply.error(503, f"the chain cannot be reached: {exc}", CORS)
        return
    except RelayFailed as exc:
        await reply.error(502, str(exc), CORS)
        return
    except Exception:
        log.exception("/identity %s failed", op)
        await reply.error(500, "internal error", CORS)
        return
    await reply.whole(
        200, _json(answer), "application/json", [(b"cache-control", b"no-store"), *CORS]
    )


async def _answer(service: IdentityService, op: str, request: Request, receive: Receive) -> Any:
    accounts, client = service.accounts, request.client
    if op in _PARAMS:
        required, allowed = _PARAMS[op]
        params = query_params(request.query, required, allowed)
        if op == "login":
            return await accounts.login(
                params["lookupKey"], client, username=params.get("username")
            )
        if op == "auth_check":
            return {"exists": await accounts.auth_exists(params["lookupKey"], client)}
        if len(params) != 1:
            raise BadInput("give one of email and handle", reason="malformed")
        if "email" in params:
            return {"exists": await accounts.email_exists(params["email"], client)}
        return {"exists": await accounts.handle_exists(params["handle"], client)}
    if op == "relay":
        if service.relay is None:
            raise _NoRelay()
        raw = await read_body(receive, request.headers.get("content-length"), RELAY_MAX_BODY)
        return await service.relay.relay(parse_json(raw), client)
    raw = await read_body(receive, request.headers.get("content-length"), MAX_BODY)
    body = parse_json(raw)
    if op == "save_auth":
        await accounts.save_auth(body, client)
        return {"ok": True}
    return await accounts.add_user(body, client)


class _NoRelay(IdentityRefused):
    status = 404

    def __init__(self) -> None:
        super().__init__("this node relays nothing (no relay_key_file)", reason="no_relay")
