"""The discovery query API: parameter checks (against a stand-in index), the
``/coliving/discovery/1.0.0`` wire format, and every operation on a real
discovery node over HTTP (``/v1``) and over libp2p."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
import trio

from chain.deploy import DISCOVERY_NODE
from chain.entity import EntityReader
from chain.local import LocalChain, open_chain
from discovery.api import (
    MAX_ID,
    OPS,
    APIError,
    BadRequest,
    DiscoveryAPI,
    NotFound,
    parse_params,
)
from discovery.indexer import IndexerConfig
from discovery.listens import ListenConfig
from discovery.service import DiscoveryConfig, MusicChain
from node import Node, NodeConfig
from p2p.abc import StreamError
from p2p.keys import NodeKey
from protocols import discovery as proto
from protocols.cid import encode_uvarint
from protocols.errors import DecodingError, NoAnswerError, TruncatedError, is_offence
from protocols.wire import FrameReader, frame
from store.index import Page
from tests.music import CID_A, Wallet
from tests.test_wire_props import ScriptedStream

# -- a stand-in index: only what the API's own logic needs --------------------


class StubStore:
    """Answers by id from dicts and records each query's arguments."""

    def __init__(self) -> None:
        self.users = {1: {"id": 1, "handle": "alice"}}
        self.tracks: dict[int, dict[str, Any]] = {
            10: {"id": 10, "title": "Song", "stream_cid": "bafyA", "deleted": False},
            11: {"id": 11, "title": "Gone", "stream_cid": "bafyB", "deleted": True},
        }
        self.playlists: dict[int, dict[str, Any]] = {
            20: {"id": 20, "playlist_name": "Mix", "deleted": False},
            21: {"id": 21, "playlist_name": "Old", "deleted": True},
        }
        self.calls: list[tuple[Any, ...]] = []

    def user(self, user_id: int) -> dict[str, Any] | None:
        return self.users.get(user_id)

    def user_by_handle(self, handle: str) -> dict[str, Any] | None:
        return next((u for u in self.users.values() if u["handle"] == handle.lower()), None)

    def track(self, track_id: int) -> dict[str, Any] | None:
        return self.tracks.get(track_id)

    def playlist(self, playlist_id: int) -> dict[str, Any] | None:
        return self.playlists.get(playlist_id)

    def __getattr__(self, name: str) -> Any:
        def query(*args: Any) -> list[Any]:
            self.calls.append((name, *args))
            return [name]

        return query


def api_of(store: Any, base: str | None = "http://gw:1") -> DiscoveryAPI:
    return DiscoveryAPI(store, status=lambda: {"latest_indexed_block": 7}, stream_base=lambda: base)


async def call(op: str, **params: Any) -> Any:
    return await api_of(StubStore()).call(op, params)


# -- parameters -----------------------------------------------------------------

ID_PAGE_OPS = [
    "user_tracks",
    "user_playlists",
    "user_reposts",
    "followers",
    "following",
    "feed",
    "playlist_tracks",
    "track_reposters",
    "track_savers",
    "playlist_reposters",
    "playlist_savers",
]
SEARCH_OPS = ["search_tracks", "search_users", "search_playlists"]
KNOWN_ID = {"playlist": 20, "track": 10}


def known_id(op: str) -> int:
    return next((v for k, v in KNOWN_ID.items() if op.startswith(k)), 1)


async def test_every_op_is_listed() -> None:
    assert set(OPS) == {
        "user",
        "user_by_handle",
        "user_by_wallet",
        *ID_PAGE_OPS,
        "track",
        "playlist",
        "stream",
        *SEARCH_OPS,
        "trending",
        "status",
    }


@pytest.mark.parametrize("op", ID_PAGE_OPS)
async def test_list_ops_page_and_pass_through(op: str) -> None:
    store = StubStore()
    api = api_of(store)
    assert await api.call(op, {"id": known_id(op)}) == [
        {"track_reposters": "reposters", "playlist_reposters": "reposters"}.get(
            op, {"track_savers": "savers", "playlist_savers": "savers"}.get(op, op)
        )
    ]
    assert store.calls[-1][-1] == Page(limit=10, offset=0)
    await api.call(op, {"id": str(known_id(op)), "limit": "100", "offset": "10000"})
    assert store.calls[-1][-1] == Page(limit=100, offset=10000)
    if op.endswith(("_reposters", "_savers")):
        assert store.calls[-1][1] == op.split("_")[0]  # the kind


