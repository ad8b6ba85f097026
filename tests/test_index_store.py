"""SqliteIndex: the IndexStore contract (digest, rollback, atomic blocks) and
its queries (counters, search, trending, feed), without a chain."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store.index import GENESIS_DIGEST, IndexError_, Page, Rejection, Row
from store.sqlite_index import SqliteIndex, fts_query

DAY = 86_400
NOW = 1_750_000_000
CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


def h(n: int) -> bytes:
    return hashlib.sha256(n.to_bytes(8, "big")).digest()


def user(uid: int, handle: str, name: str | None = None, at: int = NOW) -> Row:
    return {
        "user_id": uid,
        "wallet": f"0x{uid:040x}",
        "handle": handle,
        "handle_lc": handle.lower(),
        "name": name,
        "bio": None,
        "location": None,
        "profile_picture": None,
        "cover_photo": None,
        "created_block": 1,
        "created_at": at,
        "updated_block": 1,
    }


def track(
    tid: int,
    owner: int,
    title: str,
    *,
    genre: str = "Electronic",
    tags: list[str] | None = None,
    at: int = NOW,
    deleted: bool = False,
) -> Row:
    return {
        "track_id": tid,
        "owner_id": owner,
        "title": title,
        "genre": genre,
        "mood": None,
        "tags": tags or [],
        "description": None,
        "release_date": None,
        "duration": 180.0,
        "stream_cid": CID,
        "original_cid": None,
        "preview_cid": None,
        "artwork": None,
        "deleted": deleted,
        "created_block": 1,
        "created_at": at,
        "updated_block": 1,
    }


def playlist(pid: int, owner: int, name: str, track_ids: list[int], at: int = NOW) -> Row:
    return {
        "playlist_id": pid,
        "owner_id": owner,
        "is_album": False,
        "playlist_name": name,
        "description": None,
        "track_ids": track_ids,
        "artwork": None,
        "deleted": False,
        "created_block": 1,
        "created_at": at,
        "updated_block": 1,
    }


def follow(a: int, b: int, at: int = NOW) -> Row:
    return {"follower_id": a, "followee_id": b, "block": 1, "created_at": at}


def social(u: int, kind: str, item: int, at: int = NOW) -> Row:
    return {"user_id": u, "kind": kind, "item_id": item, "block": 1, "created_at": at}


class Chain:
    """Writes numbered blocks into a store."""

    def __init__(self, store: SqliteIndex) -> None:
        self.store = store
        tip = store.tip()
        self.n = tip.number if tip else 0

    def block(self, *changes: tuple[Any, ...], timestamp: int = NOW) -> int:
        self.n += 1
        with self.store.block(self.n, h(self.n), h(self.n - 1), timestamp) as w:
            for change in changes:
                if change[0] == "reject":
                    w.reject(change[1])
                elif len(change) == 3:
                    w.put(change[0], change[1], change[2])
                else:
                    w.delete(change[0], change[1])
        return self.n


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteIndex]:
    s = SqliteIndex(tmp_path / "index.sqlite")
    yield s
    s.close()


def base(c: Chain) -> None:
    c.block(
        ("users", (1,), user(1, "Alice", "Alice A")),
        ("users", (2,), user(2, "bob", "Bob B")),
        ("users", (3,), user(3, "carol", "Carol Jazz")),
    )


def rejection(block: int) -> Rejection:
    return Rejection(block, 0, h(99), 1, "Track", 5, "Create", "metadata: nope")


def snapshot(s: SqliteIndex) -> dict[str, Any]:
    p = Page()
    return {
        "users": [s.user(i) for i in range(1, 5)],
        "tracks": [s.track(i) for i in range(10, 16)],
        "playlists": [s.playlist(50)],
        "followers": [s.followers(i, p) for i in range(1, 5)],
        "following": [s.following(i, p) for i in range(1, 5)],
        "reposts": [s.user_reposts(i, p) for i in range(1, 5)],
        "reposters": [s.reposters("track", i, p) for i in range(10, 16)],
        "savers": [s.savers("track", i, p) for i in range(10, 16)],
        "search": [s.search_tracks(q, p) for q in ("ho", "first", "jazz", "se")],
        "search_users": [s.search_users(q, p) for q in ("al", "b", "carol")],
        "feed": [s.feed(i, p) for i in range(1, 5)],
        "user_tracks": [s.user_tracks(i, p) for i in range(1, 5)],
        "rejections": s.rejections(p),
    }


# --- digest ----------------------------------------------------------------


def test_digest_is_deterministic_and_empty_blocks_keep_it(tmp_path: Path) -> None:
    one, two = SqliteIndex(tmp_path / "1.sqlite"), SqliteIndex(tmp_path / "2.sqlite")
    assert one.digest() == GENESIS_DIGEST and one.tip() is None
    for s in (one, two):
        c = Chain(s)
        base(c)
        c.block()  # empty
        c.block(("tracks", (10,), track(10, 1, "First")), ("reject", rejection(3)))
        c.block(("follows", (2, 1), follow(2, 1)), ("tracks", (10,)))
    for n in range(1, 5):
        a, b = one.block_at(n), two.block_at(n)
        assert a is not None and b is not None and a.digest == b.digest
    assert one.block_at(2).digest == one.block_at(1).digest  # type: ignore[union-attr]
    assert one.block_at(1).digest != GENESIS_DIGEST  # type: ignore[union-attr]
    # the definition, by hand, for block 3
    changes = [
        ["tracks", [10], track(10, 1, "First")],
        [3, 0, h(99), 1, "Track", 5, "Create", "metadata: nope"],
    ]
    prev = one.block_at(2).digest  # type: ignore[union-attr]
    want = hashlib.sha256(prev + cbor2.dumps([3, h(3), changes], canonical=True)).digest()
    assert one.block_at(3).digest == want  # type: ignore[union-attr]
    assert [b.number for b in one.recent_blocks(2)] == [4, 3]
    assert one.block_at(100).number == 4  # type: ignore[union-attr]
    assert one.block_at(0) is None
    one.close()
    two.close()


def test_block_numbers_must_grow_and_exceptions_leave_nothing(store: SqliteIndex) -> None:
    c = Chain(store)
    base(c)
    before = snapshot(store)
    with pytest.raises(ValueError), store.block(1, h(1), h(0), NOW):
        pass
    with pytest.raises(RuntimeError, match="boom"), store.block(2, h(2), h(1), NOW) as w:
        w.put("tracks", (10,), track(10, 1, "Ghost"))
        w.put("follows", (2, 1), follow(2, 1))
        w.reject(rejection(2))
        assert w.get("tracks", (10,)) is not None  # reads see own writes
        raise RuntimeError("boom")
    assert store.tip().number == 1  # type: ignore[union-attr]
    assert snapshot(store) == before
    assert store.search_tracks("ghost", Page()) == []


def test_round_trip_is_exact(store: SqliteIndex) -> None:
    c = Chain(store)
    base(c)
    odd = {**follow(1, 2), "extra": 1.0}  # not the plain shape: kept as JSON
    c.block(("tracks", (10,), track(10, 1, "Ü")), ("follows", (1, 2), odd))
    with store.block(99, h(99), h(2), NOW) as w:
        got = w.get("tracks", (10,))
        assert got == track(10, 1, "Ü") and isinstance(got["duration"], float)
        f = w.get("follows", (1, 2))
        assert f == odd and isinstance(f["extra"], float)
        assert w.get("users", (1,)) == user(1, "Alice", "Alice A")
        assert w.user_by_handle("alice") == user(1, "Alice", "Alice A")
        assert w.user_by_wallet(f"0x{2:040x}") == user(2, "bob", "Bob B")
        assert w.get("reposts", (1, "track", 10)) is None
        w.delete("reposts", (1, "track", 10))  # absent: a no-op, still journaled


# --- rollback ----------------------------------------------------------------


def test_rollback_restores_rows_counters_search_and_digest(store: SqliteIndex) -> None:
    c = Chain(store)
    base(c)
    c.block(
        ("tracks", (10,), track(10, 1, "House First", tags=["house"])),
        ("tracks", (11,), track(11, 2, "Second")),
        ("follows", (2, 1), follow(2, 1)),
        ("reposts", (2, "track", 10), social(2, "track", 10)),
    )
    mark = c.n
    before, digest = snapshot(store), store.digest()
    c.block(
        ("tracks", (10,), {**track(10, 1, "Renamed Jazz"), "updated_block": 3}),
        ("follows", (2, 1)),
        ("follows", (3, 1), follow(3, 1)),
        ("reposts", (2, "track", 10)),
        ("saves", (3, "track", 11), social(3, "track", 11)),
        ("users", (4,), user(4, "dave")),
        ("reject", rejection(3)),
    )
    c.block(("tracks", (11,), {**track(11, 2, "Second"), "deleted": True}))
    assert store.track(11)["deleted"] is True  # type: ignore[index]
    assert store.user(1)["follower_count"] == 1  # type: ignore[index]
    assert store.rollback_to(mark) == 2
    assert store.digest() == digest and store.tip().number == mark  # type: ignore[union-attr]
    assert snapshot(store) == before
    assert store.user(1)["follower_count"] == 1  # type: ignore[index]
    assert store.rollback_to(mark) == 0
    # the chain goes on from there, the same as before
    c.n = mark
    c.block()
    assert store.digest() == digest


OPS = st.lists(
    st.tuples(
        st.sampled_from(["track", "del_track", "follow", "unfollow", "repost", "unrepost"]),
        st.integers(1, 3),
        st.integers(10, 12),
    ),
    max_size=25,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(OPS, st.integers(1, 4))
def test_rollback_equals_never_applied(tmp_path_factory: Any, ops: list[Any], per: int) -> None:
    d = tmp_path_factory.mktemp("p")
    clean, dirty = SqliteIndex(d / "clean.sqlite"), SqliteIndex(d / "dirty.sqlite")
    try:
        for s in (clean, dirty):
            c = Chain(s)
            base(c)
            c.block(("tracks", (10,), track(10, 1, "Seed Song")))
        c = Chain(dirty)
        for i in range(0, len(ops), per):
            changes: list[tuple[Any, ...]] = []
            for op, u, item in ops[i : i + per]:
                if op == "track":
                    changes.append(("tracks", (item,), track(item, u, f"T{item} {op}")))
                elif op == "del_track":
                    changes.append(("tracks", (item,), track(item, u, "gone", deleted=True)))
                elif op == "follow":
                    changes.append(("follows", (u, u % 3 + 1), follow(u, u % 3 + 1, NOW + i)))
                elif op == "unfollow":
                    changes.append(("follows", (u, u % 3 + 1)))
                elif op == "repost":
                    changes.append(("reposts", (u, "track", item), social(u, "track", item)))
                else:
                    changes.append(("reposts", (u, "track", item)))
            c.block(*changes)
        dirty.rollback_to(2)
        assert dirty.digest() == clean.digest()
        assert snapshot(dirty) == snapshot(clean)
    finally:
        clean.close()
        dirty.close()


# --- queries -----------------------------------------------------------------


def test_counters_and_shapes(store: SqliteIndex) -> None:
    c = Chain(store)
    base(c)
    c.block(
        ("tracks", (10,), track(10, 1, "One")),
        ("tracks", (11,), track(11, 1, "Two")),
        ("tracks", (12,), track(12, 1, "Three", deleted=True)),
        ("playlists", (50,), playlist(50, 2, "Mix", [12, 11, 10])),
        ("follows", (2, 1), follow(2, 1)),
        ("follows", (3, 1), follow(3, 1, NOW + 1)),
        ("follows", (1, 3), follow(1, 3)),
        ("reposts", (2, "track", 10), social(2, "track", 10)),
        ("reposts", (2, "playlist", 50), social(2, "playlist", 50, NOW + 5)),
        ("saves", (3, "track", 10), social(3, "track", 10)),
    )
    store.add_plays([(10, 5), (10, 2), (99, 1)])
    u = store.user(1)
    assert u is not None
    assert set(u) == {
        "id", "handle", "name", "bio", "location", "wallet", "profile_picture", "cover_photo",
        "follower_count", "followee_count", "track_count", "playlist_count", "repost_count",
        "created_at",
    }  # fmt: skip
    assert (u["follower_count"], u["followee_count"], u["track_count"]) == (2, 1, 2)
    assert store.user(2)["repost_count"] == 2  # type: ignore[index]
    assert store.user(2)["playlist_count"] == 1  # type: ignore[index]
    t = store.track(10)
    assert t is not None and t["user"]["id"] == 1 and t["user"]["handle"] == "Alice"
    assert (t["play_count"], t["repost_count"], t["favorite_count"]) == (7, 1, 1)
    assert t["duration"] == 180.0 and t["deleted"] is False
    gone = store.track(12)
    assert gone is not None and gone["deleted"] is True
    p = store.playlist(50)
    assert p is not None and p["track_ids"] == [11, 10] and p["track_count"] == 2
    assert p["playlist_name"] == "Mix" and p["repost_count"] == 1
    assert [x["id"] for x in store.playlist_tracks(50, Page())] == [11, 10]
    assert [x["id"] for x in store.playlist_tracks(50, Page(limit=1, offset=1))] == [10]
    assert [x["id"] for x in store.user_tracks(1, Page())] == [11, 10]
    assert [x["id"] for x in store.followers(1, Page())] == [3, 2]  # newest first
    assert [x["id"] for x in store.followers(1, Page(limit=1, offset=1))] == [2]
    assert [x["id"] for x in store.following(1, Page())] == [3]
    reposts = store.user_reposts(2, Page())
    assert [(r["kind"], r["id"]) for r in reposts] == [("playlist", 50), ("track", 10)]
    assert store.user_by_handle("ALICE")["id"] == 1  # type: ignore[index]
    assert store.user_by_handle("nobody") is None and store.user(99) is None
    assert store.track(99) is None and store.playlist(99) is None
    assert [r["id"] for r in store.savers("track", 10, Page())] == [3]
    # deleting moves the counters
    c.block(("tracks", (10,), {**track(10, 1, "One"), "deleted": True}), ("follows", (2, 1)))
    u = store.user(1)
    assert u is not None and (u["follower_count"], u["track_count"]) == (1, 1)
    assert [r["kind"] for r in store.user_reposts(2, Page())] == ["playlist"]


def test_search(store: SqliteIndex) -> None:
    c = Chain(store)
    base(c)
    c.block(
        ("tracks", (10,), track(10, 1, "Deep House Nights", tags=["chill"])),
        ("tracks", (11,), track(11, 2, "House of Café")),
        ("tracks", (12,), track(12, 2, "Houseboat", genre="Jazz")),
        ("tracks", (13,), track(13, 3, "Other")),
        ("playlists", (50,), playlist(50, 2, "Summer Mix", [10])),
        ("reposts", (3, "track", 11), social(3, "track", 11)),
    )
    assert {t["id"] for t in store.search_tracks("hou", Page())} == {10, 11, 12}
    assert [t["id"] for t in store.search_tracks("house ni", Page())] == [10]
    assert [t["id"] for t in store.search_tracks("cafe", Page())] == [11]  # diacritics
    assert [t["id"] for t in store.search_tracks("chi", Page())] == [10]  # tags
    assert [t["id"] for t in store.search_tracks("jazz", Page())] == [12]  # genre
    assert len(store.search_tracks("hou", Page(limit=2))) == 2
    assert len(store.search_tracks("hou", Page(limit=2, offset=2))) == 1
    # equal relevance: the reposted one first (else the newer id)
    c.block(
        ("tracks", (14,), track(14, 3, "Twin Song")),
        ("tracks", (15,), track(15, 3, "Twin Song")),
        ("tracks", (16,), track(16, 3, "Twin")),
    )
    assert [t["id"] for t in store.search_tracks("twin so", Page())] == [15, 14]
    c.block(("saves", (1, "track", 14), social(1, "track", 14)))
    assert [t["id"] for t in store.search_tracks("twin so", Page())] == [14, 15]
    assert store.search_tracks("twin", Page())[0]["id"] == 16  # shorter: bm25 first
    for q in ("", "  ", '"*()-:^', "AND", "OR NOT", "NEAR(", "a*", 'x"y'):
        store.search_tracks(q, Page())  # never raises
    assert store.search_tracks('"*()-:^', Page()) == []
    assert fts_query('"*()') is None and fts_query('a"b') == '"a"* "b"*'
    assert [u["id"] for u in store.search_users("al", Page())] == [1]
    assert [u["id"] for u in store.search_users("jaz", Page())] == [3]  # names
    assert [p["id"] for p in store.search_playlists("summ", Page())] == [50]
    c.block(("tracks", (11,), {**track(11, 2, "House of Café"), "deleted": True}))
    assert {t["id"] for t in store.search_tracks("hou", Page())} == {10, 12}
    c.block(("users", (1,), user(1, "Zed")))
    assert store.search_users("al", Page()) == []
    assert [u["id"] for u in store.search_users("zed", Page())] == [1]


def test_trending(tmp_path: Path) -> None:
    clock = [float(NOW)]
    store = SqliteIndex(tmp_path / "t.sqlite", clock=lambda: clock[0])
    c = Chain(store)
    base(c)
    old = NOW - 20 * DAY
    c.block(
        ("tracks", (10,), track(10, 1, "A", at=NOW - DAY)),
        ("tracks", (11,), track(11, 1, "B", genre="Jazz", at=NOW - DAY)),
        ("tracks", (12,), track(12, 1, "C", at=NOW - 400 * DAY)),
        ("tracks", (13,), track(13, 1, "D")),
        ("reposts", (2, "track", 11), social(2, "track", 11, old)),
        ("saves", (3, "track", 11), social(3, "track", 11, old)),
        ("reposts", (2, "track", 10), social(2, "track", 10, NOW - DAY)),
    )
    clock[0] = NOW - 25 * DAY
    store.add_plays([(12, 100)])
    clock[0] = NOW
    store.add_plays([(10, 1), (13, 1)])
    store.refresh_trending(NOW)

    def ids(window: Any, genre: str | None = None, page: Page | None = None) -> list[int]:
        return [t["id"] for t in store.trending(window, genre, page or Page())]

    assert ids("week") == [10, 13]  # 10: 1 play + 1 repost; 13: 1 play
    assert ids("month") == [11, 10, 12, 13]  # 12: 100 plays, but 400 days old
    assert ids("all") == [11, 10, 12, 13]
    assert ids("month", "Jazz") == [11]
    assert ids("month", page=Page(limit=2, offset=1)) == [10, 12]
    top = store.trending("week", None, Page())[0]
    decay = (1 + 1 / 30) ** 1.5
    assert top["score"] == pytest.approx(3 / decay) and top["title"] == "A"
    c.block(("tracks", (12,), {**track(12, 1, "C", at=NOW - 400 * DAY), "deleted": True}))
    assert ids("month") == [11, 10, 13]  # deleted: gone before the next refresh
    store.refresh_trending(NOW)
    assert ids("all") == [11, 10, 13]
    store.close()


def test_feed(store: SqliteIndex) -> None:
    c = Chain(store)
    base(c)
    c.block(
        ("follows", (1, 2), follow(1, 2)),
        ("follows", (1, 3), follow(1, 3)),
        ("tracks", (10,), track(10, 2, "B up", at=NOW + 10)),
        ("tracks", (11,), track(11, 3, "C up", at=NOW + 20)),
        ("tracks", (12,), track(12, 1, "mine", at=NOW + 30)),
        ("tracks", (13,), track(13, 2, "B gone", at=NOW + 40, deleted=True)),
        ("playlists", (50,), playlist(50, 3, "C mix", [10], at=NOW + 25)),
        ("reposts", (3, "track", 10), social(3, "track", 10, NOW + 50)),
        ("reposts", (2, "track", 12), social(2, "track", 12, NOW + 5)),
        ("reposts", (3, "track", 12), social(3, "track", 12, NOW + 35)),
    )
    feed = store.feed(1, Page())
    got = [(f["activity"], f["item_kind"], f["item"]["id"], f["actor_id"]) for f in feed]
    assert got == [
        ("repost", "track", 10, 3),
        ("repost", "track", 12, 3),
        ("upload", "playlist", 50, 3),
        ("upload", "track", 11, 3),
    ]
    assert feed[0]["activity_at"] == NOW + 50 and feed[0]["item"]["user"]["id"] == 2
    assert [f["item"]["id"] for f in store.feed(1, Page(limit=2, offset=1))] == [12, 50]
    assert store.feed(2, Page()) == []  # follows nobody
    c.block(("tracks", (10,), {**track(10, 2, "B up", at=NOW + 10), "deleted": True}))
    assert [f["item"]["id"] for f in store.feed(1, Page())] == [12, 50, 11]


# --- the file --------------------------------------------------------------


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    s = SqliteIndex(path)
    c = Chain(s)
    base(c)
    c.block(("tracks", (10,), track(10, 1, "House")), ("reject", rejection(2)))
    s.add_plays([(10, 3)])
    s.refresh_trending(NOW)
    before, digest = snapshot(s), s.digest()
    s.close()
    s = SqliteIndex(path)
    assert snapshot(s) == before and s.digest() == digest
    assert s.tip().number == 2  # type: ignore[union-attr]
    assert [t["id"] for t in s.trending("all", None, Page())] == [10]
    s.close()


def test_bad_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(IndexError_, match="not a usable index"):
        SqliteIndex(junk)
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE x (y)")
    db.commit()
    db.close()
    with pytest.raises(IndexError_, match="not a discovery index"):
        SqliteIndex(other)
    future = tmp_path / "future.sqlite"
    SqliteIndex(future).close()
    db = sqlite3.connect(future)
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(IndexError_, match="schema version 99"):
        SqliteIndex(future)


def test_bulk_load_matches_blocks(tmp_path: Path) -> None:
    rows: dict[str, list[Row]] = {
        "users": [user(1, "alice"), user(2, "bob")],
        "tracks": [track(10, 1, "House", tags=["deep"]), track(11, 2, "x", deleted=True)],
        "follows": [follow(2, 1)],
        "reposts": [social(2, "track", 10)],
        "saves": [social(2, "track", 10)],
    }
    bulk = SqliteIndex(tmp_path / "bulk.sqlite")
    bulk.bulk_load(**rows)
    blocks = SqliteIndex(tmp_path / "blocks.sqlite")
    keys = {
        "users": ("user_id",),
        "tracks": ("track_id",),
        "follows": ("follower_id", "followee_id"),
    }
    keys |= {"reposts": ("user_id", "kind", "item_id"), "saves": ("user_id", "kind", "item_id")}
    Chain(blocks).block(
        *((t, tuple(r[k] for k in keys[t]), r) for t, rs in rows.items() for r in rs)
    )
    snap = snapshot(bulk)
    assert snap["tracks"][0]["favorite_count"] == 1
    assert {**snap, "rejections": []} == {**snapshot(blocks), "rejections": []}
    bulk.close()
    blocks.close()


def test_rejections_keep_huge_ids(store: SqliteIndex) -> None:
    c = Chain(store)
    big = Rejection(1, 3, h(7), 2**256 - 1, "Track", 2**63, "Create", "entity id out of range")
    c.block(("reject", rejection(1)), ("reject", big))
    assert store.rejections(Page()) == [big, rejection(1)]
    assert store.rejections(Page(limit=1, offset=1)) == [rejection(1)]
    assert store.digest() != GENESIS_DIGEST


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    tracks=st.lists(
        st.tuples(st.integers(2, 6), st.integers(0, 5), st.booleans()), min_size=4, max_size=25
    ),
    reposts=st.lists(
        st.tuples(st.integers(2, 6), st.integers(0, 24), st.integers(0, 5)), min_size=3
    ),
    follows=st.sets(st.integers(2, 6), min_size=2),
    limit=st.integers(1, 6),
    offset=st.integers(0, 8),
)
def test_feed_matches_its_definition(
    tmp_path_factory: pytest.TempPathFactory,
    tracks: list[tuple[int, int, bool]],
    reposts: list[tuple[int, int, int]],
    follows: set[int],
    limit: int,
    offset: int,
) -> None:
    """The feed's top-k merge against the definition, computed by brute force:
    every upload and repost of a followee, each item at its newest activity
    (uploads before reposts at equal times), newest first; many equal times."""
    store = SqliteIndex(tmp_path_factory.mktemp("feed") / "i.sqlite")
    track_rows = [
        track(i + 1, owner, f"t{i}", at=NOW + at, deleted=deleted)
        for i, (owner, at, deleted) in enumerate(tracks)
    ]
    repost_rows: dict[tuple[int, int], Row] = {
        (u, t + 1): {"user_id": u, "kind": "track", "item_id": t + 1, "block": 1,
                     "created_at": NOW + at}
        for u, t, at in reposts
        if t < len(tracks) and tracks[t][0] != u
    }  # fmt: skip
    store.bulk_load(
        users=[user(u, f"u{u}") for u in range(1, 7)],
        tracks=track_rows,
        follows=[{"follower_id": 1, "followee_id": f, "block": 1, "created_at": NOW}
                 for f in follows],
        reposts=list(repost_rows.values()),
    )  # fmt: skip
    activity: dict[int, tuple[int, int, int]] = {}  # track -> (-at, act, actor)
    for row in track_rows:
        if row["owner_id"] in follows and not row["deleted"]:
            key = (-row["created_at"], 0, row["owner_id"])
            activity[row["track_id"]] = min(activity.get(row["track_id"], key), key)
    for (u, t), row in repost_rows.items():
        if u in follows and not track_rows[t - 1]["deleted"]:
            key = (-row["created_at"], 1, u)
            activity[t] = min(activity.get(t, key), key)
    expected = sorted(activity.items(), key=lambda e: (e[1][0], e[1][1], "track", -e[0], e[1][2]))
    want = [
        (t, "repost" if act else "upload", -neg_at, actor)
        for t, (neg_at, act, actor) in expected[offset : offset + limit]
    ]
    got = [
        (i["item"]["id"], i["activity"], i["activity_at"], i["actor_id"])
        for i in store.feed(1, Page(limit=limit, offset=offset))
    ]
    store.close()
    assert got == want
