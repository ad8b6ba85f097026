"""The identity service's accounts: what hedgehog clients store, in the index's SQLite file.

Hedgehog (the Audius wallet client) keeps the user's secret on the client:
the server only ever sees

- an *auth* row: ``lookup_key`` (hex scrypt of ``email:::password``, 64
  chars, the primary key), ``iv`` (hex, 32 chars) and ``cipher_text`` (hex
  AES-256-CBC of the wallet's BIP39 entropy under a key scrypt derives from
  the password and the iv); and
- a *user* row: the email (lowercased, unique) and the wallet address
  (lowercase 0x hex, unique).

Neither holds a password, a key or the entropy; the two are not linked (a
log-in asks for the auth row by its lookup key, which only someone who knows
the email and the password can compute).

Layout. The tables live in ``<data dir>/index.sqlite`` beside the discovery
index (:mod:`store.sqlite_index`), under names prefixed ``identity_``, on a
connection of their own (WAL: the indexer's writes and these wait on each
other at most for SQLite's busy timeout; readers never wait). The schema is
created if missing and never touches the index's ``user_version``. Open the
index first on a new file: :class:`~store.sqlite_index.SqliteIndex` refuses
a fresh file that already holds other tables (the node does so). The
accounts share the file's fate: a re-index into a new file must carry the
``identity_`` tables over (``sqlite3 old.sqlite .dump identity_auth ...``).

The store is synchronous and thread-safe (one lock); call it from a worker
thread (:class:`identity.accounts.Accounts` does). It checks only what
SQLite checks cheaply (the hex columns' lengths); the shapes are the
service's to validate.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS identity_auth (
    lookup_key TEXT PRIMARY KEY CHECK (length(lookup_key) = 64),
    iv TEXT NOT NULL CHECK (length(iv) = 32),
    cipher_text TEXT NOT NULL CHECK (length(cipher_text) > 0),
    created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS identity_users (
    email TEXT PRIMARY KEY CHECK (email = lower(email)),
    wallet TEXT NOT NULL UNIQUE CHECK (length(wallet) = 42),
    created INTEGER NOT NULL
) WITHOUT ROWID;
"""


class IdentityStoreError(Exception):
    """The accounts' database is unusable (corrupt, locked too long, disk full)."""


class Taken(ValueError):
    """A unique value is already registered: ``what`` is email, wallet or lookup_key."""

    def __init__(self, message: str, *, what: str) -> None:
        super().__init__(message)
        self.what = what


class NoSuchAuth(LookupError):
    """A password change names an old lookup key that has no row."""


@dataclass(frozen=True, slots=True)
class AuthRecord:
    lookup_key: str
    iv: str
    cipher_text: str
    created: int  # unix seconds


@dataclass(frozen=True, slots=True)
class UserRecord:
    email: str
    wallet: str
    created: int


class IdentityStore:
    """Auth and user rows of hedgehog accounts (see the module doc)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise IdentityStoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise IdentityStoreError(f"{self.path} cannot hold accounts: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as exc:  # (a caller bug: the service validates)
                raise ValueError(f"refused by the accounts schema: {exc}") from None
            except sqlite3.DatabaseError as exc:
                raise IdentityStoreError(f"accounts write failed: {exc}") from exc

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.DatabaseError as exc:
                raise IdentityStoreError(f"accounts read failed: {exc}") from exc

    # -- auth rows -------------------------------------------------------------

    def add_auth(
        self, lookup_key: str, iv: str, cipher_text: str, old_lookup_key: str | None = None
    ) -> None:
        """Store an auth row. With ``old_lookup_key`` (a password change) that row is
        replaced in the same transaction (NoSuchAuth if it is not there); else the
        key must be new (Taken)."""
        now = int(self._clock())
        with self._transaction() as db:
            if old_lookup_key is not None:
                gone = db.execute(
                    "DELETE FROM identity_auth WHERE lookup_key = ?", (old_lookup_key,)
                ).rowcount
                if not gone:
                    raise NoSuchAuth("no account has the old lookup key (oldLookupKey)")
            exists = db.execute(
                "SELECT 1 FROM identity_auth WHERE lookup_key = ?", (lookup_key,)
            ).fetchone()
            if exists:
                raise Taken("an account with this lookup key exists", what="lookup_key")
            db.execute(
                "INSERT INTO identity_auth (lookup_key, iv, cipher_text, created) "
                "VALUES (?, ?, ?, ?)",
                (lookup_key, iv, cipher_text, now),
            )

    def get_auth(self, lookup_key: str) -> AuthRecord | None:
        with self._read() as db:
            row = db.execute(
                "SELECT lookup_key, iv, cipher_text, created FROM identity_auth "
                "WHERE lookup_key = ?",
                (lookup_key,),
            ).fetchone()
        return None if row is None else AuthRecord(*row)

    def auth_exists(self, lookup_key: str) -> bool:
        with self._read() as db:
            return (
                db.execute(
                    "SELECT 1 FROM identity_auth WHERE lookup_key = ?", (lookup_key,)
                ).fetchone()
                is not None
            )

    # -- user rows -------------------------------------------------------------

    def add_user(self, email: str, wallet: str) -> UserRecord:
        """Register ``email`` (lowercased) with ``wallet`` (lowercased); Taken if
        either is registered already."""
        record = UserRecord(email.lower(), wallet.lower(), int(self._clock()))
        with self._transaction() as db:
            if db.execute(
                "SELECT 1 FROM identity_users WHERE email = ?", (record.email,)
            ).fetchone():
                raise Taken(f"the email {record.email} is registered already", what="email")
            if db.execute(
                "SELECT 1 FROM identity_users WHERE wallet = ?", (record.wallet,)
            ).fetchone():
                raise Taken(f"the wallet {record.wallet} is registered already", what="wallet")
            db.execute(
                "INSERT INTO identity_users (email, wallet, created) VALUES (?, ?, ?)",
                (record.email, record.wallet, record.created),
            )
        return record

    def user_by_email(self, email: str) -> UserRecord | None:
        with self._read() as db:
            row = db.execute(
                "SELECT email, wallet, created FROM identity_users WHERE email = ?",
                (email.lower(),),
            ).fetchone()
        return None if row is None else UserRecord(*row)

    def email_exists(self, email: str) -> bool:
        return self.user_by_email(email) is not None

    def wallet_exists(self, wallet: str) -> bool:
        with self._read() as db:
            return (
                db.execute(
                    "SELECT 1 FROM identity_users WHERE wallet = ?", (wallet.lower(),)
                ).fetchone()
                is not None
            )

    def counts(self) -> tuple[int, int]:
        """(auth rows, user rows)."""
        with self._read() as db:
            auths = db.execute("SELECT count(*) FROM identity_auth").fetchone()[0]
            users = db.execute("SELECT count(*) FROM identity_users").fetchone()[0]
        return int(auths), int(users)
