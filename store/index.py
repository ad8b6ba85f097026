"""The discovery index: the interface every index backend implements.

The discovery node's indexer (discovery/indexer.py) turns ``ManageEntity``
events into row changes; a backend (:mod:`store.sqlite_index`, the embedded
default; a PostgreSQL one can follow) stores them, keeps each block's changes
undoable for reorgs, keeps a running digest of the applied changes, and
answers the queries of the discovery API.

Writing is one block at a time, through a :class:`BlockWriter` that
:meth:`IndexStore.block` opens; every row change goes through its ``put`` /
``delete`` (which journal the old row so :meth:`IndexStore.rollback_to` can
undo the block) or its ``reject`` (a refused action, kept with its reason).
When the ``with`` block ends without an exception the changes commit, in
one transaction with the block's record (number, hash, parent hash,
timestamp, digest); an exception discards them all.

The digest of a block is ``sha256(previous digest || canonical encoding of
[number, hash, changes])``, where ``changes`` are, in order, each
``(table, key, new row or None)`` and each rejection; the genesis digest is
32 zero bytes. A block with no changes and no rejections (the indexer
records such a block at the end of a range, to know its hash for reorg
checks) leaves the digest as it was, so the digest does not depend on where
an indexer's ranges happened to end. Two discovery nodes that applied the same blocks by the same
rules have the same digest at every block.

Rows are plain dicts of JSON-able values (str, int, float, bool, None, and
lists/dicts of them); tables and their keys:

=========== ==================== ==========================================
table       key                  row
=========== ==================== ==========================================
users       user_id              user_id, wallet (0x lowercase), handle,
                                 handle_lc, name, bio, location,
                                 profile_picture (dict size->CID),
                                 cover_photo (CID), created_block,
                                 created_at (unix s), updated_block
tracks      track_id             track_id, owner_id, title, genre, mood,
                                 tags (list), description, release_date,
                                 duration (s, float), stream_cid,
                                 original_cid, preview_cid, artwork (dict),
                                 deleted (bool), created_block, created_at,
                                 updated_block
playlists   playlist_id          playlist_id, owner_id, is_album, name,
                                 description, track_ids (list), artwork,
                                 deleted, created_block, created_at,
                                 updated_block
follows     (follower, followee) follower_id, followee_id, block, created_at
reposts     (user, kind, id)     user_id, kind ("track"|"playlist"), item_id,
                                 block, created_at
saves       (user, kind, id)     same shape as reposts
=========== ==================== ==========================================

Keys are tuples of ints/strs (a one-column key is a 1-tuple).

Query answers are dicts in the shape of the Audius discovery API (ids are
ints; CIDs are strings; times unix seconds):

- user: id, handle, name, bio, location, wallet, profile_picture,
  cover_photo, follower_count, followee_count, track_count,
  playlist_count, repost_count, created_at
- track: id, title, user (a user dict), genre, mood, tags, description,
  release_date, duration, stream_cid, preview_cid, original_cid, artwork,
  play_count, repost_count, favorite_count (saves), created_at
- playlist: id, playlist_name, description, is_album, user, track_ids
  (those not deleted, in order), track_count, artwork, repost_count,
  favorite_count, created_at
- feed item: activity ("upload" | "repost"), activity_at, actor_id,
  item_kind ("track" | "playlist"), item (a track or playlist dict); one
  item per track or playlist (its newest activity), newest first
- trending item: a track dict plus "score"

Deleted tracks and playlists appear in no listing, search, feed or
trending; looking one up by id answers it with ``deleted: true`` only
through ``track``/``playlist`` (the API answers 404 for it).

Plays are not chain state: they come from listens gossiped among discovery
nodes, are neither journaled nor digested, and survive reorgs.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Row = dict[str, Any]
Key = tuple[int | str, ...]
Table = Literal["users", "tracks", "playlists", "follows", "reposts", "saves"]
TABLES: tuple[Table, ...] = ("users", "tracks", "playlists", "follows", "reposts", "saves")
Kind = Literal["track", "playlist"]
Window = Literal["week", "month", "all"]
GENESIS_DIGEST = bytes(32)


class IndexError_(Exception):
    """The index database is unusable (corrupt, wrong schema, disk full)."""


@dataclass(frozen=True, slots=True)
class BlockRef:
    """One indexed block: where the indexer is, and the digest there."""

    number: int
    hash: bytes  # 32 bytes
    parent_hash: bytes
    timestamp: int  # unix seconds
    digest: bytes  # 32 bytes, after this block's changes


@dataclass(frozen=True, slots=True)
class Rejection:
    """An action the rules refused, kept with the reason (part of the index)."""

    block: int
    log_index: int
    tx_hash: bytes
    user_id: int
    entity_type: str
    entity_id: int
    action: str
    reason: str


class BlockWriter(Protocol):
    """The changes of one block; reads see the block's own earlier writes."""

    def get(self, table: Table, key: Key) -> Row | None: ...

    def put(self, table: Table, key: Key, row: Row) -> None:
        """Insert or replace the row (the old one, if any, is journaled)."""
        ...

    def delete(self, table: Table, key: Key) -> None:
        """Remove the row if present (journaled)."""
        ...

    def user_by_handle(self, handle_lc: str) -> Row | None: ...

    def user_by_wallet(self, wallet: str) -> Row | None: ...

    def reject(self, rejection: Rejection) -> None: ...


