"""The discovery query API: parameter checks (against a stand-in index), the
``/coliving/discovery/1.0.0`` wire format, and every operation on a real
discovery node over HTTP (``/v1``) and over libp2p."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from discovery.api import (
    MAX_ID,
    OPS,
    APIError,
    BadRequest,
    DiscoveryAPI,
    NotFound,
    parse_params,
)
from p2p.abc import StreamError
from protocols import discovery as proto
from protocols.cid import encode_uvarint
from protocols.errors import DecodingError, NoAnswerError, TruncatedError, is_offence
from protocols.wire import FrameReader, frame
from store.index import Page
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
