"""The discovery query API: one set of operations, served over HTTP and libp2p.

:class:`DiscoveryAPI` validates an operation's parameters, runs the index
query in a worker thread and returns plain data (JSON- and CBOR-able, in
the shapes :mod:`store.index` documents). The gateway's ``/v1`` routes
(:mod:`gateway.v1`) and ``/coliving/discovery/1.0.0``
(:mod:`protocols.discovery`) are two ways of calling :meth:`DiscoveryAPI.call`.

Operations and their parameters (``page`` is ``limit``, default 10, 1..100,
and ``offset``, default 0, 0..10000):

=================== ================================= ==========================
op                  params                            answer
=================== ================================= ==========================
user                id                                user
user_by_handle      handle                            user
user_by_wallet      wallet                            user
user_tracks         id, page                          [track]
user_playlists      id, page                          [playlist]
user_reposts        id, page                          [track/playlist + kind]
followers           id, page                          [user]
following           id, page                          [user]
feed                id, page                          [feed item]
track               id                                track
stream              id                                {cid, path[, url]}
track_reposters     id, page                          [user]
track_savers        id, page                          [user]
playlist            id                                playlist
playlist_tracks     id, page                          [track]
playlist_reposters  id, page                          [user]
playlist_savers     id, page                          [user]
search_tracks       query, page                       [track]
search_users        query, page                       [user]
search_playlists    query, page                       [playlist]
trending            window, genre, page               [track + score]
status                                                the indexer's status
=================== ================================= ==========================

Ids are integers in ``[0, 2**63)``; a string of ASCII digits is taken too
(an HTTP path or query carries nothing else). A deleted track or playlist
is unknown here (404), and so are its listings. A search ``query`` is 1..200
characters once stripped; ``window`` is week, month or all (default week);
``genre`` is one of :data:`discovery.rules.GENRES` (any case).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import trio

from discovery.rules import GENRES
from store.index import IndexStore, Kind, Page, Row, Window

DEFAULT_LIMIT: Final = 10  # Audius' default page
MAX_LIMIT: Final = 100
MAX_OFFSET: Final = 10_000
_WALLET: Final = re.compile(r"0x[0-9a-fA-F]{40}")
MAX_QUERY: Final = 200  # characters of a search, after stripping
MAX_HANDLE: Final = 30  # the rules' handle bound
MAX_ID: Final = 2**63 - 1
WINDOWS: Final[tuple[Window, ...]] = ("week", "month", "all")
_GENRES_LC: Final = {g.lower(): g for g in GENRES}
_DIGITS = re.compile(r"[0-9]{1,19}")  # str.isdigit takes "²" and other non-ASCII digits


class APIError(Exception):
    """A query the API refuses; ``status`` is its HTTP status."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(APIError):
    """A parameter is missing, unknown, of the wrong type or out of bounds."""

    status = 400


class NotFound(APIError):
    """No such user, track or playlist (or it was deleted)."""

    status = 404


# -- parameters -------------------------------------------------------------


def parse_id(value: object, name: str = "id") -> int:
    """An id: an int (not a bool) or ASCII digits, in ``[0, 2**63)``."""
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"{name} must be an integer")
    if not 0 <= value <= MAX_ID:
        raise BadRequest(f"{name} must be in [0, 2**63)")
    return value


def _bounded(params: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, str) and value.startswith("-") and _DIGITS.fullmatch(value[1:]):
        value = int(value)  # so "-1" is reported as out of range, not as not a number
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"{name} must be an integer")
    if not low <= value <= high:
        raise BadRequest(f"{name} must be in {low}..{high}")
    return value