@pytest.mark.parametrize("op", ID_PAGE_OPS + SEARCH_OPS + ["trending"])
@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"limit": 0}, "limit must be in 1..100"),
        ({"limit": 101}, "limit must be in 1..100"),
        ({"limit": "0"}, "limit must be in 1..100"),
        ({"limit": -1}, "limit must be in 1..100"),
        ({"offset": -1}, "offset must be in 0..10000"),
        ({"offset": "-1"}, "offset must be in 0..10000"),
        ({"offset": 10001}, "offset must be in 0..10000"),
        ({"limit": "ten"}, "limit must be an integer"),
        ({"limit": 1.5}, "limit must be an integer"),
        ({"limit": True}, "limit must be an integer"),
        ({"offset": "1e3"}, "offset must be an integer"),
        ({"offset": [1]}, "offset must be an integer"),
        ({"limit": "²"}, "limit must be an integer"),
    ],
)
async def test_bad_pages(op: str, params: dict[str, Any], why: str) -> None:
    base: dict[str, Any] = {"id": known_id(op)} if op in ID_PAGE_OPS else {}
    if op in SEARCH_OPS:
        base = {"query": "song"}
    with pytest.raises(BadRequest, match=why) as refused:
        await call(op, **base, **params)
    assert refused.value.status == 400


@pytest.mark.parametrize("op", ["user", "track", "playlist", "stream", *ID_PAGE_OPS])
@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "id is required"),
        (-1, "id must be in"),
        (2**63, "id must be in"),
        ("-1", "id must be an integer"),
        ("1.0", "id must be an integer"),
        ("", "id must be an integer"),
        ("0x10", "id must be an integer"),
        ("\u0661", "id must be an integer"),  # an Arabic-Indic digit: isdigit() but not ASCII
        ("9" * 20, "id must be an integer"),
        (True, "id must be an integer"),
        (1.0, "id must be an integer"),
        ([1], "id must be an integer"),
    ],
)
async def test_bad_ids(op: str, value: Any, why: str) -> None:
    params = {} if value is None else {"id": value}
    with pytest.raises(BadRequest, match=why):
        await call(op, **params)


async def test_id_bounds_are_inclusive_below_2_63() -> None:
    assert parse_params("user", {"id": MAX_ID})["id"] == 2**63 - 1
    assert parse_params("user", {"id": str(MAX_ID)})["id"] == 2**63 - 1
    assert parse_params("user", {"id": 0})["id"] == 0
    assert parse_params("user", {"id": "007"})["id"] == 7


