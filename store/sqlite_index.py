"""The embedded discovery index: :class:`SqliteIndex`, an :class:`~store.index.IndexStore`
in one SQLite file.

Layout. Each logical table of :mod:`store.index` is an SQL table with the
columns its queries need (indexed) and a ``data`` column holding the row's
JSON, so ``get`` returns exactly what ``put`` stored (the digest encodes that
row). ``follows``, ``reposts`` and ``saves`` rows that are exactly their
columns (the rules' shape, all ints and strs) keep ``data`` NULL and are
rebuilt from the columns: ten million follows need no JSON.

Writing. One connection writes, under a lock, in WAL mode; a block is one
``BEGIN IMMEDIATE`` .. ``COMMIT`` (an exception inside ``with store.block(...)``
rolls it all back). Every ``put``/``delete`` appends ``(block, seq, table,
key, old row)`` to ``journal``; :meth:`SqliteIndex.rollback_to` replays the
old rows newest first through the same code path (which keeps counters and
full-text tables right) and drops the undone blocks, their rejections and
their journal. Reads use a second connection (WAL readers see the last
commit and never wait for the writer).

Digest. Per block, ``sha256(previous || cbor2.dumps([number, hash, changes],
canonical=True))``, ``changes`` being, in call order, ``[table, list(key),
row or None]`` for each put/delete and ``[block, log_index, tx_hash,
user_id, entity_type, entity_id, action, reason]`` for each rejection. A
block with no changes and no rejections keeps the previous digest.

Counters (``user_stats``, ``item_stats``) change inside put/delete, so no
query counts rows: a user's follower/followee/track/playlist (not deleted)
and repost (made) counts; an item's repost, save and play counts.

Search. FTS5 tables (``unicode61 remove_diacritics 2``, prefixes of 2 and
3 indexed): tracks by title, tags and genre; users by handle and name;
playlists by name. A query is cut into words (``\\w+``, at most 8), each
matched as a prefix (``"word"*``), all required; answers ordered by bm25,
then popularity (reposts + saves; users: followers), then newest id.

Trending. :meth:`SqliteIndex.refresh_trending` at ``now``, for every track
not deleted and per window W (week = 7 days, month = 30 days, all)::

    score = (plays_W + 2 * reposts_W + 3 * saves_W) / (1 + age_days / 30) ** 1.5

where ``reposts_W`` / ``saves_W`` count the reposts / saves whose
``created_at >= now - W`` (all of them for "all"), ``plays_W`` the plays
:meth:`add_plays` recorded on days (UTC, by the store's clock) from
``(now - W) // 86400`` on (the total play count for "all"), and ``age_days =
max(0, now - created_at) / 86400``. Only tracks scoring above 0 are kept;
ties go to the newer track id. The table is rebuilt whole (GROUP BY in SQL)
and read by index range (window[, genre], score desc).

Plays are neither journaled nor digested and survive rollbacks.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import cbor2

from store.index import (
    GENESIS_DIGEST,
    TABLES,
    BlockRef,
    IndexError_,
    Key,
    Kind,
    Page,
    Rejection,
    Row,
    Table,
    Window,
)

SCHEMA_VERSION: Final = 1
DAY: Final = 86_400
WINDOWS: Final[dict[str, int | None]] = {"week": 7 * DAY, "month": 30 * DAY, "all": None}
MAX_QUERY_WORDS: Final = 8
_WORD = re.compile(r"\w+")
_INT64: Final = -(2**63)
_FTS = "tokenize='unicode61 remove_diacritics 2', prefix='2 3'"

_SCHEMA = f"""
CREATE TABLE blocks (
    number INTEGER PRIMARY KEY, hash BLOB NOT NULL, parent_hash BLOB NOT NULL,
    timestamp INTEGER NOT NULL, digest BLOB NOT NULL
);
CREATE TABLE journal (
    block INTEGER NOT NULL, seq INTEGER NOT NULL, tbl TEXT NOT NULL, key TEXT NOT NULL,
    old TEXT, PRIMARY KEY (block, seq)
) WITHOUT ROWID;
CREATE TABLE rejections (
    id INTEGER PRIMARY KEY, block INTEGER NOT NULL, log_index INTEGER NOT NULL,
    tx_hash BLOB NOT NULL, user_id NOT NULL, entity_type TEXT NOT NULL,
    entity_id NOT NULL, action TEXT NOT NULL, reason TEXT NOT NULL
);
CREATE INDEX rejections_block ON rejections (block);

CREATE TABLE users (
    user_id INTEGER PRIMARY KEY, handle_lc TEXT NOT NULL UNIQUE, wallet TEXT NOT NULL,
    created_at INTEGER, data TEXT NOT NULL
);
CREATE INDEX users_wallet ON users (wallet);
CREATE TABLE tracks (
    track_id INTEGER PRIMARY KEY, owner_id INTEGER NOT NULL, created_at INTEGER NOT NULL,
    genre TEXT, deleted INTEGER NOT NULL, data TEXT NOT NULL
);
CREATE INDEX tracks_owner ON tracks (owner_id, deleted, created_at);
CREATE TABLE playlists (
    playlist_id INTEGER PRIMARY KEY, owner_id INTEGER NOT NULL, created_at INTEGER NOT NULL,
    deleted INTEGER NOT NULL, data TEXT NOT NULL
);
CREATE INDEX playlists_owner ON playlists (owner_id, deleted, created_at);
CREATE TABLE follows (
    follower_id INTEGER NOT NULL, followee_id INTEGER NOT NULL, block INTEGER,
    created_at INTEGER NOT NULL, data TEXT, PRIMARY KEY (follower_id, followee_id)
) WITHOUT ROWID;
CREATE INDEX follows_followee ON follows (followee_id, created_at, follower_id);
CREATE INDEX follows_follower ON follows (follower_id, created_at, followee_id);
CREATE TABLE reposts (
    user_id INTEGER NOT NULL, kind TEXT NOT NULL, item_id INTEGER NOT NULL, block INTEGER,
    created_at INTEGER NOT NULL, data TEXT, PRIMARY KEY (user_id, kind, item_id)
) WITHOUT ROWID;
CREATE INDEX reposts_item ON reposts (kind, item_id, created_at, user_id);
CREATE INDEX reposts_user ON reposts (user_id, created_at, kind, item_id);
CREATE TABLE saves (
    user_id INTEGER NOT NULL, kind TEXT NOT NULL, item_id INTEGER NOT NULL, block INTEGER,
    created_at INTEGER NOT NULL, data TEXT, PRIMARY KEY (user_id, kind, item_id)
) WITHOUT ROWID;
CREATE INDEX saves_item ON saves (kind, item_id, created_at, user_id);
CREATE INDEX saves_user ON saves (user_id, created_at, kind, item_id);

