"""LMDB storage of one node: blocks, pins, provider index.

One environment, named databases:

``blocks``    sha2-256 digest -> block bytes (a raw leaf and a dag-pb node with
              the same digest are the same bytes, so the digest is the key)
``pins``      root CID bytes -> CBOR {size, name, pinned_at}
``providers`` root CID bytes + peer ID bytes -> CBOR {expires}
``meta``      schema version; open write sessions (for crash recovery)

The API is synchronous (LMDB is memory-mapped; a put of a batch costs far less
than a trio checkpoint round trip). Every block is checked against its CID
before it is written; writes come in batches, one transaction each.

Crash safety: blocks of an upload or fetch in progress are written under an
open *session* recorded in ``meta``. A pin is written only after every block
of its DAG is stored, in one transaction that also closes the session. On
start, a store with sessions still open (the process died mid-write) runs a
mark-and-sweep that deletes blocks no pin reaches, so a killed upload is
absent, never half-present.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import cbor2
import lmdb

from protocols.cid import CID, DAG_PB
from protocols.errors import DecodingError
from protocols.unixfs import Block, HashedBlock, decode_file_node

SCHEMA_VERSION: Final = 1
DEFAULT_MAP_SIZE: Final = 1 << 40  # address space only; the file grows as used


class StoreError(Exception):
    """The data directory cannot be used: locked, corrupt, or wrong version."""


class HashMismatchError(StoreError):
    """A block's bytes do not hash to its CID: it is refused, never stored."""

    def __init__(self, cid: CID) -> None:
        super().__init__(f"block does not match its CID {cid}")
        self.cid = cid


@dataclass(frozen=True, slots=True)
class Pin:
    cid: CID
    size: int
    name: str
    pinned_at: float


@dataclass(frozen=True, slots=True)
class StoreStats:
    blocks: int
    pins: int
    provider_records: int
    bytes_used: int