@pytest.mark.parametrize(
    ("op", "params", "why"),
    [
        ("user", {"id": 1, "limit": 3}, "unknown parameters for user: limit"),
        ("status", {"x": 1, "a": 2}, "unknown parameters for status: a, x"),
        ("trending", {"query": "x"}, "unknown parameters for trending: query"),
        ("search_users", {"query": "x", "id": 1}, "unknown parameters for search_users: id"),
        ("user_by_handle", {"handle": "alice", "id": 1}, "unknown parameters"),
    ],
)
async def test_unknown_params_are_named(op: str, params: dict[str, Any], why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        await call(op, **params)


@pytest.mark.parametrize("op", ["nope", "", "User", "__init__"])
async def test_unknown_op_names_the_ops(op: str) -> None:
    with pytest.raises(BadRequest) as refused:
        await call(op)
    assert f"unknown op {op!r}" in str(refused.value)
    assert ", ".join(OPS) in str(refused.value)


async def test_params_must_be_a_map() -> None:
    with pytest.raises(BadRequest, match="params must be a map"):
        await api_of(StubStore()).call("status", [])  # type: ignore[arg-type]


@pytest.mark.parametrize("op", SEARCH_OPS)
@pytest.mark.parametrize(
    ("query", "why"),
    [
        (None, "query must be a string"),
        (3, "query must be a string"),
        ("", "query must be 1..200 characters"),
        ("   \t", "query must be 1..200 characters"),
        ("x" * 201, "query must be 1..200 characters"),
    ],
)
async def test_bad_search_queries(op: str, query: Any, why: str) -> None:
    params = {} if query is None else {"query": query}
    with pytest.raises(BadRequest, match=why):
        await call(op, **params)


@pytest.mark.parametrize("op", SEARCH_OPS)
async def test_search_query_is_stripped_and_200_is_enough(op: str) -> None:
    store = StubStore()
    await api_of(store).call(op, {"query": "  " + "x" * 200 + " "})
    assert store.calls[-1][1:] == ("x" * 200, Page(10, 0))


async def test_trending_window_and_genre() -> None:
    store = StubStore()
    api = api_of(store)
    await api.call("trending", {})
    assert store.calls[-1][1:] == ("week", None, Page(10, 0))
    await api.call("trending", {"window": "all", "genre": "hip-hop/rap", "limit": 5})
    assert store.calls[-1][1:] == ("all", "Hip-Hop/Rap", Page(5, 0))
    await api.call("trending", {"window": "month", "genre": "Electronic"})
    assert store.calls[-1][1:] == ("month", "Electronic", Page(10, 0))
    for bad in ("allTime", "day", "", 7, "WEEK"):
        with pytest.raises(BadRequest, match="window must be one of week, month, all"):
            await api.call("trending", {"window": bad})
    for genre in ("Polka", 3, "Electroni"):
        with pytest.raises(BadRequest, match="genre must be one of"):
            await api.call("trending", {"genre": genre})


@pytest.mark.parametrize("handle", [None, "", " ", "a" * 31, 5])
async def test_bad_handles(handle: Any) -> None:
    with pytest.raises(BadRequest, match="handle"):
        await call("user_by_handle", **({} if handle is None else {"handle": handle}))


# -- answers and 404s --------------------------------------------------------------


async def test_lookups_and_404s() -> None:
    assert await call("user", id=1) == {"id": 1, "handle": "alice"}
    assert await call("user_by_handle", handle="Alice") == {"id": 1, "handle": "alice"}
    assert (await call("track", id="10"))["title"] == "Song"
    assert (await call("playlist", id=20))["playlist_name"] == "Mix"
    cases: list[tuple[str, dict[str, Any]]] = [
        ("user", {"id": 2}),
        ("user_by_handle", {"handle": "bob"}),
        ("track", {"id": 11}),  # deleted
        ("track", {"id": 12}),
        ("playlist", {"id": 21}),  # deleted
        ("playlist", {"id": 1}),
        ("stream", {"id": 11}),
        ("stream", {"id": 99}),
    ]
    for op, params in cases:
        with pytest.raises(NotFound) as missing:
            await call(op, **params)
        assert missing.value.status == 404


@pytest.mark.parametrize("op", ID_PAGE_OPS)
async def test_list_ops_on_unknown_or_deleted_ids_are_404(op: str) -> None:
    store = StubStore()
    unknown = [99, 11, 21] if op.startswith(("track", "playlist")) else [99]
    for item_id in unknown:
        with pytest.raises(NotFound):
            await api_of(store).call(op, {"id": item_id})
    assert store.calls == []


async def test_stream_url() -> None:
    store = StubStore()
    assert await api_of(store, "http://gw:1/").call("stream", {"id": 10}) == {
        "cid": "bafyA",
        "path": "/ipfs/bafyA",
        "url": "http://gw:1/ipfs/bafyA",
    }
    assert await api_of(store, None).call("stream", {"id": 10}) == {
        "cid": "bafyA",
        "path": "/ipfs/bafyA",
    }
    store.tracks[10]["stream_cid"] = None
    with pytest.raises(NotFound, match="no stream"):
        await api_of(store).call("stream", {"id": 10})


async def test_status_is_the_indexers() -> None:
    assert await call("status") == {"latest_indexed_block": 7}


# -- the wire ---------------------------------------------------------------------


async def reply_of(stream: ScriptedStream) -> dict[str, Any]:
    data = await FrameReader(ScriptedStream([bytes(stream.written)])).read_frame(proto.MAX_RESPONSE)
    assert data is not None
    reply = cbor2.loads(data)
    assert isinstance(reply, dict)
    return reply


async def serve_bytes(request: bytes, answer: Any = None) -> ScriptedStream:
    stream = ScriptedStream([request])
    await proto.serve(stream, answer or api_of(StubStore()).call)
    return stream


def test_request_bytes_are_pinned() -> None:
    # a golden request: a map of id, op, params in that order, canonical CBOR ints
    assert proto.encode_request(1, "user", {"id": 5}).hex() == (
        "a362696401626f70647573657266706172616d73a162696405"
    )


@pytest.mark.parametrize(
    ("op", "params", "expected"),
    [
        ("user", {"id": 1}, {"data": {"id": 1, "handle": "alice"}}),
        ("status", {}, {"data": {"latest_indexed_block": 7}}),
        ("user", {"id": 2}, {"error": "no user 2", "status": 404}),
        ("user", {"id": -1}, {"error": "id must be in [0, 2**63)", "status": 400}),
        ("nope", {}, {"status": 400}),
    ],
)
async def test_serve_replies(op: str, params: dict[str, Any], expected: dict[str, Any]) -> None:
    stream = await serve_bytes(frame(proto.encode_request(42, op, params)))
    reply = await reply_of(stream)
    assert reply["id"] == 42
    assert {k: reply[k] for k in expected} == expected
    assert stream.closed and not stream.was_reset


async def test_params_may_be_left_out() -> None:
    stream = await serve_bytes(frame(cbor2.dumps({"id": 3, "op": "status"})))
    assert (await reply_of(stream)) == {"id": 3, "data": {"latest_indexed_block": 7}}


async def test_an_unknown_request_key_is_an_error_reply_no_offence() -> None:
    stream = await serve_bytes(frame(cbor2.dumps({"id": 3, "op": "status", "sig": b""})))
    reply = await reply_of(stream)
    assert reply["status"] == 400 and "unknown keys in discovery request: ['sig']" in reply["error"]


async def test_an_internal_failure_is_a_500_without_details() -> None:
    async def broken(op: str, params: dict[str, Any]) -> Any:
        raise RuntimeError("/secret/path/index.sqlite is locked")

    stream = await serve_bytes(frame(proto.encode_request(1, "user", {"id": 1})), broken)
    assert (await reply_of(stream)) == {
        "id": 1,
        "error": "internal error: RuntimeError",
        "status": 500,
    }


async def test_an_oversized_answer_is_a_500() -> None:
    async def huge(op: str, params: dict[str, Any]) -> Any:
        return "x" * proto.MAX_RESPONSE

    stream = await serve_bytes(frame(proto.encode_request(1, "user", {"id": 1})), huge)
    assert (await reply_of(stream))["status"] == 500


async def test_a_stream_ended_before_asking_is_closed_quietly() -> None:
    stream = await serve_bytes(b"")
    assert stream.closed and not stream.was_reset and not stream.written


BAD_REQUESTS = {
    "not cbor": frame(b"\xff\xff"),
    "trailing bytes": frame(cbor2.dumps({"id": 1, "op": "status"}) + b"\x00"),
    "not a map": frame(cbor2.dumps([1, "status", {}])),
    "no id": frame(cbor2.dumps({"op": "status"})),
    "bool id": frame(cbor2.dumps({"id": True, "op": "status"})),
    "negative id": frame(cbor2.dumps({"id": -1, "op": "status"})),
    "huge id": frame(cbor2.dumps({"id": 2**63, "op": "status"})),
    "op not a string": frame(cbor2.dumps({"id": 1, "op": b"status"})),
    "params not a map": frame(cbor2.dumps({"id": 1, "op": "status", "params": [1]})),
    "params key not a string": frame(cbor2.dumps({"id": 1, "op": "user", "params": {1: 1}})),
    "oversized": encode_uvarint(proto.MAX_REQUEST + 1) + b"x" * 64,
    "cut short": encode_uvarint(100) + b"x" * 10,
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_undecodable_requests_reset_and_raise(case: str) -> None:
    stream = ScriptedStream([BAD_REQUESTS[case]])
    with pytest.raises(DecodingError) as raised:
        await proto.serve(stream, api_of(StubStore()).call)
    assert stream.was_reset and not stream.written
    # only a request cut short is no offence
    assert is_offence(raised.value) == (case != "cut short")
    assert isinstance(raised.value, TruncatedError) == (case == "cut short")


async def test_a_request_over_4_kib_is_refused_by_the_client_too() -> None:
    with pytest.raises(ValueError, match="over 4096 bytes"):
        await proto.ask(ScriptedStream(), "search_users", {"query": "x" * 5000})


async def test_ask_returns_data_and_raises_error_replies() -> None:
    def reply_with(obj: Any) -> Any:
        def respond(written: bytes) -> bytes:
            request = cbor2.loads(written[1:])
            return frame(cbor2.dumps({**obj, "id": request["id"]} if "id" not in obj else obj))

        return respond

    assert await proto.ask(ScriptedStream(respond=reply_with({"data": [1, 2]})), "status") == [1, 2]
    assert await proto.ask(ScriptedStream(respond=reply_with({"data": None})), "status") is None
    with pytest.raises(proto.DiscoveryQueryError) as refused:
        await proto.ask(
            ScriptedStream(respond=reply_with({"error": "no user 9", "status": 404})),
            "user",
            {"id": 9},
        )
    assert (refused.value.status, refused.value.message) == (404, "no user 9")
    assert isinstance(refused.value, APIError) is False
    for bad in (
        {"id": -5, "data": 1},
        {"error": "x"},
        {"neither": 1},
        {"error": "x", "status": True},
    ):
        with pytest.raises(DecodingError):
            await proto.ask(ScriptedStream(respond=reply_with(bad)), "status")
    with pytest.raises(NoAnswerError):
        await proto.ask(ScriptedStream(), "status")
    with pytest.raises(StreamError):
        await proto.ask(ScriptedStream(reset_at_end=True), "status")


# -- a real discovery node: every operation over HTTP and over libp2p -----------


@dataclass
class Net:
    """alice: a staked discovery node with a gateway, indexing ``chain``;
    bob: a content node with a gateway (no discovery role) that asks alice."""

    chain: LocalChain
    alice: Node
    bob: Node
    http: httpx.AsyncClient  # alice's gateway

    async def ask(self, op: str, params: dict[str, Any] | None = None) -> Any:
        stream = await self.bob.host.open_stream(self.alice.peer_id, [proto.PROTOCOL])
        with trio.fail_after(WAIT):
            return await proto.ask(stream, op, params)

    async def get(self, path: str, **params: Any) -> httpx.Response:
        with trio.fail_after(WAIT):
            return await self.http.get(path, params=params)


WAIT = 30.0
FAST_INDEXER = IndexerConfig(poll_interval=0.05)


async def populate(chain: LocalChain) -> None:
    """alice (1) has three followers, two live tracks (a third deleted) and a
    playlist; bob (2) one track and reposts of alice's; carol (3) saves."""
    alice, bob, carol, dave = (Wallet(chain, i) for i in (1, 2, 3, 4))
    await alice.sign_up("alice", name="Alice Liddell", bio="synths")
    await bob.sign_up("bob")
    await carol.sign_up("carol", name="Carol Singer")
    await dave.sign_up("dave")
    await alice.upload(10, "Night Drive")
    await alice.upload(11, "Morning Rock", genre="Rock")
    await alice.upload(12, "Deleted Song")
    await bob.upload(20, "Bob Tune")
    mix = {"playlist_name": "Drive Mix", "track_ids": [10, 20, 11, 12]}
    await alice.act("Playlist", 50, "Create", json.dumps(mix))
    await alice.act("Track", 12, "Delete")  # the playlist leaves it out from now on
    for fan in (bob, carol, dave):
        await fan.act("User", 1, "Follow")
    await alice.act("User", 2, "Follow")
    await bob.act("Track", 10, "Repost")
    await bob.act("Playlist", 50, "Repost")
    await carol.act("Track", 10, "Save")
    await carol.act("Playlist", 50, "Save")
    await bob.act("Track", 11, "Save")  # trending lists tracks with a score above 0


@contextlib.asynccontextmanager
async def network(tmp_path: Path, *, listens: ListenConfig | None = None) -> AsyncIterator[Net]:
    chain = await open_chain()
    await populate(chain)
    keys = {name: NodeKey.load_or_create(tmp_path / name) for name in ("alice", "bob")}
    await chain.register(keys["alice"], service_type=DISCOVERY_NODE)
    await chain.register(keys["bob"])
    d = chain.deployment
    assert d.entity_manager is not None
    music = MusicChain(
        source=EntityReader.for_access(chain.access, d),
        chain_id=d.chain_id,
        contract=d.entity_manager,
        start_block=d.entity_manager_block,
    )
    role = DiscoveryConfig(indexer=FAST_INDEXER, listens=listens or ListenConfig())
    async with trio.open_nursery() as nursery:
        cfg = NodeConfig.load(tmp_path / "alice", discovery=role, gateway="127.0.0.1:0")
        alice = Node(cfg, key=keys["alice"], oracle=chain.oracle(poll_interval=0.1), music=music)
        await nursery.start(alice.run)
        cfg = NodeConfig.load(
            tmp_path / "bob", bootstrap=(alice.host.addrs()[0],), gateway="127.0.0.1:0"
        )
        bob = Node(cfg, key=keys["bob"], oracle=chain.oracle(poll_interval=0.1))
        await nursery.start(bob.run)
        assert alice.discovery is not None and alice.gateway_url is not None
        with trio.fail_after(WAIT):
            await alice.discovery.indexer.wait_for(await chain.block_number())
            await alice.discovery.refresh_trending()
        async with httpx.AsyncClient(base_url=alice.gateway_url, timeout=WAIT) as http:
            yield Net(chain, alice, bob, http)
        nursery.cancel_scope.cancel()


def ids(rows: list[dict[str, Any]]) -> list[int]:
    return [row["id"] for row in rows]


def feed_items(rows: list[dict[str, Any]]) -> set[tuple[str, str, int]]:
    return {(r["activity"], r["item_kind"], r["item"]["id"]) for r in rows}


# op, params, the HTTP route and query, and what the data must satisfy
OPERATIONS: list[tuple[str, dict[str, Any], str, dict[str, Any], Callable[[Any], bool]]] = [
    (
        "user",
        {"id": 1},
        "/v1/users/1",
        {},
        lambda u: u["handle"] == "alice" and u["follower_count"] == 3 and u["track_count"] == 2,
    ),
    ("user_by_handle", {"handle": "carol"}, "/v1/users/handle/carol", {}, lambda u: u["id"] == 3),
    ("user_by_handle", {"handle": "Carol"}, "/v1/users/handle/Carol", {}, lambda u: u["id"] == 3),
    ("user_tracks", {"id": 1}, "/v1/users/1/tracks", {}, lambda r: sorted(ids(r)) == [10, 11]),
    ("user_playlists", {"id": 1}, "/v1/users/1/playlists", {}, lambda r: ids(r) == [50]),
    (
        "user_reposts",
        {"id": 2},
        "/v1/users/2/reposts",
        {},
        lambda r: {(x["kind"], x["id"]) for x in r} == {("track", 10), ("playlist", 50)},
    ),
    ("followers", {"id": 1}, "/v1/users/1/followers", {}, lambda r: sorted(ids(r)) == [2, 3, 4]),
    ("following", {"id": 1}, "/v1/users/1/following", {}, lambda r: ids(r) == [2]),
    ("following", {"id": 4}, "/v1/users/4/following", {}, lambda r: ids(r) == [1]),
    (
        "feed",
        {"id": 3},
        "/v1/users/3/feed",
        {},
        lambda r: (
            feed_items(r)
            == {("upload", "track", 10), ("upload", "track", 11), ("upload", "playlist", 50)}
        ),
    ),
    (
        "feed",
        {"id": 1},
        "/v1/users/1/feed",
        {},
        lambda r: (
            feed_items(r)
            == {("upload", "track", 20), ("repost", "track", 10), ("repost", "playlist", 50)}
        ),
    ),
    (
        "track",
        {"id": 10},
        "/v1/tracks/10",
        {},
        lambda t: (
            t["title"] == "Night Drive"
            and t["user"]["id"] == 1
            and (t["repost_count"], t["favorite_count"]) == (1, 1)
        ),
    ),
    ("track_reposters", {"id": 10}, "/v1/tracks/10/reposts", {}, lambda r: ids(r) == [2]),
    ("track_savers", {"id": 10}, "/v1/tracks/10/favorites", {}, lambda r: ids(r) == [3]),
    (
        "playlist",
        {"id": 50},
        "/v1/playlists/50",
        {},
        lambda p: p["playlist_name"] == "Drive Mix" and p["track_ids"] == [10, 20, 11],
    ),
    (
        "playlist_tracks",
        {"id": 50},
        "/v1/playlists/50/tracks",
        {},
        lambda r: ids(r) == [10, 20, 11],
    ),
    ("playlist_reposters", {"id": 50}, "/v1/playlists/50/reposts", {}, lambda r: ids(r) == [2]),
    ("playlist_savers", {"id": 50}, "/v1/playlists/50/favorites", {}, lambda r: ids(r) == [3]),
    (
        "search_tracks",
        {"query": "night"},
        "/v1/tracks/search",
        {"query": "night"},
        lambda r: ids(r) == [10],
    ),
    (
        "search_tracks",
        {"query": "deleted"},
        "/v1/tracks/search",
        {"query": "deleted"},
        lambda r: r == [],
    ),
    (
        "search_users",
        {"query": "carol"},
        "/v1/users/search",
        {"query": "carol"},
        lambda r: ids(r) == [3],
    ),
    (
        "search_playlists",
        {"query": "drive"},
        "/v1/playlists/search",
        {"query": "drive"},
        lambda r: ids(r) == [50],
    ),
    (
        "trending",
        {},
        "/v1/tracks/trending",
        {},
        lambda r: ids(r) == [10, 11] and r[0]["score"] > r[1]["score"] > 0,
    ),
    (
        "trending",
        {"window": "all", "genre": "Rock"},
        "/v1/tracks/trending",
        {"time": "allTime", "genre": "Rock"},
        lambda r: ids(r) == [11],
    ),
    (
        "trending",
        {"window": "month", "genre": "electronic", "limit": 1},
        "/v1/tracks/trending",
        {"time": "month", "genre": "electronic", "limit": 1},
        lambda r: len(r) == 1 and r[0]["genre"] == "Electronic",
    ),
    (
        "status",
        {},
        "",  # not on /v1: the envelope carries it
        {},
        lambda s: s["latest_indexed_block"] is not None and len(s["digest"]) == 64,
    ),
]


async def test_every_operation_over_http_and_libp2p(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        for op, params, path, query, check in OPERATIONS:
            over_p2p = await net.ask(op, params)
            assert check(over_p2p), (op, params, over_p2p)
            if not path:
                continue
            response = await net.get(path, **query)
            assert response.status_code == 200, (path, response.text)
            assert response.headers["content-type"] == "application/json"
            body = response.json()
            assert body["data"] == over_p2p, path
            assert body["latest_indexed_block"] >= 1
        # the Audius clients' app_name is taken and ignored
        response = await net.get("/v1/users/1", app_name="coliving-test")
        assert response.json()["data"]["id"] == 1
        # a trailing slash and HEAD
        assert (await net.get("/v1/users/1/")).json()["data"]["id"] == 1
        head = await net.http.head("/v1/users/1")
        assert head.status_code == 200 and head.content == b""
        # by wallet (how a client that logged in finds its user), in any case
        wallet = (await net.get("/v1/users/3")).json()["data"]["wallet"]
        for spelling in (wallet, wallet.upper().replace("0X", "0x")):
            assert (await net.ask("user_by_wallet", {"wallet": spelling}))["id"] == 3
            got = await net.get(f"/v1/users/wallet/{spelling}")
            assert got.status_code == 200 and got.json()["data"]["id"] == 3


async def test_stream_redirects_to_the_gateways_ipfs(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        answer = await net.ask("stream", {"id": 10})
        assert answer == {
            "cid": CID_A,
            "path": f"/ipfs/{CID_A}",
            "url": f"{net.alice.gateway_url}/ipfs/{CID_A}",
        }
        response = await net.get("/v1/tracks/10/stream")
        assert response.status_code == 302
        assert response.headers["location"] == f"/ipfs/{CID_A}"
        assert response.json()["data"]["cid"] == CID_A
        for path in ("/v1/tracks/12/stream", "/v1/tracks/99/stream"):
            response = await net.get(path)
            assert response.status_code == 404 and "no track" in response.json()["error"]


async def test_pagination_edges_both_ways(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        first = await net.ask("followers", {"id": 1, "limit": 1})
        second = await net.ask("followers", {"id": 1, "limit": 1, "offset": 1})
        everyone = await net.ask("followers", {"id": 1, "limit": 100})
        assert len(first) == len(second) == 1 and first != second
        assert ids(everyone)[:2] == ids(first) + ids(second) and len(everyone) == 3
        assert await net.ask("followers", {"id": 1, "offset": 10000}) == []
        http = await net.get("/v1/users/1/followers", limit="1", offset="1")
        assert http.json()["data"] == second
        assert (await net.get("/v1/users/1/followers", offset=10000)).json()["data"] == []
        bad_pages: list[tuple[dict[str, Any], str]] = [
            ({"limit": 0}, "limit must be in 1..100"),
            ({"limit": 101}, "limit must be in 1..100"),
            ({"offset": -1}, "offset must be in 0..10000"),
            ({"offset": 10001}, "offset must be in 0..10000"),
            ({"limit": "x"}, "limit must be an integer"),
            ({"offset": "1.5"}, "offset must be an integer"),
        ]
        for bad, why in bad_pages:
            with pytest.raises(proto.DiscoveryQueryError) as refused:
                await net.ask("followers", {"id": 1, **bad})
            assert refused.value.status == 400 and why in refused.value.message
            response = await net.get("/v1/users/1/followers", **{k: str(v) for k, v in bad.items()})
            assert response.status_code == 400, bad
            assert response.json()["error"] == refused.value.message


P2P_REFUSALS: list[tuple[str, dict[str, Any], int, str]] = [
    ("user", {"id": 99}, 404, "no user 99"),
    ("user", {"id": "abc"}, 400, "id must be an integer"),
    ("user", {"id": True}, 400, "id must be an integer"),
    ("user", {"id": -1}, 400, "id must be in"),
    ("user", {}, 400, "id is required"),
    ("user", {"id": 1, "page": 2}, 400, "unknown parameters for user: page"),
    ("user_by_handle", {"handle": "nobody"}, 404, "no user with handle"),
    ("user_by_handle", {"handle": "x" * 31}, 400, "handle must be 1..30"),
    ("user_by_wallet", {"wallet": "0x" + "ab" * 20}, 404, "no user with wallet"),
    ("user_by_wallet", {"wallet": "0x12"}, 400, "wallet must be an address"),
    ("user_by_wallet", {"wallet": 5}, 400, "wallet must be an address"),
    ("user_by_wallet", {}, 400, "wallet must be an address"),
    ("user_tracks", {"id": 99}, 404, "no user 99"),
    ("feed", {"id": 99}, 404, "no user 99"),
    ("track", {"id": 12}, 404, "no track 12"),  # deleted
    ("track", {"id": 99}, 404, "no track 99"),
    ("track_reposters", {"id": 12}, 404, "no track 12"),
    ("track_savers", {"id": 99}, 404, "no track 99"),
    ("playlist", {"id": 99}, 404, "no playlist 99"),
    ("playlist_tracks", {"id": 99}, 404, "no playlist 99"),
    ("playlist_reposters", {"id": 10}, 404, "no playlist 10"),
    ("search_tracks", {}, 400, "query must be a string"),
    ("search_users", {"query": "  "}, 400, "query must be 1..200"),
    ("search_playlists", {"query": "x" * 201}, 400, "query must be 1..200"),
    ("trending", {"window": "allTime"}, 400, "window must be one of"),
    ("trending", {"genre": "Polka"}, 400, "genre must be one of"),
    ("nope", {}, 400, "unknown op 'nope'"),
]

HTTP_REFUSALS: list[tuple[str, dict[str, str], int, str]] = [
    ("/v1/users/99", {}, 404, "no user 99"),
    ("/v1/users/abc", {}, 400, "id must be an integer"),
    ("/v1/users/-1", {}, 400, "id must be an integer"),
    ("/v1/users/" + "9" * 19, {}, 400, "id must be in"),
    ("/v1/users/1", {"id": "2"}, 400, "unknown parameters for user: id"),
    ("/v1/users/1", {"foo": "1"}, 400, "unknown parameters for user: foo"),
    ("/v1/users/handle/nobody", {}, 404, "no user with handle"),
    ("/v1/users/wallet/0xnothex", {}, 400, "wallet must be an address"),
    ("/v1/users/99/tracks", {}, 404, "no user 99"),
    ("/v1/users/99/playlists", {}, 404, "no user 99"),
    ("/v1/users/99/reposts", {}, 404, "no user 99"),
    ("/v1/users/99/followers", {}, 404, "no user 99"),
    ("/v1/users/99/following", {}, 404, "no user 99"),
    ("/v1/users/99/feed", {}, 404, "no user 99"),
    ("/v1/tracks/12", {}, 404, "no track 12"),  # deleted
    ("/v1/tracks/99", {}, 404, "no track 99"),
    ("/v1/tracks/12/reposts", {}, 404, "no track 12"),
    ("/v1/tracks/99/favorites", {}, 404, "no track 99"),
    ("/v1/playlists/99", {}, 404, "no playlist 99"),
    ("/v1/playlists/99/tracks", {}, 404, "no playlist 99"),
    ("/v1/playlists/99/reposts", {}, 404, "no playlist 99"),
    ("/v1/playlists/99/favorites", {}, 404, "no playlist 99"),
    ("/v1/tracks/search", {}, 400, "query must be a string"),
    ("/v1/tracks/search", {"query": ""}, 400, "query must be 1..200"),
    ("/v1/users/search", {"query": "x" * 201}, 400, "query must be 1..200"),
    ("/v1/playlists/search", {"query": "a", "limit": "0"}, 400, "limit must be in 1..100"),
    ("/v1/tracks/trending", {"time": "day"}, 400, "time must be one of week, month, allTime"),
    ("/v1/tracks/trending", {"window": "all"}, 400, "unknown parameters for trending: window"),
    ("/v1/tracks/trending", {"genre": "Polka"}, 400, "genre must be one of"),
    ("/v1/tracks/10/nope", {}, 404, "no such route"),
    ("/v1/nope", {}, 404, "no such route"),
]


async def test_refusals_both_ways(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        for op, params, status, why in P2P_REFUSALS:
            with pytest.raises(proto.DiscoveryQueryError) as refused:
                await net.ask(op, params)
            assert refused.value.status == status and why in refused.value.message, (op, params)
        for path, query, status, why in HTTP_REFUSALS:
            response = await net.get(path, **query)
            assert response.status_code == status, (path, query, response.text)
            assert why in response.json()["error"], (path, query)
        twice = await net.http.get("/v1/users/1/tracks?limit=1&limit=2")
        assert twice.status_code == 400 and "limit given twice" in twice.json()["error"]
        # methods: POST only on the listen route, GET and HEAD elsewhere
        response = await net.http.post("/v1/users/1", json={})
        assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"
        response = await net.http.put("/v1/tracks/10/listen", json={})
        assert response.status_code == 405 and response.headers["allow"] == "POST"
        response = await net.http.get("/v1/tracks/10/listen")
        assert response.status_code == 405
        response = await net.http.post("/api/pins")
        assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"
        # a node without the discovery role has no /v1
        assert net.bob.gateway_url is not None
        async with httpx.AsyncClient(base_url=net.bob.gateway_url) as other:
            response = await other.get("/v1/users/1")
        assert response.status_code == 404 and "discovery" in response.json()["error"]


async def test_malformed_requests_count_against_the_peer(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        before = net.alice.conduct.points(net.bob.peer_id)
        stream = await net.bob.host.open_stream(net.alice.peer_id, [proto.PROTOCOL])
        await stream.write(frame(cbor2.dumps(["not", "a", "map"])))
        with trio.fail_after(WAIT):
            with pytest.raises(StreamError):
                while await stream.read(1024):
                    pass
                raise StreamError("closed, not reset")
            # the reset reaches bob before alice's handler has scored the
            # offence, and Conduct has no event to wait on
            while net.alice.conduct.points(net.bob.peer_id) <= before:  # noqa: ASYNC110
                await trio.sleep(0.01)
        # an unknown key or op is a newer client's: an error reply and no offence
        points = net.alice.conduct.points(net.bob.peer_id)
        stream = await net.bob.host.open_stream(net.alice.peer_id, [proto.PROTOCOL])
        await stream.write(frame(cbor2.dumps({"id": 7, "op": "status", "sig": b"x"})))
        with trio.fail_after(WAIT):
            data = await FrameReader(stream).read_frame(proto.MAX_RESPONSE)
        assert data is not None and cbor2.loads(data)["status"] == 400
        with pytest.raises(proto.DiscoveryQueryError):
            await net.ask("rm -rf", {})
        assert net.alice.conduct.points(net.bob.peer_id) <= points
        assert await net.ask("user", {"id": 1})  # still answered


async def test_listens_over_http(tmp_path: Path) -> None:
    listens = ListenConfig(anonymous_burst=2, anonymous_rate=0.01)
    async with network(tmp_path, listens=listens) as net:
        response = await net.http.post("/v1/tracks/10/listen", json={})
        assert response.status_code == 200, response.text
        assert response.json()["data"]["accepted"] is True
        response = await net.http.post("/v1/tracks/10/listen", json={"track_id": 10})
        assert response.status_code == 200, response.text
        response = await net.http.post("/v1/tracks/10/listen", json={})
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        for body, why in [
            (b'{"track_id": 11}', "not the path's"),
            (b'{"track_id": true}', "not the path's"),
            (b"[1]", "a listen is a JSON object"),
            (b"{", "not JSON"),
            (b"\xff", "not JSON"),
            (b'{"track_id": 10, "extra": 1}', ""),
        ]:
            response = await net.http.post(
                "/v1/tracks/10/listen", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 400, body
            assert why in response.json()["error"]
        response = await net.http.post("/v1/tracks/abc/listen", json={})
        assert response.status_code == 400
        response = await net.http.post(
            "/v1/tracks/10/listen", content=b" " * 4096 + b"{}", headers={"content-type": "x"}
        )
        assert response.status_code == 413

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b" " * 1000  # no Content-Length: the bound holds while reading

        response = await net.http.post("/v1/tracks/10/listen", content=chunked())
        assert response.status_code == 413
        statistics = net.alice.discovery.listens.statistics() if net.alice.discovery else None
        assert statistics is not None and statistics.accepted == 2
        assert statistics.rate_limited == 1