CREATE TABLE user_stats (
    user_id INTEGER PRIMARY KEY, follower_count INTEGER NOT NULL DEFAULT 0,
    followee_count INTEGER NOT NULL DEFAULT 0, track_count INTEGER NOT NULL DEFAULT 0,
    playlist_count INTEGER NOT NULL DEFAULT 0, repost_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE item_stats (
    kind TEXT NOT NULL, item_id INTEGER NOT NULL, repost_count INTEGER NOT NULL DEFAULT 0,
    save_count INTEGER NOT NULL DEFAULT 0, play_count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, item_id)
) WITHOUT ROWID;
CREATE TABLE plays_daily (
    track_id INTEGER NOT NULL, day INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (track_id, day)
) WITHOUT ROWID;
CREATE TABLE trending (
    window TEXT NOT NULL, genre TEXT, score REAL NOT NULL, track_id INTEGER NOT NULL
);
CREATE INDEX trending_window ON trending (window, score DESC, track_id DESC);
CREATE INDEX trending_genre ON trending (window, genre, score DESC, track_id DESC);

CREATE VIRTUAL TABLE tracks_fts USING fts5(title, tags, genre, {_FTS});
CREATE VIRTUAL TABLE users_fts USING fts5(handle, name, {_FTS});
CREATE VIRTUAL TABLE playlists_fts USING fts5(name, {_FTS});
"""

# the tables whose key columns, and which key columns make the row
_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "users": ("user_id",),
    "tracks": ("track_id",),
    "playlists": ("playlist_id",),
    "follows": ("follower_id", "followee_id"),
    "reposts": ("user_id", "kind", "item_id"),
    "saves": ("user_id", "kind", "item_id"),
}
_LINK_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "follows": ("follower_id", "followee_id", "block", "created_at"),
    "reposts": ("user_id", "kind", "item_id", "block", "created_at"),
    "saves": ("user_id", "kind", "item_id", "block", "created_at"),
}


# each table's stored columns (after the key) and how a row fills them
_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "users": ("handle_lc", "wallet", "created_at", "data"),
    "tracks": ("owner_id", "created_at", "genre", "deleted", "data"),
    "playlists": ("owner_id", "created_at", "deleted", "data"),
    "follows": ("block", "created_at", "data"),
    "reposts": ("block", "created_at", "data"),
    "saves": ("block", "created_at", "data"),
}


def _upsert_sql(table: str) -> str:
    keys, cols = _KEYS[table], _COLUMNS[table]
    names = [*keys, *cols]
    return (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in cols)
    )


def _values(table: str, key: Key, row: Row) -> tuple[Any, ...]:
    """The stored values of ``row`` at ``key``, in _upsert_sql's order."""
    if table in _LINK_COLUMNS:
        data = None if _plain(row, _LINK_COLUMNS[table]) else _dumps(row)
        return (*key, row.get("block"), row.get("created_at") or 0, data)
    if table == "users":
        return (*key, row["handle_lc"], row["wallet"], row.get("created_at"), _dumps(row))
    deleted = int(bool(row.get("deleted")))
    created = row.get("created_at") or 0
    if table == "tracks":
        return (*key, row["owner_id"], created, row.get("genre"), deleted, _dumps(row))
    return (*key, row["owner_id"], created, deleted, _dumps(row))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _plain(row: Row, columns: tuple[str, ...]) -> bool:
    """The row is exactly its columns (ints but kind): rebuildable without JSON."""
    if set(row) != set(columns):
        return False
    for name in columns:
        value = row[name]
        want = str if name == "kind" else int
        if type(value) is not want:
            return False
    return True


def _live(row: Row | None) -> bool:
    return row is not None and not row.get("deleted")


def fts_query(text: str) -> str | None:
    """An FTS5 MATCH expression for user input (every word a required prefix),
    or None if it has no words. Words are ``\\w+`` runs, quoted: no FTS syntax
    survives."""
    words = _WORD.findall(text)[:MAX_QUERY_WORDS]
    if not words:
        return None
    return " ".join(f'"{w}"*' for w in words)


