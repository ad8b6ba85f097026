"""store/blockstore.py on a real LMDB environment in a temporary directory."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import cbor2
import pytest

from p2p.host import peer_id_bytes, peer_id_of_key
from p2p.keys import NodeKey
from protocols.cid import CID, DAG_PB, RAW
from protocols.unixfs import Block, FileImporter, HashedBlock, import_bytes
from store.blockstore import BlockStore, HashMismatchError, StoreError


def small_tree(payload: bytes) -> tuple[CID, list[Block]]:
    """A file of several leaves and inner nodes, with small chunks so tests stay fast."""
    importer = FileImporter(chunk_size=64, max_links=3)
    blocks = importer.feed(payload)
    root, tail = importer.finish()
    return root, blocks + tail


def raw_block(data: bytes) -> Block:
    return Block(CID.for_block(RAW, data), data)


def test_put_verifies_and_refuses_a_wrong_block_writing_nothing(store: BlockStore) -> None:
    good = raw_block(b"good")
    liar = Block(CID.for_block(RAW, b"what was asked"), b"what was sent")
    with pytest.raises(HashMismatchError) as caught:
        store.put_many([good, liar])
    assert caught.value.cid == liar.cid
    # The batch is all or nothing: the good block before the bad one is not written either.
    assert not store.has(good.cid) and not store.has(liar.cid)
    assert store.stats().blocks == 0
    assert store.put_many([good]) == [good.cid]
    assert store.get(good.cid) == b"good"


def test_put_many_returns_only_new_cids(store: BlockStore) -> None:
    a, b, c = raw_block(b"a"), raw_block(b"b"), raw_block(b"c")
    assert store.put_many([a, b]) == [a.cid, b.cid]
    assert store.put_many([b, c, a]) == [c.cid]
    assert store.put_many([c]) == []
    # Same digest under the other codec: the same bytes, so not new either.
    assert store.put_many([Block(CID(DAG_PB, a.cid.digest), b"a")]) == []
    assert store.stats().blocks == 3


def test_get_drops_a_block_that_rotted_on_disk(store: BlockStore) -> None:
    block = raw_block(b"fresh")
    store.put_many([block])
    with store._env.begin(write=True, db=store._blocks) as txn:  # simulate bit rot
        txn.put(block.cid.digest, b"rotten")
    assert store.get(block.cid) is None
    assert not store.has(block.cid)


def test_pin_refuses_a_dag_whose_inner_node_rotted_and_drops_that_node(
    store: BlockStore,
) -> None:
    root, blocks = small_tree(os.urandom(300))
    store.put_many(blocks)
    with store._env.begin(write=True, db=store._blocks) as txn:  # simulate bit rot
        txn.put(root.digest, b"rotten")
    with pytest.raises(StoreError, match=f"block {root} is missing"):
        store.pin(root, size=300)
    assert not store.is_pinned(root)
    assert not store.has(root)  # dropped, so a fetch can store it again
    store.put_many([b for b in blocks if b.cid == root])
    assert store.pin(root, size=300).cid == root


def test_pin_refuses_an_incomplete_dag(store: BlockStore) -> None:
    payload = os.urandom(64 * 7 + 5)
    root, blocks = small_tree(payload)
    leaves = [b for b in blocks if b.cid.codec == RAW]
    inner = [b for b in blocks if b.cid.codec == DAG_PB]
    assert len(leaves) == 8 and len(inner) >= 3  # a tree at least two levels deep

    with pytest.raises(StoreError, match="missing"):
        store.pin(root, size=len(payload))  # root itself absent
    store.put_many(inner + leaves[1:])
    with pytest.raises(StoreError, match=str(leaves[0].cid)):
        store.pin(root, size=len(payload))
    assert not store.is_pinned(root) and store.pins() == []
    assert store.missing_blocks(root) == [leaves[0].cid]

    store.put_many(leaves[:1])
    pin = store.pin(root, size=len(payload), name="song")
    assert store.is_pinned(root)
    assert [(p.cid, p.size, p.name) for p in store.pins()] == [(root, len(payload), "song")]
    assert pin.cid == root and store.missing_blocks(root) == []
    assert store.unpin(root) and not store.unpin(root)


def test_pin_closes_its_session_atomically(store: BlockStore) -> None:
    root, blocks = small_tree(os.urandom(300))
    session = store.begin_session("upload")
    store.put_many(blocks, session=session)
    assert store.open_sessions() == [session]
    store.pin(root, size=300, session=session)
    assert store.open_sessions() == []


def test_provider_index_expiry(store: BlockStore) -> None:
    alice = peer_id_bytes(peer_id_of_key(NodeKey.generate()))
    bob = peer_id_bytes(peer_id_of_key(NodeKey.generate()))
    song, other = import_bytes(b"song")[0], import_bytes(b"other")[0]
    store.add_providers(alice, [song, other], ttl=3600)
    store.add_providers(bob, [song], ttl=-1)  # already expired when written
    assert store.providers(song) == [alice]  # an expired record is never handed out
    assert store.stats().provider_records == 3
    assert store.expire_providers() == 1
    assert store.stats().provider_records == 2
    assert store.providers(song) == [alice] and store.providers(other) == [alice]

    # Re-announcing refreshes a record; forgetting a peer removes all of its records.
    store.add_providers(bob, [song], ttl=3600)
    assert sorted(store.providers(song)) == sorted([alice, bob])
    assert store.expire_providers(peer=alice) == 2
    assert store.providers(song) == [bob] and store.providers(other) == []


def test_providers_prefix_does_not_leak_into_other_cids(store: BlockStore) -> None:
    peer = peer_id_bytes(peer_id_of_key(NodeKey.generate()))
    raw = CID(RAW, bytes(32))
    store.add_providers(peer, [CID(RAW, bytes(31) + b"\x01")], ttl=3600)
    assert store.providers(raw) == []


def test_recover_sweeps_unpinned_session_blocks(tmp_path: Path) -> None:
    kept_root, kept = small_tree(os.urandom(500))
    lost_root, lost = small_tree(os.urandom(700))
    shared = raw_block(b"in both")
    with BlockStore.open(tmp_path / "s") as store:
        session = store.begin_session("kept")
        store.put_many([*kept, shared], session=session)
        store.pin(kept_root, size=500, session=session)
        doomed = store.begin_session("killed upload")
        store.put_many(lost, session=doomed)
        # The process dies here: the session is never ended, nothing pinned.
    with BlockStore.open(tmp_path / "s", recover=False) as store:
        assert store.open_sessions() == [doomed]
        assert all(store.has(b.cid) for b in lost)
    with BlockStore.open(tmp_path / "s") as store:
        assert store.open_sessions() == []
        assert not any(store.has(b.cid) for b in lost)
        assert not store.has(lost_root)
        assert store.missing_blocks(kept_root) == []
        assert not store.has(shared.cid)  # no pin reaches it
        assert store.stats().blocks == len(kept)
        assert store.recover() == 0  # nothing left to do


def test_recover_without_open_sessions_removes_nothing(tmp_path: Path) -> None:
    with BlockStore.open(tmp_path / "s") as store:
        store.put_many([raw_block(b"cached, unpinned")])
    with BlockStore.open(tmp_path / "s") as store:
        assert store.stats().blocks == 1  # only a crash triggers the sweep


def test_lock_file_prevents_a_second_open(tmp_path: Path) -> None:
    first = BlockStore.open(tmp_path / "s")
    try:
        with pytest.raises(StoreError, match="in use by another coliving process"):
            BlockStore.open(tmp_path / "s")
        first.put_many([raw_block(b"still usable")])
    finally:
        first.close()
    with BlockStore.open(tmp_path / "s") as again:  # released on close
        assert again.stats().blocks == 1


def test_corrupt_environment_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.mkdir()
    (path / "data.mdb").write_bytes(os.urandom(64 * 1024))
    with pytest.raises(StoreError, match="cannot open the store"):
        BlockStore.open(path)
    # The lock was released on the way out: a repaired directory opens.
    (path / "data.mdb").unlink()
    BlockStore.open(path).close()


def test_wrong_schema_is_a_store_error(tmp_path: Path) -> None:
    with BlockStore.open(tmp_path / "s") as store, store._env.begin(write=True) as txn:
        txn.put(b"schema", b"999", db=store._meta)
    with pytest.raises(StoreError, match="schema"):
        BlockStore.open(tmp_path / "s")
    with pytest.raises(StoreError, match="schema"):  # and the failed open did not leak the lock
        BlockStore.open(tmp_path / "s")


@pytest.mark.parametrize(
    "record",
    [b"\xff\xff not cbor", cbor2.dumps(5), cbor2.dumps({"size": 1}), cbor2.dumps([1, 2, 3])],
)
def test_corrupt_pin_record_is_a_store_error_at_recovery(tmp_path: Path, record: bytes) -> None:
    # A pin record of the wrong shape used to escape recovery as TypeError/KeyError.
    with BlockStore.open(tmp_path / "s") as store:
        root, blocks = small_tree(b"x" * 200)
        store.put_many(blocks)
        store.pin(root, size=200)
        with store._env.begin(write=True) as txn:
            txn.put(root.to_bytes(), record, db=store._pins)
        store.begin_session("crash")
    with pytest.raises(StoreError, match="corrupt"):
        BlockStore.open(tmp_path / "s")


def test_a_block_hashed_here_is_stored_without_a_second_hash(store: BlockStore) -> None:
    # Block.hashed computes the CID from the bytes: the store trusts that one
    # hash; a Block made any other way is hashed again, and refused if wrong.
    good = Block.hashed(RAW, b"abc")
    assert isinstance(good, HashedBlock)
    assert good == Block(CID.for_block(RAW, b"abc"), b"abc")
    assert store.put_many([good]) == [good.cid]
    with pytest.raises(HashMismatchError):
        store.put_many([Block(good.cid, b"abd")])
    with pytest.raises(TypeError):
        HashedBlock(good.cid, bytearray(b"abc"))  # type: ignore[arg-type]
    assert store.get(good.cid) == b"abc"


def test_compact_shrinks_the_file_and_keeps_every_pin(tmp_path: Path) -> None:
    """Collections free pages that LMDB reuses but never returns; compact does."""
    path = tmp_path / "s"
    kept_root, kept = import_bytes(os.urandom(1 << 20))
    cached_root, cached = import_bytes(os.urandom(6 << 20))
    with BlockStore.open(path) as store:
        session = store.begin_session("kept")
        store.put_many(kept, session=session)
        store.pin(kept_root, size=1 << 20, name="kept", session=session)
        store.put_many(cached)  # a cached file, unpinned
    kept_all = BlockStore.compact(path)
    assert kept_all.removed_blocks == 0 and kept_all.after_bytes >= 7 << 20
    compacted = BlockStore.compact(path, collect=True)
    assert compacted.removed_blocks == len(cached)
    assert compacted.before_bytes >= 7 << 20
    assert (1 << 20) < compacted.after_bytes < 2 << 20
    assert (path / "data.mdb").stat().st_size == compacted.after_bytes
    assert not (path / "compact.tmp").exists()
    with BlockStore.open(path) as store:
        assert [(p.cid, p.name) for p in store.pins()] == [(kept_root, "kept")]
        assert store.missing_blocks(kept_root) == []
        assert all(store.get(b.cid) == b.data for b in kept)  # every block read back, verified
        assert not store.has(cached_root)
        store.put_many(cached)  # and it writes as before
        assert store.missing_blocks(cached_root) == []


def test_compact_refuses_a_store_in_use_and_cleans_up_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with BlockStore.open(path) as store:
        store.put_many([raw_block(b"cached")])
        with pytest.raises(StoreError, match="in use by another coliving process"):
            BlockStore.compact(path)
    (path / "compact.tmp").mkdir()  # a compaction killed before its rename
    (path / "compact.tmp" / "data.mdb").write_bytes(b"half a copy")
    BlockStore.compact(path)
    assert not (path / "compact.tmp").exists()
    with BlockStore.open(path) as store:
        assert store.has(raw_block(b"cached").cid)


def test_compact_without_the_disk_for_its_copy_is_a_clear_error_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s"
    with BlockStore.open(path) as store:
        store.put_many([raw_block(os.urandom(100_000))])
    before = (path / "data.mdb").read_bytes()
    free = SimpleNamespace(total=1 << 30, used=1 << 30, free=4096)
    monkeypatch.setattr("store.blockstore.shutil.disk_usage", lambda p: free)
    with pytest.raises(StoreError, match=r"needs \d+ bytes free for its copy; 4096 are"):
        BlockStore.compact(path)
    assert (path / "data.mdb").read_bytes() == before
    with BlockStore.open(path) as store:  # and the lock was let go
        assert store.stats().blocks == 1