class BlockStore:
    """A node's LMDB environment. Open with :meth:`open`; one process at a time."""

    def __init__(self, path: Path, env: lmdb.Environment, lock_fd: int) -> None:
        self.path = path
        self._env = env
        self._lock_fd = lock_fd
        self._blocks = env.open_db(b"blocks")
        self._pins = env.open_db(b"pins")
        self._providers = env.open_db(b"providers")
        self._meta = env.open_db(b"meta")

    # -- life cycle -------------------------------------------------------

    @classmethod
    def open(
        cls, path: Path, *, map_size: int = DEFAULT_MAP_SIZE, recover: bool = True
    ) -> BlockStore:
        """Open (creating if new) and lock the store; ``recover`` cleans up after a crash."""
        path.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(path / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise StoreError(
                f"data directory {path} is in use by another coliving process"
            ) from None
        try:
            # metasync=False: a commit flushes its data pages but not the meta
            # page, which the next commit's flush (or pin's sync) carries. LMDB
            # stays consistent; a power cut may undo only the last commit, and a
            # pin syncs before it returns. Writes cost a third less CPU and wall.
            env = lmdb.open(str(path), map_size=map_size, max_dbs=8, subdir=True, metasync=False)
        except lmdb.Error as exc:
            os.close(lock_fd)
            raise StoreError(f"cannot open the store in {path}: {exc}") from None
        store = cls(path, env, lock_fd)
        try:
            store._check_schema()
            if recover:
                store.recover()
        except (lmdb.Error, DecodingError, ValueError, cbor2.CBORDecodeError) as exc:
            store.close()
            raise StoreError(f"store in {path} is corrupt: {exc}") from None
        return store

    def close(self) -> None:
        if self._lock_fd >= 0:
            self._env.close()
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_schema(self) -> None:
        with self._env.begin(write=True, db=self._meta) as txn:
            found = txn.get(b"schema")
            if found is None:
                txn.put(b"schema", str(SCHEMA_VERSION).encode())
            elif found != str(SCHEMA_VERSION).encode():
                raise StoreError(f"store schema {found!r}, this build reads {SCHEMA_VERSION}")

    # -- blocks -----------------------------------------------------------

    def has(self, cid: CID) -> bool:
        with self._env.begin(db=self._blocks) as txn:
            return txn.get(cid.digest) is not None

    def get(self, cid: CID) -> bytes | None:
        """Return the block, verified; a block that fails its hash is deleted."""
        with self._env.begin(db=self._blocks) as txn:
            data = txn.get(cid.digest)
        if data is None:
            return None
        if not cid.matches(data):
            self.delete_blocks([cid])
            return None
        return bytes(data)

    def size_of(self, cid: CID) -> int | None:
        with self._env.begin(db=self._blocks, buffers=True) as txn:
            data = txn.get(cid.digest)
            return None if data is None else len(data)

    def put_many(self, blocks: Iterable[Block], *, session: str | None = None) -> list[CID]:
        """Verify every block, then write them all in one transaction.

        A HashedBlock got its CID from its own bytes in this process: it is not
        hashed again. Raises HashMismatchError (and writes nothing) if any block is wrong.
        ``session`` names the open session (see :meth:`begin_session`) the
        blocks belong to while no pin reaches them; a crash before the pin
        leaves them to :meth:`recover`. Returns the CIDs that were new here.
        """
        checked = list(blocks)
        for block in checked:
            if not isinstance(block, HashedBlock) and not block.cid.matches(block.data):
                raise HashMismatchError(block.cid)
        new: list[CID] = []
        try:
            with self._env.begin(write=True, db=self._blocks) as txn:
                for block in checked:
                    if txn.put(block.cid.digest, block.data, overwrite=False):
                        new.append(block.cid)
        except lmdb.Error as exc:  # the disk or the map is full, or the disk failed
            raise StoreError(f"cannot write blocks to the store in {self.path}: {exc}") from exc
        return new

    def delete_blocks(self, cids: Iterable[CID]) -> None:
        with self._env.begin(write=True, db=self._blocks) as txn:
            for cid in cids:
                txn.delete(cid.digest)

    # -- sessions and pins ------------------------------------------------

    def begin_session(self, purpose: str) -> str:
        """Record that unpinned blocks are about to be written."""
        session = uuid.uuid4().hex
        with self._env.begin(write=True, db=self._meta) as txn:
            txn.put(b"session:" + session.encode(), purpose.encode())
        return session

    def end_session(self, session: str) -> None:
        with self._env.begin(write=True, db=self._meta) as txn:
            txn.delete(b"session:" + session.encode())

    def pin(self, cid: CID, *, size: int, name: str = "", session: str | None = None) -> Pin:
        """Pin a root whose whole DAG is stored; close ``session`` atomically.

        Refuses to pin a DAG with a missing block: a pin is a promise.
        """
        missing = self.missing_blocks(cid, limit=1)
        if missing:
            raise StoreError(f"cannot pin {cid}: block {missing[0]} is missing")
        record = Pin(cid, size, name, time.time())
        value = cbor2.dumps({"size": size, "name": name, "pinned_at": record.pinned_at})
        with self._env.begin(write=True) as txn:
            txn.put(cid.to_bytes(), value, db=self._pins)
            if session is not None:
                txn.delete(b"session:" + session.encode(), db=self._meta)
        self._env.sync(True)  # an acknowledged pin survives a power cut too
        return record

    def unpin(self, cid: CID) -> bool:
        with self._env.begin(write=True, db=self._pins) as txn:
            return bool(txn.delete(cid.to_bytes()))

    def is_pinned(self, cid: CID) -> bool:
        with self._env.begin(db=self._pins) as txn:
            return txn.get(cid.to_bytes()) is not None

    def pins(self) -> list[Pin]:
        out = []
        with self._env.begin(db=self._pins) as txn:
            for key, value in txn.cursor():
                out.append(_decode_pin(bytes(key), bytes(value)))
        return out

    def walk(self, root: CID) -> Iterator[tuple[CID, bool]]:
        """Depth-first over a DAG: (cid, present here). Reads only inner nodes."""
        stack = [root]
        while stack:
            cid = stack.pop()
            if cid.codec != DAG_PB:
                yield cid, self.has(cid)
                continue
            data = self.get(cid)
            yield cid, data is not None
            if data is not None:
                node = decode_file_node(data)
                stack.extend(reversed([link.cid for link in node.links]))

    def missing_blocks(self, root: CID, *, limit: int | None = None) -> list[CID]:
        missing: list[CID] = []
        for cid, present in self.walk(root):
            if not present:
                missing.append(cid)
                if limit is not None and len(missing) >= limit:
                    break
        return missing

    def open_sessions(self) -> list[str]:
        """Write sessions begun and never ended (after a crash, until recover())."""
        with self._env.begin(db=self._meta) as txn:
            return [
                bytes(k[len(b"session:") :]).decode()
                for k, _ in txn.cursor()
                if k.startswith(b"session:")
            ]

    def recover(self) -> int:
        """After a crash: drop blocks that no pin reaches. Returns blocks removed."""
        with self._env.begin(db=self._meta) as txn:
            open_sessions = [k for k, _ in txn.cursor() if k.startswith(b"session:")]
        if not open_sessions:
            return 0
        removed = self.gc()
        with self._env.begin(write=True, db=self._meta) as txn:
            for key in open_sessions:
                txn.delete(key)
        return removed

    def gc(self) -> int:
        """Mark every block reachable from a pin, sweep the rest."""
        live: set[bytes] = set()
        for pin in self.pins():
            for cid, _ in self.walk(pin.cid):
                live.add(cid.digest)
        removed = 0
        with self._env.begin(write=True, db=self._blocks) as txn:
            cursor = txn.cursor()
            for digest in list(cursor.iternext(keys=True, values=False)):
                if bytes(digest) not in live:
                    txn.delete(digest)
                    removed += 1
        return removed

    # -- provider index ---------------------------------------------------

    def add_providers(self, peer: bytes, cids: Iterable[CID], *, ttl: float) -> None:
        expires = cbor2.dumps(time.time() + ttl)
        with self._env.begin(write=True, db=self._providers) as txn:
            for cid in cids:
                txn.put(cid.to_bytes() + b"/" + peer, expires)

    def providers(self, cid: CID) -> list[bytes]:
        """Peers that announced ``cid`` and whose record has not expired."""
        prefix = cid.to_bytes() + b"/"
        now = time.time()
        out: list[bytes] = []
        with self._env.begin(db=self._providers) as txn:
            cursor = txn.cursor()
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    if cbor2.loads(value) > now:
                        out.append(bytes(key[len(prefix) :]))
        return out

    def provided(self) -> dict[CID, list[bytes]]:
        """Every CID in the provider index with its unexpired providers."""
        now = time.time()
        out: dict[CID, list[bytes]] = {}
        with self._env.begin(db=self._providers) as txn:
            for key, value in txn.cursor():
                # key = CID bytes (v1, sha2-256, one-byte codec: 36 bytes) "/" peer
                raw, sep, peer = bytes(key[:36]), bytes(key[36:37]), bytes(key[37:])
                if sep != b"/" or cbor2.loads(value) <= now:
                    continue
                try:
                    cid = CID.from_bytes(raw)
                except DecodingError:
                    continue
                out.setdefault(cid, []).append(peer)
        return out

    def expire_providers(self, *, peer: bytes | None = None) -> int:
        """Delete expired records (or every record of ``peer``)."""
        now = time.time()
        removed = 0
        with self._env.begin(write=True, db=self._providers) as txn:
            for key, value in list(txn.cursor()):
                if (peer is not None and key.endswith(b"/" + peer)) or (
                    peer is None and cbor2.loads(value) <= now
                ):
                    txn.delete(key)
                    removed += 1
        return removed

    # -- misc -------------------------------------------------------------

    def stats(self) -> StoreStats:
        info = self._env.info()
        page = self._env.stat()["psize"]
        with self._env.begin() as txn:
            blocks = txn.stat(self._blocks)["entries"]
            pins = txn.stat(self._pins)["entries"]
            provs = txn.stat(self._providers)["entries"]
        return StoreStats(blocks, pins, provs, (info["last_pgno"] + 1) * page)


def _decode_pin(key: bytes, value: bytes) -> Pin:
    """A pin record as stored; a record of the wrong shape is corruption, not a crash."""
    try:
        rec = cbor2.loads(value)
    except Exception as exc:
        raise DecodingError(f"pin record is not CBOR: {exc}") from None
    if not isinstance(rec, dict):
        raise DecodingError("pin record is not a map")
    size, name, pinned_at = rec.get("size"), rec.get("name"), rec.get("pinned_at")
    if not isinstance(size, int) or not isinstance(name, str):
        raise DecodingError("pin record lacks its size or name")
    if not isinstance(pinned_at, (int, float)):
        raise DecodingError("pin record lacks its time")
    return Pin(CID.from_bytes(key), size, name, pinned_at)


@contextlib.contextmanager
def open_store(path: Path) -> Iterator[BlockStore]:
    store = BlockStore.open(path)
    try:
        yield store
    finally:
        store.close()
