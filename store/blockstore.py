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

Blocks no pin reaches (fetched unpinned: gateway streams, range reads) are a
cache. A :class:`Collection` removes them while the node runs, in short
steps, never a block that a pin, an open session, a fetch in progress or a
write made since it began needs (see docs/decisions.md, 21).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

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


@dataclass(frozen=True, slots=True)
class Compacted:
    """What :meth:`BlockStore.compact` did: the file's size before and after,
    and the blocks a ``collect`` removed first."""

    before_bytes: int
    after_bytes: int
    removed_blocks: int = 0


@dataclass(frozen=True, slots=True)
class StoreUsage:
    """What a collection would weigh: LMDB's pages of blocks, and the sizes the
    pins record (a block shared by two pins counts twice, so the unpinned
    rest is if anything underestimated)."""

    block_bytes: int
    pinned_bytes: int

    @property
    def unpinned_bytes(self) -> int:
        return max(0, self.block_bytes - self.pinned_bytes)


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
        # What a running Collection must not sweep, noted by put_many before it
        # commits (put_many runs in worker threads too, hence the lock): the
        # digests each open session wrote, and while a collection runs, every
        # digest written since it began.
        self._track = threading.Lock()
        self._session_blocks: dict[str, set[bytes]] = {}
        self._written: set[bytes] | None = None
        self._pinned_bytes: int | None = None  # the sum of pin sizes (see usage)
        # Bumped inside every pin's write transaction: a collection's sweep,
        # reading it inside its own, knows whether to look for new pins.
        self._pin_generation = 0

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

    @classmethod
    def compact(cls, path: Path, *, collect: bool = False) -> Compacted:
        """Rewrite the store in ``path`` without its free pages: LMDB reuses
        the pages that collections and unpins free, but its file never shrinks.

        The node must be stopped (the store's lock is taken, as by a node). With
        ``collect``, every block no pin reaches goes first (the cache with the
        rest). The copy is written beside the file and renamed over it, so a
        crash leaves the old store or the new one, whole. It needs free disk
        for the live pages; short of that, a StoreError says so before anything
        is written.
        """
        store = cls.open(path)
        try:
            removed = Collection(store).run().removed_blocks if collect else 0
            data = path / "data.mdb"
            before = data.stat().st_size
            live = store._live_pages() * store._env.stat()["psize"]
            free = shutil.disk_usage(path).free
            if live > free:
                raise StoreError(
                    f"compacting {path} needs {live} bytes free for its copy; {free} are"
                )
            scratch = path / "compact.tmp"
            try:
                shutil.rmtree(scratch, ignore_errors=True)  # left by a crash during a compaction
                scratch.mkdir()
                store._env.copy(str(scratch), compact=True)
                store._env.close()
                copy = scratch / "data.mdb"
                _same_owner_and_mode(copy, data)
                _fsync(copy)
                os.replace(copy, data)
                # LMDB's reader table: it belonged to the old file; the next open makes a new one
                (path / "lock.mdb").unlink(missing_ok=True)
                _fsync(path)
            except (lmdb.Error, OSError) as exc:
                raise StoreError(f"cannot compact the store in {path}: {exc}") from None
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        finally:
            store.close()
        return Compacted(before, data.stat().st_size, removed)

    def _live_pages(self) -> int:
        """Pages a compacted copy holds: every database's, and the main one's."""
        with self._env.begin() as txn:
            stats = [self._env.stat()] + [
                txn.stat(db) for db in (self._blocks, self._pins, self._providers, self._meta)
            ]
        return sum(st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"] for st in stats)

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
        with self._track:
            digests = [block.cid.digest for block in checked]
            if session is not None:
                self._session_blocks.setdefault(session, set()).update(digests)
            if self._written is not None:
                self._written.update(digests)
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
        self._forget_session(session)

    def _forget_session(self, session: str) -> None:
        with self._track:
            self._session_blocks.pop(session, None)

    def pin(self, cid: CID, *, size: int, name: str = "", session: str | None = None) -> Pin:
        """Pin a root whose whole DAG is stored; close ``session`` atomically.

        Refuses to pin a DAG with a missing block: a pin is a promise. The DAG
        is checked inside the pin's own transaction, so a collection sweeping
        meanwhile can never leave a pin with a block gone.
        """
        record = Pin(cid, size, name, time.time())
        value = cbor2.dumps({"size": size, "name": name, "pinned_at": record.pinned_at})
        old: bytes | None = None
        with self._env.begin(write=True, buffers=True) as txn:
            missing = self._missing_in(txn, cid, limit=1)
            if not missing:
                found = txn.get(cid.to_bytes(), db=self._pins)
                old = None if found is None else bytes(found)  # (a buffer dies with its txn)
                txn.put(cid.to_bytes(), value, db=self._pins)
                self._pin_generation += 1
                if session is not None:
                    txn.delete(b"session:" + session.encode(), db=self._meta)
        if missing:
            self._drop_rotted(missing)
            raise StoreError(f"cannot pin {cid}: block {missing[0]} is missing")
        self._pinned_changed(cid, old, size)
        if session is not None:
            self._forget_session(session)
        self._env.sync(True)  # an acknowledged pin survives a power cut too
        return record

    def unpin(self, cid: CID) -> bool:
        with self._env.begin(write=True, db=self._pins) as txn:
            old = txn.pop(cid.to_bytes())
        self._pinned_changed(cid, old, 0)
        return old is not None

    def _pinned_changed(self, cid: CID, old: bytes | None, size: int) -> None:
        """Keep usage()'s sum of pin sizes current without reading every pin."""
        if self._pinned_bytes is None:
            return
        try:
            before = 0 if old is None else _decode_pin(cid.to_bytes(), old).size
        except DecodingError:
            self._pinned_bytes = None  # (a record that rotted: read them all next time)
            return
        self._pinned_bytes += size - before

    def is_pinned(self, cid: CID) -> bool:
        with self._env.begin(db=self._pins) as txn:
            return txn.get(cid.to_bytes()) is not None

    def pins(self) -> list[Pin]:
        out = []
        with self._env.begin(db=self._pins) as txn:
            for key, value in txn.cursor():
                out.append(_decode_pin(bytes(key), bytes(value)))
        return out

    def _walk_in(self, txn: Any, root: CID, *, lenient: bool = False) -> Iterator[tuple[CID, Any]]:
        """Depth-first over a DAG as ``txn`` sees it: (cid, its bytes, or None
        where absent). An inner node that fails its hash is yielded as absent
        and its branch ends there. ``lenient``: an inner node that is not a
        UnixFS file node ends its branch too (else DecodingError)."""
        stack = [root]
        while stack:
            cid = stack.pop()
            data = txn.get(cid.digest, db=self._blocks)
            if data is not None and cid.codec == DAG_PB:
                if not cid.matches(data):
                    data = None
                else:
                    try:
                        links = decode_file_node(data).links
                    except DecodingError:
                        if not lenient:
                            raise
                        links = ()
                    stack.extend(reversed([link.cid for link in links]))
            yield cid, data

    def missing_blocks(self, root: CID, *, limit: int | None = None) -> list[CID]:
        """Blocks of ``root``'s DAG not here (as far as the present inner nodes
        tell); an inner node that rotted on disk counts as missing, and is dropped."""
        with self._env.begin(buffers=True) as txn:
            missing = self._missing_in(txn, root, limit=limit)
        self._drop_rotted(missing)
        return missing

    def _missing_in(self, txn: Any, root: CID, *, limit: int | None) -> list[CID]:
        missing: list[CID] = []
        for cid, data in self._walk_in(txn, root):
            if data is None:
                missing.append(cid)
                if limit is not None and len(missing) >= limit:
                    break
        return missing

    def _drop_rotted(self, missing: Iterable[CID]) -> None:
        """Delete the inner nodes among ``missing`` that are stored but failed
        their hash, so that a fetch can store them again."""
        rotted = [cid for cid in missing if cid.codec == DAG_PB and self.has(cid)]
        if rotted:
            self.delete_blocks(rotted)

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
        self.pins()  # every pin record is read (a corrupt one fails the open) before any sweep
        removed = self.gc()
        with self._env.begin(write=True, db=self._meta) as txn:
            for key in open_sessions:
                txn.delete(key)
        return removed

    def gc(self) -> int:
        """Sweep every block no pin (nor open session) reaches, now. Returns
        blocks removed. A running node uses a :class:`Collection` in steps."""
        return Collection(self).run().removed_blocks

    def usage(self) -> StoreUsage:
        """Cheap: LMDB's page counts, and a sum of pin sizes read once, then kept."""
        with self._env.begin() as txn:
            st = txn.stat(self._blocks)
            pages = st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
            if self._pinned_bytes is None:
                self._pinned_bytes = sum(
                    _decode_pin(bytes(k), bytes(v)).size for k, v in txn.cursor(self._pins)
                )
        return StoreUsage(pages * st["psize"], self._pinned_bytes)

    def _start_tracking(self) -> None:
        with self._track:
            if self._written is not None:
                raise StoreError("a collection is already running on this store")
            self._written = set()

    def _stop_tracking(self) -> None:
        with self._track:
            self._written = None

    def _noted(self, digest: bytes) -> bool:
        """Written since the collection began, or by a session still open.
        (The caller holds ``_track``.)"""
        if self._written is not None and digest in self._written:
            return True
        return any(digest in blocks for blocks in self._session_blocks.values())

    def save_recent(self, roots: Sequence[CID]) -> None:
        """Keep the order of the files fetched last (oldest first) across a
        restart: the cache a collection keeps is chosen by it."""
        value = cbor2.dumps([cid.to_bytes() for cid in roots])
        try:
            with self._env.begin(write=True, db=self._meta) as txn:
                txn.put(b"recent", value)
        except lmdb.Error as exc:
            raise StoreError(f"cannot write to the store in {self.path}: {exc}") from exc

    def recent(self) -> list[CID]:
        """What :meth:`save_recent` kept; a record that rotted is an empty one
        (it costs only the cache's order)."""
        with self._env.begin(db=self._meta) as txn:
            raw = txn.get(b"recent")
        try:
            items = [] if raw is None else cbor2.loads(raw)
            return [CID.from_bytes(item) for item in items]
        except (cbor2.CBORDecodeError, DecodingError, TypeError, ValueError):
            return []

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


def _same_owner_and_mode(path: Path, like: Path) -> None:
    """Give ``path`` the mode (and, run as root, the owner) of ``like``: a store
    compacted by root must still open for the node's own user."""
    st = like.stat()
    os.chmod(path, st.st_mode & 0o7777)
    if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
        os.chown(path, st.st_uid, st.st_gid)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class Collected:
    """What a collection did."""

    removed_blocks: int = 0
    removed_bytes: int = 0
    cached_roots: int = 0  # cache roots whose DAGs were kept within the budget
    cached_bytes: int = 0  # the bytes of those DAGs that no pin reaches
    complete: bool = False  # False: stopped before its sweep ended (cancelled)


def _prefix(digest: bytes | memoryview) -> int:
    # The live set holds 8 bytes of each digest, not 32: half the memory, and a
    # collision only keeps a block that could have gone.
    return int.from_bytes(digest[:8], "little")


class Collection:
    """One mark-and-sweep of a store's blocks that nothing needs.

    Kept: every block that a pin reaches (pins made during the collection
    too), that a session still open wrote, that was written since the
    collection began, that a fetch in progress (``active()``, asked at every
    step) reaches as the store holds it; and the DAGs of the ``cache`` roots,
    newest first, while their unpinned bytes fit in ``cache_bytes``.

    It runs in :meth:`steps`: each is short and at most one write
    transaction, and every write step checks again what was pinned, fetched
    and written meanwhile, so a caller may do anything between two steps.
    :meth:`run` does all the steps at once.
    """

    # A step ends once it has run this long (checked between two DAGs while
    # marking; while sweeping, after at least 16 keys): a node's warm first
    # byte takes a few ms, and a step holds its event loop up while it runs.
    STEP_SECONDS: float = 0.002

    def __init__(
        self,
        store: BlockStore,
        *,
        cache: Sequence[CID] = (),
        cache_bytes: int = 0,
        active: Callable[[], Iterable[CID]] = tuple,
    ) -> None:
        self.store = store
        self.cache = cache
        self.cache_bytes = cache_bytes
        self.active = active
        self.result = Collected()
        self.marked = False  # the mark is done: the steps from here sweep
        self._live: set[int] = set()
        self._walked: set[bytes] = set()  # roots (CID bytes) whose DAGs are marked
        self._pins_seen = -1  # the store's pin generation when the pins were last read

    def run(self) -> Collected:
        for _ in self.steps():
            pass
        return self.result

    def steps(self) -> Generator[None, None, None]:
        self.store._start_tracking()
        try:
            yield from self._mark()
            yield from self._sweep()
            self.result.complete = True
        except (lmdb.Error, DecodingError) as exc:  # (a disk failure, a pin key that rotted)
            raise StoreError(f"collection of the store in {self.store.path} failed: {exc}") from exc
        finally:
            self.store._stop_tracking()

    def _unmarked(self, txn: Any, root: CID) -> tuple[set[int], int]:
        """The blocks of ``root``'s DAG that ``txn`` holds and no mark has
        reached yet, and their bytes."""
        keys: set[int] = set()
        size = 0
        for cid, data in self.store._walk_in(txn, root, lenient=True):
            key = _prefix(cid.digest)
            if data is not None and key not in self._live and key not in keys:
                keys.add(key)
                size += len(data)
        return keys, size

    def _mark_dag(self, txn: Any, root: CID) -> None:
        self._walked.add(root.to_bytes())
        self._live |= self._unmarked(txn, root)[0]

    def _mark_new_roots(self, txn: Any) -> None:
        """Pins and fetches that appeared since the last look. (Inside a write
        transaction: no pin is being written, and the generation is current.)"""
        if self._pins_seen != self.store._pin_generation:
            self._pins_seen = self.store._pin_generation
            for raw in txn.cursor(db=self.store._pins).iternext(keys=True, values=False):
                if bytes(raw) not in self._walked:
                    self._mark_dag(txn, CID.from_bytes(bytes(raw)))
        for root in self.active():
            if root.to_bytes() not in self._walked:
                self._mark_dag(txn, root)

    def _mark(self) -> Iterator[None]:
        store = self.store
        deadline = time.perf_counter() + self.STEP_SECONDS
        with store._env.begin(buffers=True) as txn:
            pins = [bytes(k) for k in txn.cursor(db=store._pins).iternext(values=False)]
            for raw in pins:
                self._mark_dag(txn, CID.from_bytes(raw))
                if time.perf_counter() >= deadline:
                    yield
                    deadline = time.perf_counter() + self.STEP_SECONDS
            for root in self.active():
                self._mark_dag(txn, root)
            budget = self.cache_bytes
            for root in self.cache:
                if budget <= 0:
                    break
                if root.to_bytes() in self._walked:
                    continue
                keys, size = self._unmarked(txn, root)
                if keys and size <= budget:  # (one that does not fit is skipped, not the rest)
                    self._live |= keys
                    self._walked.add(root.to_bytes())
                    budget -= size
                    self.result.cached_roots += 1
                    self.result.cached_bytes += size
                if time.perf_counter() >= deadline:
                    yield
                    deadline = time.perf_counter() + self.STEP_SECONDS
        self.marked = True
        yield

    def _sweep(self) -> Iterator[None]:
        store = self.store
        after = b""
        more = True
        while more:
            # (put_many notes what it writes under _track before it waits for
            # the write lock, so holding both here cannot deadlock)
            with store._env.begin(write=True, buffers=True) as txn, store._track:
                self._mark_new_roots(txn)
                cursor = txn.cursor(db=store._blocks)
                more = cursor.set_range(after)
                # (half the step's time: its commit, with its data sync, takes the rest)
                deadline = time.perf_counter() + self.STEP_SECONDS / 2
                looked = 0
                while more and (looked < 16 or time.perf_counter() < deadline):
                    key = bytes(cursor.key())
                    looked += 1
                    after = key + b"\x00"  # the next key after this one
                    if _prefix(key) in self._live or store._noted(key):
                        more = cursor.next()
                        continue
                    self.result.removed_bytes += len(cursor.value())
                    self.result.removed_blocks += 1
                    cursor.delete()  # (and moves to the next key)
                    more = len(cursor.key()) > 0
            yield


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