class _Writer:
    """The BlockWriter of one open block (on the write connection)."""

    def __init__(self, store: SqliteIndex, number: int) -> None:
        self._store = store
        self._number = number
        self.changes: list[list[Any]] = []
        self._seq = 0
        self.closed = False

    def _check(self) -> None:
        if self.closed:
            raise RuntimeError("the block is closed")

    def get(self, table: Table, key: Key) -> Row | None:
        self._check()
        return self._store._get(self._store._wdb, table, key)

    def put(self, table: Table, key: Key, row: Row) -> None:
        self._check()
        self._change(table, key, dict(row))

    def delete(self, table: Table, key: Key) -> None:
        self._check()
        self._change(table, key, None)

    def _change(self, table: Table, key: Key, row: Row | None) -> None:
        if table not in TABLES:
            raise ValueError(f"no table {table!r}")
        key = tuple(key)
        if len(key) != len(_KEYS[table]):
            raise ValueError(f"{table} keys have {len(_KEYS[table])} parts, not {len(key)}")
        db = self._store._wdb
        old = self._store._get(db, table, key)
        self._store._write(db, table, key, old, row)
        db.execute(
            "INSERT INTO journal (block, seq, tbl, key, old) VALUES (?, ?, ?, ?, ?)",
            (
                self._number,
                self._seq,
                table,
                _dumps(list(key)),
                None if old is None else _dumps(old),
            ),
        )
        self._seq += 1
        self.changes.append([table, list(key), row])

    def user_by_handle(self, handle_lc: str) -> Row | None:
        self._check()
        return self._store._user_row_by(self._store._wdb, "handle_lc", handle_lc)

    def user_by_wallet(self, wallet: str) -> Row | None:
        self._check()
        return self._store._user_row_by(self._store._wdb, "wallet", wallet)

    def reject(self, rejection: Rejection) -> None:
        self._check()
        r = rejection
        fields = [
            r.block,
            r.log_index,
            bytes(r.tx_hash),
            r.user_id,
            r.entity_type,
            r.entity_id,
            r.action,
            r.reason,
        ]
        # refused ids may be any uint256: those past SQLite's int64 are kept as text
        stored = [str(v) if type(v) is int and not _INT64 <= v < -_INT64 else v for v in fields]
        self._store._wdb.execute(
            "INSERT INTO rejections (block, log_index, tx_hash, user_id, entity_type, entity_id,"
            " action, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            stored,
        )
        self.changes.append(fields)


_FEED_UPLOADS: Final = (("tracks", "track", "track_id"), ("playlists", "playlist", "playlist_id"))
_FEED_REPOSTS: Final = (
    "SELECT z.created_at, z.kind, z.item_id FROM reposts z"
    " LEFT JOIN tracks t ON z.kind = 'track' AND t.track_id = z.item_id"
    " LEFT JOIN playlists p ON z.kind = 'playlist' AND p.playlist_id = z.item_id"
    " WHERE z.user_id = ? AND z.created_at >= ? AND coalesce(t.deleted, p.deleted) = 0"
    " ORDER BY z.created_at DESC, z.kind DESC, z.item_id DESC LIMIT ?"
)