@dataclass(frozen=True, slots=True)
class Page:
    """Pagination, already bounded by the API layer."""

    limit: int = 100
    offset: int = 0


class IndexStore(Protocol):
    """One discovery index. Sync API: call it from a worker thread under trio."""

    # --- indexing (one writer at a time) ---
    def tip(self) -> BlockRef | None:
        """The last indexed block (None: nothing indexed yet)."""
        ...

    def block_at(self, number: int) -> BlockRef | None:
        """The indexed block at ``number``, or the last one before it (blocks
        without actions may be skipped), or None."""
        ...

    def recent_blocks(self, limit: int) -> list[BlockRef]:
        """Indexed blocks, newest first (for finding the common ancestor)."""
        ...

    def block(
        self, number: int, hash: bytes, parent_hash: bytes, timestamp: int
    ) -> AbstractContextManager[BlockWriter]:
        """Open block ``number`` (greater than the tip's) for writing."""
        ...

    def rollback_to(self, number: int) -> int:
        """Undo every block above ``number``; returns how many were undone."""
        ...

    def digest(self) -> bytes:
        """The digest at the tip (GENESIS_DIGEST when empty)."""
        ...

    def rejections(self, page: Page) -> list[Rejection]:
        """Refused actions, newest first."""
        ...

    # --- plays (off chain) ---
    def add_plays(self, plays: Sequence[tuple[int, int]]) -> None:
        """Add ``(track_id, count)`` pairs to the play counts."""
        ...

    def refresh_trending(self, now: int) -> None:
        """Recompute the trending scores as of unix time ``now``."""
        ...

    # --- queries (API shapes: see discovery/api.py) ---
    def user(self, user_id: int) -> Row | None: ...

    def user_by_handle(self, handle: str) -> Row | None: ...

    def user_of_wallet(self, wallet: str) -> Row | None:
        """The user whose wallet is ``wallet`` (0x hex, any case), or None."""
        ...

    def user_tracks(self, user_id: int, page: Page) -> list[Row]: ...

    def user_playlists(self, user_id: int, page: Page) -> list[Row]: ...

    def user_reposts(self, user_id: int, page: Page) -> list[Row]: ...

    def followers(self, user_id: int, page: Page) -> list[Row]: ...

    def following(self, user_id: int, page: Page) -> list[Row]: ...

    def track(self, track_id: int) -> Row | None: ...

    def playlist(self, playlist_id: int) -> Row | None: ...

    def playlist_tracks(self, playlist_id: int, page: Page) -> list[Row]: ...

    def reposters(self, kind: Kind, item_id: int, page: Page) -> list[Row]: ...

    def savers(self, kind: Kind, item_id: int, page: Page) -> list[Row]: ...

    def search_tracks(self, query: str, page: Page) -> list[Row]: ...

    def search_users(self, query: str, page: Page) -> list[Row]: ...

    def search_playlists(self, query: str, page: Page) -> list[Row]: ...

    def trending(self, window: Window, genre: str | None, page: Page) -> list[Row]: ...

    def feed(self, user_id: int, page: Page) -> list[Row]: ...

    def close(self) -> None: ...