def parse_page(params: Mapping[str, Any]) -> Page:
    return Page(
        limit=_bounded(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        offset=_bounded(params, "offset", 0, 0, MAX_OFFSET),
    )


def _text(params: Mapping[str, Any], name: str, most: int) -> str:
    value = params.get(name)
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    value = value.strip()
    if not 1 <= len(value) <= most:
        raise BadRequest(f"{name} must be 1..{most} characters")
    return value


def _window(params: Mapping[str, Any]) -> Window:
    value = params.get("window")
    if value is None:
        return "week"
    for window in WINDOWS:
        if value == window:
            return window
    raise BadRequest(f"window must be one of {', '.join(WINDOWS)}")


def _genre(params: Mapping[str, Any]) -> str | None:
    value = params.get("genre")
    if value is None or value == "":
        return None
    if isinstance(value, str) and (genre := _GENRES_LC.get(value.strip().lower())):
        return genre
    raise BadRequest(f"genre must be one of {', '.join(sorted(GENRES))}")


# -- operations -------------------------------------------------------------

Query = Callable[[IndexStore, dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Operation:
    params: frozenset[str]
    run: Query  # runs in a worker thread, with the parsed parameters


def _user(store: IndexStore, user_id: int) -> Row:
    row = store.user(user_id)
    if row is None:
        raise NotFound(f"no user {user_id}")
    return row


def _track(store: IndexStore, track_id: int) -> Row:
    row = store.track(track_id)
    if row is None or row.get("deleted"):
        raise NotFound(f"no track {track_id}")
    return row


def _playlist(store: IndexStore, playlist_id: int) -> Row:
    row = store.playlist(playlist_id)
    if row is None or row.get("deleted"):
        raise NotFound(f"no playlist {playlist_id}")
    return row


def _by_handle(store: IndexStore, a: dict[str, Any]) -> Row:
    row = store.user_by_handle(a["handle"])
    if row is None:
        raise NotFound(f"no user with handle {a['handle']!r}")
    return row


def _by_wallet(store: IndexStore, a: dict[str, Any]) -> Row:
    wallet = a["wallet"]
    if not isinstance(wallet, str) or not _WALLET.fullmatch(wallet):
        raise BadRequest("wallet must be an address: 0x and 40 hex digits")
    row = store.user_of_wallet(wallet.lower())
    if row is None:
        raise NotFound(f"no user with wallet {wallet}")
    return row


def _user_list(
    query: Callable[[IndexStore, int, Page], list[Row]],
) -> Query:
    def run(store: IndexStore, a: dict[str, Any]) -> list[Row]:
        _user(store, a["id"])
        return query(store, a["id"], a["page"])

    return run


def _item_list(kind: Kind, query: Callable[[IndexStore, Kind, int, Page], list[Row]]) -> Query:
    exists = _track if kind == "track" else _playlist

    def run(store: IndexStore, a: dict[str, Any]) -> list[Row]:
        exists(store, a["id"])
        return query(store, kind, a["id"], a["page"])

    return run


def _playlist_tracks(store: IndexStore, a: dict[str, Any]) -> list[Row]:
    _playlist(store, a["id"])
    return store.playlist_tracks(a["id"], a["page"])


def _stream_cid(store: IndexStore, a: dict[str, Any]) -> str:
    cid = _track(store, a["id"]).get("stream_cid")
    if not isinstance(cid, str) or not cid:
        raise NotFound(f"track {a['id']} has no stream")
    return cid


_ID: Final = frozenset({"id"})
_ID_PAGE: Final = frozenset({"id", "limit", "offset"})
_SEARCH: Final = frozenset({"query", "limit", "offset"})

OPERATIONS: Final[Mapping[str, Operation]] = {
    "user": Operation(_ID, lambda s, a: _user(s, a["id"])),
    "user_by_handle": Operation(frozenset({"handle"}), _by_handle),
    "user_by_wallet": Operation(frozenset({"wallet"}), _by_wallet),
    "user_tracks": Operation(_ID_PAGE, _user_list(lambda s, i, p: s.user_tracks(i, p))),
    "user_playlists": Operation(_ID_PAGE, _user_list(lambda s, i, p: s.user_playlists(i, p))),
    "user_reposts": Operation(_ID_PAGE, _user_list(lambda s, i, p: s.user_reposts(i, p))),
    "followers": Operation(_ID_PAGE, _user_list(lambda s, i, p: s.followers(i, p))),
    "following": Operation(_ID_PAGE, _user_list(lambda s, i, p: s.following(i, p))),
    "feed": Operation(_ID_PAGE, _user_list(lambda s, i, p: s.feed(i, p))),
    "track": Operation(_ID, lambda s, a: _track(s, a["id"])),
    "stream": Operation(_ID, _stream_cid),
    "track_reposters": Operation(_ID_PAGE, _item_list("track", lambda s, *k: s.reposters(*k))),
    "track_savers": Operation(_ID_PAGE, _item_list("track", lambda s, *k: s.savers(*k))),
    "playlist": Operation(_ID, lambda s, a: _playlist(s, a["id"])),
    "playlist_tracks": Operation(_ID_PAGE, _playlist_tracks),
    "playlist_reposters": Operation(
        _ID_PAGE, _item_list("playlist", lambda s, *k: s.reposters(*k))
    ),
    "playlist_savers": Operation(_ID_PAGE, _item_list("playlist", lambda s, *k: s.savers(*k))),
    "search_tracks": Operation(_SEARCH, lambda s, a: s.search_tracks(a["query"], a["page"])),
    "search_users": Operation(_SEARCH, lambda s, a: s.search_users(a["query"], a["page"])),
    "search_playlists": Operation(_SEARCH, lambda s, a: s.search_playlists(a["query"], a["page"])),
    "trending": Operation(
        frozenset({"window", "genre", "limit", "offset"}),
        lambda s, a: s.trending(a["window"], a["genre"], a["page"]),
    ),
    "status": Operation(frozenset(), lambda s, a: None),  # answered without the store
}
OPS: Final = tuple(OPERATIONS)


def parse_params(op: str, params: object) -> dict[str, Any]:
    """The parameters of ``op``, checked and converted (BadRequest otherwise)."""
    operation = OPERATIONS.get(op) if isinstance(op, str) else None
    if operation is None:
        raise BadRequest(f"unknown op {op!r} (this node answers {', '.join(OPS)})")
    if not isinstance(params, Mapping):
        raise BadRequest("params must be a map")
    if unknown := sorted(map(str, set(params) - operation.params)):
        raise BadRequest(f"unknown parameters for {op}: {', '.join(unknown)}")
    args: dict[str, Any] = {}
    if "id" in operation.params:
        if params.get("id") is None:
            raise BadRequest("id is required")
        args["id"] = parse_id(params["id"])
    if "limit" in operation.params:
        args["page"] = parse_page(params)
    if "handle" in operation.params:
        args["handle"] = _text(params, "handle", MAX_HANDLE)
    if "query" in operation.params:
        args["query"] = _text(params, "query", MAX_QUERY)
    if "wallet" in operation.params:
        args["wallet"] = params.get("wallet")
    if "window" in operation.params:
        args["window"] = _window(params)
        args["genre"] = _genre(params)
    return args


class DiscoveryAPI:
    """The discovery node's queries: ``await api.call(op, params)``."""

    def __init__(
        self,
        store: IndexStore,
        *,
        status: Callable[[], dict[str, Any]],
        stream_base: Callable[[], str | None],
    ) -> None:
        self.store = store
        self.status = status
        self.stream_base = stream_base
        # SQLite reads run in threads; bounded so a burst of queries cannot
        # take every worker thread trio has
        self._limiter = trio.CapacityLimiter(8)

    async def call(self, op: str, params: Mapping[str, Any]) -> Any:
        """Answer ``op``: its data, or APIError (BadRequest, NotFound)."""
        args = parse_params(op, params)
        if op == "status":
            return self.status()
        operation = OPERATIONS[op]
        data = await trio.to_thread.run_sync(operation.run, self.store, args, limiter=self._limiter)
        if op == "stream":
            path = f"/ipfs/{data}"
            answer = {"cid": data, "path": path}
            base = self.stream_base()
            if base is not None:
                answer["url"] = base.rstrip("/") + path
            return answer
        return data
