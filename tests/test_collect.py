"""Collections of a store's unpinned blocks (store.blockstore.Collection), on a
real LMDB environment, and a node's collection while it serves, on real hosts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node import Node
from protocols.bitswap import BitswapConfig
from protocols.cid import CID
from protocols.unixfs import Block, import_bytes
from simnet.local import start_nodes
from store.blockstore import BlockStore, Collected, Collection
from tests.conftest import chunks
from tests.test_store import raw_block, small_tree

SILENCE = bytes(64)  # one chunk of small_tree's files: digital silence


class Fine(Collection):
    """A collection in the smallest steps: one DAG, or 16 keys, at a time."""

    STEP_SECONDS = 0.0


def dag_bytes(blocks: list[Block]) -> int:
    return sum(len(b.data) for b in blocks)


def held(store: BlockStore, blocks: list[Block]) -> list[bool]:
    return [store.has(b.cid) for b in blocks]


def test_a_collection_removes_what_no_pin_reaches_and_nothing_a_pin_does(
    store: BlockStore,
) -> None:
    silence = raw_block(SILENCE)  # a leaf both files hold
    pinned_root, pinned = small_tree(SILENCE + os.urandom(500))
    _, cached = small_tree(SILENCE + os.urandom(700))
    assert silence in pinned and silence in cached
    store.put_many(pinned)
    store.pin(pinned_root, size=564)
    store.put_many(cached)
    done = Collection(store).run()
    assert done.complete
    assert store.missing_blocks(pinned_root) == []
    gone = [b for b in cached if b != silence]
    assert not any(held(store, gone))
    assert done.removed_blocks == len(gone)
    assert done.removed_bytes == dag_bytes(gone)
    assert Collection(store).run().removed_blocks == 0


def test_an_open_session_keeps_its_blocks_until_it_ends(store: BlockStore) -> None:
    _, blocks = small_tree(os.urandom(600))
    session = store.begin_session("an upload in progress")
    store.put_many(blocks, session=session)
    assert Collection(store).run().removed_blocks == 0
    assert all(held(store, blocks))
    store.end_session(session)  # given up: its blocks are a cache now
    assert Collection(store).run().removed_blocks == len(blocks)


def test_a_pinned_session_forgets_its_blocks(store: BlockStore) -> None:
    root, blocks = small_tree(os.urandom(600))
    session = store.begin_session("an upload")
    store.put_many(blocks, session=session)
    store.pin(root, size=600, session=session)
    store.unpin(root)
    assert Collection(store).run().removed_blocks == len(blocks)


def test_blocks_written_while_a_collection_runs_are_kept(store: BlockStore) -> None:
    old = raw_block(b"cached before the collection")
    store.put_many([old])
    collection = Collection(store)
    steps = collection.steps()
    next(steps)  # marked: nothing is live
    new = raw_block(b"written after the mark, by no session")
    store.put_many([new])
    for _ in steps:
        pass
    assert store.has(new.cid) and not store.has(old.cid)


def test_a_pin_made_while_a_collection_runs_keeps_its_whole_dag(store: BlockStore) -> None:
    # Fetched unpinned earlier (no session), then pinned between the mark and
    # the sweep: the sweep looks at the pins again in each of its transactions.
    root, blocks = small_tree(os.urandom(900))
    store.put_many(blocks)
    steps = Collection(store).steps()
    next(steps)
    store.pin(root, size=900)
    for _ in steps:
        pass
    assert store.missing_blocks(root) == []


def test_a_session_pinned_between_two_sweep_steps_keeps_its_dag(store: BlockStore) -> None:
    # Its blocks are kept as the session's, then as the pin's: the sweep looks
    # for new pins whenever one was made since its last look.
    root, blocks = small_tree(os.urandom(900))
    session = store.begin_session("an upload")
    store.put_many(blocks, session=session)
    store.put_many([raw_block(os.urandom(8)) for _ in range(64)])  # a cache to sweep
    collection = Fine(store)
    steps = collection.steps()
    while not collection.marked:
        next(steps)
    next(steps)  # one sweep step: 16 keys
    assert collection.result.removed_blocks > 0
    store.pin(root, size=900, session=session)
    for _ in steps:
        pass
    assert store.missing_blocks(root) == []
    assert collection.result.removed_blocks == 64


def test_a_fetch_in_progress_keeps_the_blocks_it_would_read(store: BlockStore) -> None:
    first_root, first = small_tree(os.urandom(500))
    later_root, later = small_tree(os.urandom(500))
    store.put_many([*first, *later])
    active: list[CID] = [first_root]
    steps = Collection(store, active=lambda: active).steps()
    next(steps)
    active.append(later_root)  # a fetch that began after the mark
    for _ in steps:
        pass
    assert all(held(store, first)) and all(held(store, later))


def test_the_cache_keeps_the_files_fetched_last_within_its_budget(store: BlockStore) -> None:
    trees = [small_tree(os.urandom(300 + 100 * i)) for i in range(4)]
    for _, blocks in trees:
        store.put_many(blocks)
    newest_first = [root for root, _ in reversed(trees)]
    budget = dag_bytes(trees[3][1]) + dag_bytes(trees[2][1])
    done = Collection(store, cache=newest_first, cache_bytes=budget).run()
    assert [all(held(store, blocks)) for _, blocks in trees] == [False, False, True, True]
    assert not any(held(store, trees[0][1])) and not any(held(store, trees[1][1]))
    assert (done.cached_roots, done.cached_bytes) == (2, budget)


def test_usage_counts_the_unpinned_bytes(store: BlockStore) -> None:
    root, blocks = import_bytes(os.urandom(600_000))  # real 256 KiB leaves
    store.put_many(blocks)
    before = store.usage()
    assert before.pinned_bytes == 0 and before.unpinned_bytes >= 600_000
    store.pin(root, size=600_000)
    after = store.usage()
    assert after.pinned_bytes == 600_000
    assert after.unpinned_bytes < before.unpinned_bytes - 590_000
    store.pin(root, size=600_000, name="pinned again")  # (the sum is kept, not re-read)
    assert store.usage().pinned_bytes == 600_000
    assert store.unpin(root) and not store.unpin(root)
    assert store.usage() == before


def test_only_one_collection_at_a_time(store: BlockStore) -> None:
    from store.blockstore import StoreError

    steps = Collection(store).steps()
    next(steps)
    with pytest.raises(StoreError, match="already running"):
        Collection(store).run()
    steps.close()  # an abandoned collection releases the store
    assert Collection(store).run().complete


# Each op: what the node does between two steps of a collection.
OPS = st.lists(
    st.tuples(
        st.sampled_from(["cache", "pin", "upload", "finish", "abandon", "unpin", "step"]),
        st.integers(0, 5),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, seed=st.integers(0, 2**32 - 1))
def test_no_interleaving_of_writes_and_a_collection_breaks_a_pin(
    ops: list[tuple[str, int]], seed: int
) -> None:
    import random

    rng = random.Random(seed)
    trees = [small_tree(SILENCE + rng.randbytes(150 + 90 * i)) for i in range(6)]
    with tempfile.TemporaryDirectory() as tmp, BlockStore.open(Path(tmp) / "s") as store:
        sessions: dict[int, str] = {}
        steps = Fine(store, cache=[trees[0][0]], cache_bytes=200).steps()
        for op, i in ops:
            root, blocks = trees[i]
            if op == "cache":
                store.put_many(blocks)
            elif op == "pin" and store.missing_blocks(root) == []:
                store.pin(root, size=1)
            elif op == "upload" and i not in sessions:
                sessions[i] = store.begin_session("upload")
                store.put_many(blocks, session=sessions[i])
            elif op == "finish" and i in sessions:
                store.pin(root, size=1, session=sessions.pop(i))
            elif op == "abandon" and i in sessions:
                store.end_session(sessions.pop(i))
            elif op == "unpin":
                store.unpin(root)
            elif op == "step" and next(steps, "done") == "done":
                steps = Fine(store).steps()
            for pin in store.pins():  # the invariant, after every op
                assert store.missing_blocks(pin.cid) == []
            for j in sessions:
                assert all(store.has(b.cid) for b in trees[j][1])
        for _ in steps:
            pass
        assert all(store.missing_blocks(p.cid) == [] for p in store.pins())
        # ... and, nothing else running, a collection leaves only what is needed
        steps.close()
        Collection(store).run()
        needed = {p.cid for p in store.pins()} | {trees[j][0] for j in sessions}
        for root, blocks in trees:
            assert all(held(store, blocks)) == (root in needed)


async def test_a_node_collects_while_it_streams(tmp_path: Path) -> None:
    """A gateway-like node (every fetch unpinned, no cache budget) streams a
    file to a slow reader twice, with a collection between every two leaves.
    The first stream's blocks go to the store as they arrive and are read back
    from it; the second stream reads them all from the store. Both get every
    byte, and no block comes over the network twice. (No repair rounds: bob
    would own the file and pin it.)"""
    payload = os.urandom(12 * 262_144)
    small_buffer = BitswapConfig(store_batch=2, buffer_bytes=2 * 262_144)
    async with trio.open_nursery() as nursery:
        alice, bob = await start_nodes(
            nursery,
            tmp_path,
            2,
            cache_bytes=0,
            gc_interval=3600,
            repair_interval=3600,
            bitswap=small_buffer,
        )
        root = await alice.add(chunks(payload), name="track")
        for network_blocks in (len(import_bytes(payload)[1]), 0):
            with trio.fail_after(30):
                fetch = await bob.fetch(root, pin=False)
                got = []
                async for leaf in fetch.leaves():
                    got.append(leaf)
                    swept = await bob.collect(force=True)
                    assert swept is not None and swept.complete
            assert b"".join(got) == payload
            assert sum(fetch.blocks_from.values()) == network_blocks
            assert bob.store.missing_blocks(root) == []  # (kept for the fetch)
        del fetch  # ended: what it read is a cache now, over its budget
        done = await bob.collect()
        assert done is not None and done.removed_bytes > len(payload)
        assert bob.store.usage().unpinned_bytes == 0
        assert alice.store.missing_blocks(root) == []  # its pin untouched
        nursery.cancel_scope.cancel()


async def three_fetched(alice: Node, bob: Node) -> list[CID]:
    """Three files of 4 leaves added at alice, then fetched unpinned at bob,
    in this order (their roots)."""
    payloads = [os.urandom(4 * 262_144 + i) for i in range(3)]
    roots = [await alice.add(chunks(p)) for p in payloads]
    with trio.fail_after(30):
        for root, payload in zip(roots, payloads, strict=True):
            fetch = await bob.fetch(root, pin=False)
            assert await fetch.read_all() == payload
    return roots


async def test_a_node_collects_by_itself_once_its_cache_is_over_budget(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        alice, bob = await start_nodes(
            nursery,
            tmp_path,
            2,
            cache_bytes=9 * 262_144,  # two of the files; half of it keeps one
            gc_interval=0.01,
            repair_interval=3600,
        )
        roots = await three_fetched(alice, bob)
        with trio.fail_after(30):
            # a collection that has ended (the usage drops below the budget
            # while its sweep is still running, before it is recorded)
            while not bob.collections or bob.store.usage().unpinned_bytes > 9 * 262_144:
                await bob.collected.wait()
        # the file fetched last is kept whole, the first is gone
        assert bob.store.missing_blocks(roots[2]) == []
        assert not bob.store.has(roots[0])
        assert bob.collections[-1].cached_roots == 1
        done: list[Collected | None] = []

        async def collect_now() -> None:
            done.append(await bob.collect(force=True))

        with trio.fail_after(30):  # two at once, beside the node's own: each waits its turn
            async with trio.open_nursery() as both:
                both.start_soon(collect_now)
                both.start_soon(collect_now)
        assert len(done) == 2 and all(d is not None and d.complete for d in done)
        nursery.cancel_scope.cancel()


async def test_the_cache_keeps_its_order_across_a_restart(tmp_path: Path) -> None:
    quiet: dict[str, Any] = {"gc_interval": 3600, "repair_interval": 3600}
    async with trio.open_nursery() as nursery:
        alice, bob = await start_nodes(nursery, tmp_path, 2, names=["alice", "bob"], **quiet)
        roots = await three_fetched(alice, bob)
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        (bob,) = await start_nodes(
            nursery, tmp_path, 1, names=["bob"], cache_bytes=9 * 262_144, **quiet
        )
        done = await bob.collect()
        assert done is not None and done.cached_roots == 1
        assert bob.store.missing_blocks(roots[2]) == []  # the file fetched last
        assert not bob.store.has(roots[0]) and not bob.store.has(roots[1])
        nursery.cancel_scope.cancel()


def test_a_recent_list_that_rotted_is_an_empty_one(store: BlockStore) -> None:
    root, _ = small_tree(b"x" * 100)
    store.save_recent([root])
    assert store.recent() == [root]
    with store._env.begin(write=True, db=store._meta) as txn:
        txn.put(b"recent", b"\xff not cbor")
    assert store.recent() == []
