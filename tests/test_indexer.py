"""The indexer on the embedded chain: every rule of docs/discovery-rules.md,
accepted and refused, through real signed transactions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest
import trio

from chain.errors import ChainRevert
from chain.local import LocalChain, open_chain
from discovery import rules
from store.index import Page
from tests.music import CID_B, Discovery, Wallet, open_discovery, track_metadata


@pytest.fixture
async def chain() -> LocalChain:
    return await open_chain()


@pytest.fixture
async def disco(chain: LocalChain, tmp_path: Path) -> AsyncIterator[Discovery]:
    d = open_discovery(chain, tmp_path / "index.sqlite")
    yield d
    d.store.close()


async def outcome(d: Discovery, act: Awaitable[int]) -> str:
    """'ok', or the reason the rules recorded for refusing the action."""
    before = d.indexer.rejected
    with trio.fail_after(30):
        await act
        await d.sync()
    if d.indexer.rejected == before:
        return "ok"
    return d.store.rejections(Page(limit=1))[0].reason


async def test_users(chain: LocalChain, disco: Discovery) -> None:
    alice, bob, eve = Wallet(chain, 1), Wallet(chain, 2), Wallet(chain, 3)
    assert await outcome(disco, alice.sign_up("Alice", name="Alice A", bio="hi")) == "ok"
    assert disco.store.user_by_handle("alice") is not None
    assert "taken" in await outcome(disco, bob.sign_up("ALICE"))
    assert "reserved" in await outcome(disco, bob.sign_up("trending"))
    assert "reserved" in await outcome(disco, bob.sign_up("electronic"))  # a genre
    assert "handle must be" in await outcome(disco, bob.sign_up("bob smith"))
    assert "handle must be" in await outcome(disco, bob.sign_up("b" * 31))
    assert "exists" in await outcome(disco, Wallet(chain, 1).sign_up("other"))
    # one user per wallet
    assert "already has a user" in await outcome(
        disco, alice.act("User", 9, "Create", json.dumps({"handle": "alice2"}), user_id=9)
    )
    assert "entity id is its user id" in await outcome(
        disco, bob.act("User", 5, "Create", json.dumps({"handle": "bob"}))
    )
    assert "bio" in await outcome(disco, bob.sign_up("bob", bio="x" * 257))
    assert "unknown keys" in await outcome(disco, bob.sign_up("bob", wallet="0x00"))
    assert await outcome(disco, bob.sign_up("bob")) == "ok"
    # update: own only, signer must be the wallet
    assert "signer is not" in await outcome(
        disco, eve.act("User", 1, "Update", json.dumps({"bio": "pwned"}), user_id=1)
    )
    assert "updates only itself" in await outcome(
        disco, alice.act("User", 2, "Update", json.dumps({"bio": "x"}))
    )
    assert "taken" in await outcome(
        disco, bob.act("User", 2, "Update", json.dumps({"handle": "alice"}))
    )
    assert await outcome(disco, alice.act("User", 1, "Update", json.dumps({"bio": "new"}))) == "ok"
    row = disco.store.user(1)
    assert row is not None and row["bio"] == "new" and row["name"] == "Alice A"
    assert await outcome(disco, alice.act("User", 1, "Update", json.dumps({"name": None}))) == "ok"
    row = disco.store.user(1)
    assert row is not None and row["name"] is None
    assert "no user 77" in await outcome(disco, Wallet(chain, 77).act("User", 77, "Update", "{}"))


async def test_follows(chain: LocalChain, disco: Discovery) -> None:
    alice, bob = Wallet(chain, 1), Wallet(chain, 2)
    await alice.sign_up("alice")
    await bob.sign_up("bob")
    assert "itself" in await outcome(disco, alice.act("User", 1, "Follow"))
    assert "no user 42" in await outcome(disco, alice.act("User", 42, "Follow"))
    assert "does not follow" in await outcome(disco, alice.act("User", 2, "Unfollow"))
    assert await outcome(disco, alice.act("User", 2, "Follow")) == "ok"
    assert "already follows" in await outcome(disco, alice.act("User", 2, "Follow"))
    assert "carries no metadata" in await outcome(
        disco, alice.act("User", 2, "Unfollow", '{"a":1}')
    )
    followers = disco.store.followers(2, Page())
    assert [u["id"] for u in followers] == [1]
    assert await outcome(disco, alice.act("User", 2, "Unfollow")) == "ok"
    assert disco.store.followers(2, Page()) == []


async def test_tracks(chain: LocalChain, disco: Discovery) -> None:
    alice, bob = Wallet(chain, 1), Wallet(chain, 2)
    await alice.sign_up("alice")
    await bob.sign_up("bob")
    ok = alice.act("Track", 10, "Create", track_metadata("First", tags=["House", "house"]))
    assert await outcome(disco, ok) == "ok"
    track = disco.store.track(10)
    assert track is not None and track["title"] == "First" and track["tags"] == ["house"]
    assert "exists" in await outcome(disco, bob.act("Track", 10, "Create", track_metadata()))
    bad = {
        "genre": ("genre", track_metadata(genre="Polka")),
        "missing": ("missing", json.dumps({"title": "x"})),
        "not json": ("not valid JSON", "{title"),
        "not an object": ("JSON object", "[1]"),
        "duplicate key": ("twice", '{"title":"a","title":"b"}'),
        "nan": ("not JSON", track_metadata(duration=float("nan")).replace("NaN", "NaN")),
        "cid": ("not a CID", track_metadata(stream_cid="nope")),
        "duration": ("duration", track_metadata(duration=0)),
        "description": ("description", track_metadata(description="d" * 2501)),
        "date": ("date", track_metadata(release_date="2026-13-01")),
        "tags": ("tags", track_metadata(tags=["t"] * 11)),
        "artwork": ("unknown sizes", track_metadata(artwork={"9x9": CID_B})),
    }
    for i, (name, (reason, metadata)) in enumerate(bad.items()):
        got = await outcome(disco, alice.act("Track", 100 + i, "Create", metadata))
        assert reason in got, name
    # oversized: the contract refuses it before the indexer sees it (and the
    # rule refuses it from any contract that lets it through)
    before = disco.indexer.applied + disco.indexer.rejected
    oversized = track_metadata(description="é" * 4200)  # 8400 bytes
    with pytest.raises(ChainRevert) as refused:
        await alice.act("Track", 99, "Create", oversized)
    assert refused.value.name == "MetadataTooLarge"
    await disco.sync()
    assert disco.indexer.applied + disco.indexer.rejected == before
    with pytest.raises(rules.Refused, match="over 8192 bytes"):
        rules.parse_metadata(oversized)
    # someone else's track
    assert "belongs to user 1" in await outcome(
        disco, bob.act("Track", 10, "Update", json.dumps({"title": "Mine"}))
    )
    assert "belongs to user 1" in await outcome(disco, bob.act("Track", 10, "Delete"))
    # a forged signature: bob signs as alice
    assert "signer is not" in await outcome(
        disco, alice.act("Track", 11, "Create", track_metadata(), key=bob.key)
    )
    assert (
        await outcome(
            disco, alice.act("Track", 10, "Update", json.dumps({"title": "Renamed", "mood": None}))
        )
        == "ok"
    )
    track = disco.store.track(10)
    assert track is not None and track["title"] == "Renamed" and track["genre"] == "Electronic"
    assert "title is required" in await outcome(
        disco, alice.act("Track", 10, "Update", json.dumps({"title": None}))
    )
    assert await outcome(disco, alice.act("Track", 10, "Delete")) == "ok"
    assert "no track 10" in await outcome(disco, alice.act("Track", 10, "Delete"))
    assert "no track 10" in await outcome(disco, bob.act("Track", 10, "Repost"))
    assert "exists" in await outcome(disco, alice.act("Track", 10, "Create", track_metadata()))
    assert disco.store.user_tracks(1, Page()) == []
    assert disco.store.search_tracks("Renamed", Page()) == []


async def test_playlists_albums_reposts_saves(chain: LocalChain, disco: Discovery) -> None:
    alice, bob = Wallet(chain, 1), Wallet(chain, 2)
    await alice.sign_up("alice")
    await bob.sign_up("bob")
    await alice.upload(10, "A1")
    await alice.upload(11, "A2")
    await bob.upload(20, "B1")
    meta = json.dumps({"playlist_name": "Mix", "track_ids": [11, 20, 10]})
    assert await outcome(disco, bob.act("Playlist", 50, "Create", meta)) == "ok"
    playlist = disco.store.playlist(50)
    assert playlist is not None and playlist["track_ids"] == [11, 20, 10]
    missing = json.dumps({"playlist_name": "Bad", "track_ids": [999]})
    assert "no track 999" in await outcome(disco, bob.act("Playlist", 51, "Create", missing))
    album = json.dumps({"playlist_name": "LP", "track_ids": [10, 20]})
    assert "owner's tracks" in await outcome(disco, alice.act("Album", 52, "Create", album))
    album = json.dumps({"playlist_name": "LP", "track_ids": [10, 11]})
    assert await outcome(disco, alice.act("Album", 52, "Create", album)) == "ok"
    assert "no playlist 52" in await outcome(disco, alice.act("Playlist", 52, "Delete"))
    assert "exists" in await outcome(disco, bob.act("Playlist", 52, "Create", meta))
    assert "belongs to user 2" in await outcome(
        disco, alice.act("Playlist", 50, "Update", json.dumps({"playlist_name": "x"}))
    )
    # reposts and saves
    assert "its own" in await outcome(disco, alice.act("Track", 10, "Repost"))
    assert "its own" in await outcome(disco, alice.act("Album", 52, "Save"))
    assert await outcome(disco, bob.act("Track", 10, "Repost")) == "ok"
    assert "already reposted" in await outcome(disco, bob.act("Track", 10, "Repost"))
    assert await outcome(disco, bob.act("Album", 52, "Save")) == "ok"
    assert "already saved" in await outcome(disco, bob.act("Album", 52, "Save"))
    assert "no playlist 52" in await outcome(disco, bob.act("Playlist", 52, "Repost"))
    assert await outcome(disco, alice.act("Playlist", 50, "Save")) == "ok"
    assert "has not reposted" in await outcome(disco, alice.act("Track", 11, "Unrepost"))
    assert [u["id"] for u in disco.store.reposters("track", 10, Page())] == [2]
    assert [u["id"] for u in disco.store.savers("playlist", 52, Page())] == [2]
    assert await outcome(disco, bob.act("Track", 10, "Unrepost")) == "ok"
    assert disco.store.reposters("track", 10, Page()) == []
    # a deleted track leaves the playlist's listing
    assert await outcome(disco, alice.act("Track", 11, "Delete")) == "ok"
    playlist = disco.store.playlist(50)
    assert playlist is not None and playlist["track_ids"] == [20, 10]
    assert [t["id"] for t in disco.store.playlist_tracks(50, Page())] == [20, 10]
    assert "no track 11" in await outcome(
        disco, bob.act("Playlist", 50, "Update", json.dumps({"track_ids": [11]}))
    )
    assert await outcome(disco, bob.act("Playlist", 50, "Delete")) == "ok"
    assert disco.store.user_playlists(2, Page()) == []


async def test_unknown_types_and_actions(chain: LocalChain, disco: Discovery) -> None:
    alice = Wallet(chain, 1)
    await alice.sign_up("alice")
    assert "unknown entity type" in await outcome(disco, alice.act("Comment", 1, "Create", "{}"))
    assert "has no action" in await outcome(disco, alice.act("Track", 1, "Verify"))
    assert "has no action" in await outcome(disco, alice.act("User", 1, "Delete"))
    assert "out of range" in await outcome(disco, alice.act("Track", 2**63, "Create", "{}"))


async def test_two_indexers_agree_and_restart_resumes(chain: LocalChain, tmp_path: Path) -> None:
    alice, bob = Wallet(chain, 1), Wallet(chain, 2)
    one = open_discovery(chain, tmp_path / "one.sqlite")
    await alice.sign_up("alice")
    await bob.sign_up("bob")
    await alice.upload(10)
    await one.sync()
    await bob.act("User", 1, "Follow")
    await bob.act("Track", 10, "Save")
    await bob.act("Track", 10, "Save")  # refused: also part of the digest
    head = await one.sync()
    one.store.close()
    reopened = open_discovery(chain, tmp_path / "one.sqlite")
    assert reopened.indexer.tip is not None and reopened.indexer.tip.number == head
    two = open_discovery(chain, tmp_path / "two.sqlite")
    await two.sync()
    assert two.store.digest() == reopened.store.digest() != bytes(32)
    for n in range(chain.deployment.entity_manager_block, head + 1):
        a, b = reopened.store.block_at(n), two.store.block_at(n)
        assert (a and a.digest) == (b and b.digest), n