class SqliteIndex:
    """The discovery index in one SQLite file (see the module docstring)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        self._wdb = self._connect()
        try:
            self._init_schema()
            self._rdb = self._connect()
        except BaseException:
            self._wdb.close()
            raise

    # -- opening -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise IndexError_(f"cannot open the index {self.path}: {exc}") from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=OFF")
            db.execute("PRAGMA cache_size=-65536")
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            db.close()
            raise IndexError_(f"{self.path} is not a usable index database: {exc}") from exc
        try:
            db.execute("SELECT pow(2, 1.5)")
        except sqlite3.OperationalError:
            db.create_function("pow", 2, pow, deterministic=True)
        return db

    def _init_schema(self) -> None:
        db = self._wdb
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:
                db.execute("SELECT number FROM blocks LIMIT 1").fetchall()
                return
            if version != 0:
                raise IndexError_(
                    f"{self.path} has index schema version {version}, this node reads "
                    f"{SCHEMA_VERSION}: reindex into a new file"
                )
            if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise IndexError_(f"{self.path} is an SQLite database but not a discovery index")
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            raise IndexError_(f"{self.path} is not a usable index database: {exc}") from exc

    def close(self) -> None:
        with self._wlock, self._rlock:
            self._rdb.close()
            self._wdb.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._rlock:
            try:
                yield self._rdb
            except sqlite3.DatabaseError as exc:
                raise IndexError_(f"index read failed: {exc}") from exc

    # -- rows ----------------------------------------------------------------

    def _get(self, db: sqlite3.Connection, table: Table, key: Key) -> Row | None:
        cols = _KEYS[table]
        where = " AND ".join(f"{c} = ?" for c in cols)
        if table in _LINK_COLUMNS:
            link = _LINK_COLUMNS[table]
            got = db.execute(
                f"SELECT data, {', '.join(link)} FROM {table} WHERE {where}", key
            ).fetchone()
            if got is None:
                return None
            if got[0] is not None:
                return dict(json.loads(got[0]))
            return dict(zip(link, got[1:], strict=True))
        got = db.execute(f"SELECT data FROM {table} WHERE {where}", key).fetchone()
        return None if got is None else dict(json.loads(got[0]))

    def _user_row_by(self, db: sqlite3.Connection, column: str, value: str) -> Row | None:
        got = db.execute(f"SELECT data FROM users WHERE {column} = ?", (value,)).fetchone()
        return None if got is None else dict(json.loads(got[0]))

    def _write(
        self, db: sqlite3.Connection, table: Table, key: Key, old: Row | None, new: Row | None
    ) -> None:
        """Replace ``old`` by ``new`` at ``key`` (None: absent), with the counters
        and full-text rows that follow. Not journaled."""
        if new is None:
            where = " AND ".join(f"{c} = ?" for c in _KEYS[table])
            db.execute(f"DELETE FROM {table} WHERE {where}", key)
        else:
            db.execute(_upsert_sql(table), _values(table, key, new))
        self._derived(db, table, key, old, -1)
        self._derived(db, table, key, new, +1)

    def _derived(
        self, db: sqlite3.Connection, table: Table, key: Key, row: Row | None, sign: int
    ) -> None:
        """Add (sign +1) or take away (-1) ``row``'s share of counters and search."""
        if table == "users":
            db.execute("DELETE FROM users_fts WHERE rowid = ?", key)
            if row is not None and sign > 0:
                db.execute(
                    "INSERT INTO users_fts (rowid, handle, name) VALUES (?, ?, ?)",
                    (key[0], row.get("handle") or "", row.get("name") or ""),
                )
            return
        if table in ("tracks", "playlists"):
            fts = f"{table}_fts"
            if sign < 0:
                db.execute(f"DELETE FROM {fts} WHERE rowid = ?", key)
            if not _live(row):
                return
            assert row is not None
            counter = "track_count" if table == "tracks" else "playlist_count"
            self._bump_user(db, row["owner_id"], counter, sign)
            if sign > 0:
                if table == "tracks":
                    db.execute(
                        "INSERT INTO tracks_fts (rowid, title, tags, genre) VALUES (?, ?, ?, ?)",
                        (
                            key[0],
                            row.get("title") or "",
                            " ".join(str(t) for t in row.get("tags") or []),
                            row.get("genre") or "",
                        ),
                    )
                else:
                    db.execute(
                        "INSERT INTO playlists_fts (rowid, name) VALUES (?, ?)",
                        (key[0], row.get("playlist_name") or row.get("name") or ""),
                    )
            return
        if row is None:
            return
        if table == "follows":
            self._bump_user(db, row["follower_id"], "followee_count", sign)
            self._bump_user(db, row["followee_id"], "follower_count", sign)
        elif table == "reposts":
            self._bump_user(db, row["user_id"], "repost_count", sign)
            self._bump_item(db, row["kind"], row["item_id"], "repost_count", sign)
        else:
            self._bump_item(db, row["kind"], row["item_id"], "save_count", sign)

    @staticmethod
    def _bump_user(db: sqlite3.Connection, user_id: int, column: str, by: int) -> None:
        db.execute(
            f"INSERT INTO user_stats (user_id, {column}) VALUES (?, ?)"
            f" ON CONFLICT (user_id) DO UPDATE SET {column} = {column} + excluded.{column}",
            (user_id, by),
        )

    @staticmethod
    def _bump_item(db: sqlite3.Connection, kind: str, item_id: int, column: str, by: int) -> None:
        db.execute(
            f"INSERT INTO item_stats (kind, item_id, {column}) VALUES (?, ?, ?)"
            f" ON CONFLICT (kind, item_id) DO UPDATE SET {column} = {column} + excluded.{column}",
            (kind, item_id, by),
        )

    # -- indexing --------------------------------------------------------------

    @staticmethod
    def _ref(got: tuple[Any, ...] | None) -> BlockRef | None:
        if got is None:
            return None
        number, hash_, parent, timestamp, digest = got
        return BlockRef(int(number), bytes(hash_), bytes(parent), int(timestamp), bytes(digest))

    _REF = "SELECT number, hash, parent_hash, timestamp, digest FROM blocks"

    def tip(self) -> BlockRef | None:
        with self._read() as db:
            return self._ref(db.execute(f"{self._REF} ORDER BY number DESC LIMIT 1").fetchone())

    def block_at(self, number: int) -> BlockRef | None:
        with self._read() as db:
            return self._ref(
                db.execute(
                    f"{self._REF} WHERE number <= ? ORDER BY number DESC LIMIT 1", (number,)
                ).fetchone()
            )

    def recent_blocks(self, limit: int) -> list[BlockRef]:
        with self._read() as db:
            rows = db.execute(f"{self._REF} ORDER BY number DESC LIMIT ?", (limit,)).fetchall()
        return [ref for row in rows if (ref := self._ref(row)) is not None]

    def digest(self) -> bytes:
        tip = self.tip()
        return tip.digest if tip else GENESIS_DIGEST

    @contextmanager
    def block(
        self, number: int, hash: bytes, parent_hash: bytes, timestamp: int
    ) -> Iterator[_Writer]:
        """Open block ``number`` for writing; it commits whole when the ``with``
        ends, or not at all."""
        with self._wlock:
            db = self._wdb
            db.execute("BEGIN IMMEDIATE")
            try:
                last = db.execute(
                    "SELECT number, digest FROM blocks ORDER BY number DESC LIMIT 1"
                ).fetchone()
                if last is not None and number <= last[0]:
                    raise ValueError(f"block {number} is not above the tip {last[0]}")
                previous = bytes(last[1]) if last is not None else GENESIS_DIGEST
                writer = _Writer(self, number)
                try:
                    yield writer
                finally:
                    writer.closed = True
                if writer.changes:
                    encoded = cbor2.dumps([number, bytes(hash), writer.changes], canonical=True)
                    digest = hashlib.sha256(previous + encoded).digest()
                else:
                    digest = previous
                db.execute(
                    "INSERT INTO blocks (number, hash, parent_hash, timestamp, digest)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (number, bytes(hash), bytes(parent_hash), int(timestamp), digest),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def rollback_to(self, number: int) -> int:
        with self._wlock:
            db = self._wdb
            db.execute("BEGIN IMMEDIATE")
            try:
                undone = db.execute(
                    "SELECT count(*) FROM blocks WHERE number > ?", (number,)
                ).fetchone()[0]
                entries = db.execute(
                    "SELECT tbl, key, old FROM journal WHERE block > ?"
                    " ORDER BY block DESC, seq DESC",
                    (number,),
                ).fetchall()
                for table, key_text, old_text in entries:
                    key = tuple(json.loads(key_text))
                    old = None if old_text is None else dict(json.loads(old_text))
                    self._write(db, table, key, self._get(db, table, key), old)
                for name in ("journal", "rejections"):
                    db.execute(f"DELETE FROM {name} WHERE block > ?", (number,))
                db.execute("DELETE FROM blocks WHERE number > ?", (number,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return int(undone)

    def rejections(self, page: Page) -> list[Rejection]:
        with self._read() as db:
            rows = db.execute(
                "SELECT block, log_index, tx_hash, user_id, entity_type, entity_id, action, reason"
                " FROM rejections ORDER BY id DESC LIMIT ? OFFSET ?",
                (page.limit, page.offset),
            ).fetchall()
        return [
            Rejection(int(b), int(li), bytes(tx), int(u), et, int(ei), a, r)
            for b, li, tx, u, et, ei, a, r in rows
        ]

    def bulk_load(
        self,
        *,
        users: Iterable[Row] = (),
        tracks: Iterable[Row] = (),
        playlists: Iterable[Row] = (),
        follows: Iterable[Row] = (),
        reposts: Iterable[Row] = (),
        saves: Iterable[Row] = (),
    ) -> None:
        """Fill an index straight from rows (benchmarks, fixtures): no journal,
        no digest, no block. Counters and search are rebuilt from the rows at the
        end, in SQL."""
        groups: list[tuple[Table, Iterable[Row]]] = [
            ("users", users),
            ("tracks", tracks),
            ("playlists", playlists),
            ("follows", follows),
            ("reposts", reposts),
            ("saves", saves),
        ]
        with self._wlock:
            db = self._wdb
            db.execute("BEGIN IMMEDIATE")
            try:
                for table, rows in groups:
                    self._bulk_insert(db, table, rows)
                self._rebuild_derived(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    @staticmethod
    def _bulk_insert(db: sqlite3.Connection, table: Table, rows: Iterable[Row]) -> None:
        keys = _KEYS[table]
        db.executemany(
            _upsert_sql(table), (_values(table, tuple(r[k] for k in keys), r) for r in rows)
        )

    @staticmethod
    def _rebuild_derived(db: sqlite3.Connection) -> None:
        """Recompute counters (plays kept) and full-text tables from the rows."""
        db.execute("DELETE FROM user_stats")
        db.execute(
            "INSERT INTO user_stats (user_id) SELECT user_id FROM users"
            " UNION SELECT followee_id FROM follows UNION SELECT follower_id FROM follows"
        )
        for column, query in (
            ("follower_count", "SELECT followee_id, count(*) FROM follows WHERE true GROUP BY 1"),
            ("followee_count", "SELECT follower_id, count(*) FROM follows WHERE true GROUP BY 1"),
            ("track_count", "SELECT owner_id, count(*) FROM tracks WHERE deleted = 0 GROUP BY 1"),
            (
                "playlist_count",
                "SELECT owner_id, count(*) FROM playlists WHERE deleted = 0 GROUP BY 1",
            ),
            ("repost_count", "SELECT user_id, count(*) FROM reposts WHERE true GROUP BY 1"),
        ):
            db.execute(
                f"INSERT INTO user_stats (user_id, {column}) {query}"
                f" ON CONFLICT (user_id) DO UPDATE SET {column} = excluded.{column}"
            )
        db.execute("UPDATE item_stats SET repost_count = 0, save_count = 0")
        for table, column in (("reposts", "repost_count"), ("saves", "save_count")):
            db.execute(
                f"INSERT INTO item_stats (kind, item_id, {column})"
                f" SELECT kind, item_id, count(*) FROM {table} WHERE true GROUP BY kind, item_id"
                f" ON CONFLICT (kind, item_id) DO UPDATE SET {column} = excluded.{column}"
            )
        for fts in ("tracks_fts", "users_fts", "playlists_fts"):
            db.execute(f"DELETE FROM {fts}")
        db.execute(
            "INSERT INTO users_fts (rowid, handle, name) SELECT user_id,"
            " coalesce(json_extract(data, '$.handle'), ''),"
            " coalesce(json_extract(data, '$.name'), '') FROM users"
        )
        db.execute(
            "INSERT INTO tracks_fts (rowid, title, tags, genre) SELECT track_id,"
            " coalesce(json_extract(data, '$.title'), ''),"
            " coalesce((SELECT group_concat(value, ' ') FROM json_each(data, '$.tags')), ''),"
            " coalesce(genre, '') FROM tracks WHERE deleted = 0"
        )
        db.execute(
            "INSERT INTO playlists_fts (rowid, name) SELECT playlist_id,"
            " coalesce(json_extract(data, '$.playlist_name'), json_extract(data, '$.name'), '')"
            " FROM playlists WHERE deleted = 0"
        )

    # -- plays, trending -------------------------------------------------------

    def add_plays(self, plays: Sequence[tuple[int, int]]) -> None:
        day = int(self._clock()) // DAY
        pairs = [(int(t), int(n)) for t, n in plays if n > 0]
        if not pairs:
            return
        with self._wlock:
            db = self._wdb
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO item_stats (kind, item_id, play_count) VALUES ('track', ?, ?)"
                    " ON CONFLICT (kind, item_id) DO UPDATE SET"
                    " play_count = play_count + excluded.play_count",
                    pairs,
                )
                db.executemany(
                    "INSERT INTO plays_daily (track_id, day, count) VALUES (?, ?, ?)"
                    " ON CONFLICT (track_id, day) DO UPDATE SET count = count + excluded.count",
                    [(t, day, n) for t, n in pairs],
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def refresh_trending(self, now: int) -> None:
        with self._wlock:
            db = self._wdb
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DROP INDEX IF EXISTS trending_window")
                db.execute("DROP INDEX IF EXISTS trending_genre")
                db.execute("DELETE FROM trending")
                for window, span in WINDOWS.items():
                    self._trend(db, window, span, now)
                db.execute(
                    "CREATE INDEX trending_window ON trending (window, score DESC, track_id DESC)"
                )
                db.execute(
                    "CREATE INDEX trending_genre ON trending"
                    " (window, genre, score DESC, track_id DESC)"
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    @staticmethod
    def _trend(db: sqlite3.Connection, window: str, span: int | None, now: int) -> None:
        decay = f"pow(1.0 + max(0, {int(now)} - t.created_at) / {DAY * 30.0}, 1.5)"
        if span is None:
            db.execute(
                "INSERT INTO trending (window, genre, score, track_id)"
                " SELECT 'all', t.genre, (s.play_count + 2 * s.repost_count + 3 * s.save_count)"
                f" / {decay} AS score, t.track_id"
                " FROM item_stats s JOIN tracks t ON t.track_id = s.item_id"
                " WHERE s.kind = 'track' AND t.deleted = 0"
                " AND s.play_count + s.repost_count + s.save_count > 0"
            )
            return
        since = int(now) - span
        db.execute(
            "INSERT INTO trending (window, genre, score, track_id)"
            f" SELECT ?, t.genre, sum(a.points) / {decay}, t.track_id FROM ("
            "  SELECT track_id, sum(count) AS points FROM plays_daily WHERE day >= ?"
            "  GROUP BY track_id"
            "  UNION ALL SELECT item_id, 2 * count(*) FROM reposts"
            "  WHERE kind = 'track' AND created_at >= ? GROUP BY item_id"
            "  UNION ALL SELECT item_id, 3 * count(*) FROM saves"
            "  WHERE kind = 'track' AND created_at >= ? GROUP BY item_id"
            " ) AS a JOIN tracks t ON t.track_id = a.track_id WHERE t.deleted = 0"
            " GROUP BY t.track_id HAVING sum(a.points) > 0",
            (window, since // DAY, since, since),
        )

    # -- answers ---------------------------------------------------------------

    @staticmethod
    def _ids_sql(ids: Sequence[int]) -> str:
        return ", ".join("?" * len(ids))

    def _users(self, db: sqlite3.Connection, ids: Iterable[int]) -> dict[int, Row]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        rows = db.execute(
            "SELECT u.user_id, u.data, s.follower_count, s.followee_count, s.track_count,"
            " s.playlist_count, s.repost_count FROM users u"
            " LEFT JOIN user_stats s ON s.user_id = u.user_id"
            f" WHERE u.user_id IN ({self._ids_sql(wanted)})",
            wanted,
        ).fetchall()
        out: dict[int, Row] = {}
        for user_id, data, followers, followees, tracks, playlists, reposts in rows:
            r = json.loads(data)
            out[user_id] = {
                "id": user_id,
                "handle": r.get("handle"),
                "name": r.get("name"),
                "bio": r.get("bio"),
                "location": r.get("location"),
                "wallet": r.get("wallet"),
                "profile_picture": r.get("profile_picture"),
                "cover_photo": r.get("cover_photo"),
                "follower_count": followers or 0,
                "followee_count": followees or 0,
                "track_count": tracks or 0,
                "playlist_count": playlists or 0,
                "repost_count": reposts or 0,
                "created_at": r.get("created_at"),
            }
        return out

    def _tracks(self, db: sqlite3.Connection, ids: Iterable[int]) -> dict[int, Row]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        rows = db.execute(
            "SELECT t.track_id, t.data, s.play_count, s.repost_count, s.save_count FROM tracks t"
            " LEFT JOIN item_stats s ON s.kind = 'track' AND s.item_id = t.track_id"
            f" WHERE t.track_id IN ({self._ids_sql(wanted)})",
            wanted,
        ).fetchall()
        parsed = [(tid, json.loads(data), p, r, s) for tid, data, p, r, s in rows]
        users = self._users(db, (d["owner_id"] for _, d, *_ in parsed))
        out: dict[int, Row] = {}
        for track_id, r, plays, reposts, saves in parsed:
            out[track_id] = {
                "id": track_id,
                "title": r.get("title"),
                "user": users.get(r["owner_id"]),
                "genre": r.get("genre"),
                "mood": r.get("mood"),
                "tags": r.get("tags") or [],
                "description": r.get("description"),
                "release_date": r.get("release_date"),
                "duration": r.get("duration"),
                "stream_cid": r.get("stream_cid"),
                "preview_cid": r.get("preview_cid"),
                "original_cid": r.get("original_cid"),
                "artwork": r.get("artwork"),
                "play_count": plays or 0,
                "repost_count": reposts or 0,
                "favorite_count": saves or 0,
                "created_at": r.get("created_at"),
                "deleted": bool(r.get("deleted")),
            }
        return out

    def _playlists(self, db: sqlite3.Connection, ids: Iterable[int]) -> dict[int, Row]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        rows = db.execute(
            "SELECT p.playlist_id, p.data, s.repost_count, s.save_count FROM playlists p"
            " LEFT JOIN item_stats s ON s.kind = 'playlist' AND s.item_id = p.playlist_id"
            f" WHERE p.playlist_id IN ({self._ids_sql(wanted)})",
            wanted,
        ).fetchall()
        parsed = [(pid, json.loads(data), r, s) for pid, data, r, s in rows]
        users = self._users(db, (d["owner_id"] for _, d, *_ in parsed))
        all_tracks = sorted({t for _, d, *_ in parsed for t in d.get("track_ids") or []})
        live: set[int] = set()
        for start in range(0, len(all_tracks), 900):
            chunk = all_tracks[start : start + 900]
            live.update(
                tid
                for (tid,) in db.execute(
                    f"SELECT track_id FROM tracks WHERE deleted = 0"
                    f" AND track_id IN ({self._ids_sql(chunk)})",
                    chunk,
                )
            )
        out: dict[int, Row] = {}
        for playlist_id, r, reposts, saves in parsed:
            track_ids = [t for t in r.get("track_ids") or [] if t in live]
            out[playlist_id] = {
                "id": playlist_id,
                "playlist_name": r.get("playlist_name", r.get("name")),
                "description": r.get("description"),
                "is_album": bool(r.get("is_album")),
                "user": users.get(r["owner_id"]),
                "track_ids": track_ids,
                "track_count": len(track_ids),
                "artwork": r.get("artwork"),
                "repost_count": reposts or 0,
                "favorite_count": saves or 0,
                "created_at": r.get("created_at"),
                "deleted": bool(r.get("deleted")),
            }
        return out

    @staticmethod
    def _ordered(found: dict[int, Row], ids: Iterable[int]) -> list[Row]:
        return [found[i] for i in ids if i in found]

    # -- queries ---------------------------------------------------------------

    def user(self, user_id: int) -> Row | None:
        with self._read() as db:
            return self._users(db, [user_id]).get(user_id)

    def user_by_handle(self, handle: str) -> Row | None:
        with self._read() as db:
            got = db.execute(
                "SELECT user_id FROM users WHERE handle_lc = ?", (handle.lower(),)
            ).fetchone()
            return None if got is None else self._users(db, [got[0]]).get(got[0])

    def user_of_wallet(self, wallet: str) -> Row | None:
        with self._read() as db:
            got = db.execute(
                "SELECT user_id FROM users WHERE wallet = ? ORDER BY user_id LIMIT 1",
                (wallet.lower(),),
            ).fetchone()
            return None if got is None else self._users(db, [got[0]]).get(got[0])

    def user_tracks(self, user_id: int, page: Page) -> list[Row]:
        with self._read() as db:
            ids = [
                i
                for (i,) in db.execute(
                    "SELECT track_id FROM tracks WHERE owner_id = ? AND deleted = 0"
                    " ORDER BY created_at DESC, track_id DESC LIMIT ? OFFSET ?",
                    (user_id, page.limit, page.offset),
                )
            ]
            return self._ordered(self._tracks(db, ids), ids)

    def user_playlists(self, user_id: int, page: Page) -> list[Row]:
        with self._read() as db:
            ids = [
                i
                for (i,) in db.execute(
                    "SELECT playlist_id FROM playlists WHERE owner_id = ? AND deleted = 0"
                    " ORDER BY created_at DESC, playlist_id DESC LIMIT ? OFFSET ?",
                    (user_id, page.limit, page.offset),
                )
            ]
            return self._ordered(self._playlists(db, ids), ids)

    def user_reposts(self, user_id: int, page: Page) -> list[Row]:
        """The items the user reposted (not deleted), newest repost first: each
        a track or playlist dict with ``kind`` ("track" | "playlist") and
        ``reposted_at`` added."""
        with self._read() as db:
            rows = db.execute(
                "SELECT r.kind, r.item_id, r.created_at FROM reposts r"
                " LEFT JOIN tracks t ON r.kind = 'track' AND t.track_id = r.item_id"
                " LEFT JOIN playlists p ON r.kind = 'playlist' AND p.playlist_id = r.item_id"
                " WHERE r.user_id = ? AND coalesce(t.deleted, p.deleted) = 0"
                " ORDER BY r.created_at DESC, r.kind DESC, r.item_id DESC LIMIT ? OFFSET ?",
                (user_id, page.limit, page.offset),
            ).fetchall()
            found = self._items(db, [(k, i, {"kind": k, "reposted_at": at}) for k, i, at in rows])
        return [{**item, **extra} for item, extra in found]

    def _items(
        self, db: sqlite3.Connection, wanted: Sequence[tuple[str, int, Row]]
    ) -> list[tuple[Row, Row]]:
        """(item dict, extra) for each (kind, id, extra) found, in order."""
        tracks = self._tracks(db, [i for k, i, _ in wanted if k == "track"])
        playlists = self._playlists(db, [i for k, i, _ in wanted if k == "playlist"])
        out: list[tuple[Row, Row]] = []
        for kind, item_id, extra in wanted:
            item = (tracks if kind == "track" else playlists).get(item_id)
            if item is not None:
                out.append((item, extra))
        return out

    def _user_list(self, db: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Row]:
        ids = [i for (i,) in db.execute(sql, args)]
        return self._ordered(self._users(db, ids), ids)

    def followers(self, user_id: int, page: Page) -> list[Row]:
        with self._read() as db:
            return self._user_list(
                db,
                "SELECT follower_id FROM follows WHERE followee_id = ?"
                " ORDER BY created_at DESC, follower_id DESC LIMIT ? OFFSET ?",
                (user_id, page.limit, page.offset),
            )

    def following(self, user_id: int, page: Page) -> list[Row]:
        with self._read() as db:
            return self._user_list(
                db,
                "SELECT followee_id FROM follows WHERE follower_id = ?"
                " ORDER BY created_at DESC, followee_id DESC LIMIT ? OFFSET ?",
                (user_id, page.limit, page.offset),
            )

    def track(self, track_id: int) -> Row | None:
        with self._read() as db:
            return self._tracks(db, [track_id]).get(track_id)

    def playlist(self, playlist_id: int) -> Row | None:
        with self._read() as db:
            return self._playlists(db, [playlist_id]).get(playlist_id)

    def playlist_tracks(self, playlist_id: int, page: Page) -> list[Row]:
        with self._read() as db:
            playlist = self._playlists(db, [playlist_id]).get(playlist_id)
            if playlist is None or playlist["deleted"]:
                return []
            ids = playlist["track_ids"][page.offset : page.offset + page.limit]
            return self._ordered(self._tracks(db, ids), ids)

    def _social_users(self, table: str, kind: Kind, item_id: int, page: Page) -> list[Row]:
        with self._read() as db:
            return self._user_list(
                db,
                f"SELECT user_id FROM {table} WHERE kind = ? AND item_id = ?"
                " ORDER BY created_at DESC, user_id DESC LIMIT ? OFFSET ?",
                (kind, item_id, page.limit, page.offset),
            )

    def reposters(self, kind: Kind, item_id: int, page: Page) -> list[Row]:
        return self._social_users("reposts", kind, item_id, page)

    def savers(self, kind: Kind, item_id: int, page: Page) -> list[Row]:
        return self._social_users("saves", kind, item_id, page)

    def _search(self, sql: str, query: str, page: Page) -> list[int] | None:
        match = fts_query(query)
        if match is None:
            return None
        with self._read() as db:
            return [i for (i,) in db.execute(sql, (match, page.limit, page.offset))]

    def search_tracks(self, query: str, page: Page) -> list[Row]:
        ids = self._search(
            "SELECT f.rowid FROM tracks_fts f"
            " LEFT JOIN item_stats s ON s.kind = 'track' AND s.item_id = f.rowid"
            " WHERE tracks_fts MATCH ? ORDER BY bm25(tracks_fts, 4.0, 2.0, 1.0),"
            " coalesce(s.repost_count + s.save_count, 0) DESC, f.rowid DESC LIMIT ? OFFSET ?",
            query,
            page,
        )
        if not ids:
            return []
        with self._read() as db:
            return self._ordered(self._tracks(db, ids), ids)

    def search_users(self, query: str, page: Page) -> list[Row]:
        ids = self._search(
            "SELECT f.rowid FROM users_fts f LEFT JOIN user_stats s ON s.user_id = f.rowid"
            " WHERE users_fts MATCH ? ORDER BY bm25(users_fts, 2.0, 1.0),"
            " coalesce(s.follower_count, 0) DESC, f.rowid DESC LIMIT ? OFFSET ?",
            query,
            page,
        )
        if not ids:
            return []
        with self._read() as db:
            return self._ordered(self._users(db, ids), ids)

    def search_playlists(self, query: str, page: Page) -> list[Row]:
        ids = self._search(
            "SELECT f.rowid FROM playlists_fts f"
            " LEFT JOIN item_stats s ON s.kind = 'playlist' AND s.item_id = f.rowid"
            " WHERE playlists_fts MATCH ? ORDER BY bm25(playlists_fts),"
            " coalesce(s.repost_count + s.save_count, 0) DESC, f.rowid DESC LIMIT ? OFFSET ?",
            query,
            page,
        )
        if not ids:
            return []
        with self._read() as db:
            return self._ordered(self._playlists(db, ids), ids)

    def trending(self, window: Window, genre: str | None, page: Page) -> list[Row]:
        if window not in WINDOWS:
            raise ValueError(f"no trending window {window!r}")
        where, args = "x.window = ?", [str(window)]
        if genre is not None:
            where += " AND x.genre = ?"
            args.append(genre)
        with self._read() as db:
            rows = db.execute(
                "SELECT x.track_id, x.score FROM trending x"
                " JOIN tracks t ON t.track_id = x.track_id AND t.deleted = 0"
                f" WHERE {where} ORDER BY x.score DESC, x.track_id DESC LIMIT ? OFFSET ?",
                [*args, page.limit, page.offset],
            ).fetchall()
            tracks = self._tracks(db, [i for i, _ in rows])
        return [{**tracks[i], "score": score} for i, score in rows if i in tracks]

    def feed(self, user_id: int, page: Page) -> list[Row]:
        """Uploads and reposts by the people ``user_id`` follows, newest first,
        each item once (at its newest activity).

        A top-k merge over the followees' own activity streams, each read
        newest first by index: a followee contributes at most ``offset +
        limit`` activities of each kind (an activity below that in its own
        stream has that many newer, distinct items above it), and only those
        not older than the ``offset + limit``-th newest distinct item found so
        far (it could not make the page), so after the first few followees
        most streams answer nothing. Cost: two index probes a followee plus
        the rows that can still make the page."""
        n = page.offset + page.limit
        if n <= 0:
            return []
        with self._read() as db:
            followees = [
                f
                for (f,) in db.execute(
                    "SELECT followee_id FROM follows WHERE follower_id = ?", (user_id,)
                )
            ]
            # (kind, item) -> its best activity's key: (-at, act, actor); act 0 upload, 1 repost
            best: dict[tuple[str, int], tuple[int, int, int]] = {}
            cutoff = -1  # the n-th newest distinct item's time, once n are found
            for followee in followees:
                rows: list[tuple[int, int, str, int]] = []
                for table, kind, col in _FEED_UPLOADS:
                    rows += [
                        (at, 0, kind, item)
                        for at, item in db.execute(
                            f"SELECT created_at, {col} FROM {table} WHERE owner_id = ?"
                            f" AND deleted = 0 AND created_at >= ?"
                            f" ORDER BY created_at DESC, {col} DESC LIMIT ?",
                            (followee, cutoff, n),
                        )
                    ]
                rows += [
                    (at, 1, kind, item)
                    for at, kind, item in db.execute(_FEED_REPOSTS, (followee, cutoff, n))
                ]
                if not rows:
                    continue
                for at, act, kind, item in rows:
                    key = (-at, act, followee)
                    old = best.get((kind, item))
                    if old is None or key < old:
                        best[(kind, item)] = key
                if len(best) >= n:
                    cutoff = heapq.nsmallest(n, (k[0] for k in best.values()))[-1] * -1
            ordered = sorted(
                best.items(), key=lambda e: (e[1][0], e[1][1], e[0][0], -e[0][1], e[1][2])
            )
            chosen = [
                (-key[0], "repost" if key[1] else "upload", kind, item, key[2])
                for (kind, item), key in ordered[page.offset : n]
            ]
            found = self._items(
                db,
                [
                    (
                        kind,
                        item_id,
                        {
                            "activity": activity,
                            "activity_at": at,
                            "actor_id": actor,
                            "item_kind": kind,
                        },
                    )
                    for at, activity, kind, item_id, actor in chosen
                ],
            )
        return [{**extra, "item": item} for item, extra in found]
