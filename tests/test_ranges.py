"""Range reads: bytes [a, b) of a file, fetching only the blocks that cover them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from chain.oracle import AllowlistOracle
from node import Node, NodeConfig
from p2p.host import peer_id_bytes
from protocols import announce
from simnet.local import start_nodes, wait_for_mesh
from tests.conftest import chunks, pattern

LEAF = 262_144


async def read(node: Node, cid: object, start: int, end: int | None) -> tuple[bytes, int]:
    """The bytes of the range and how many blocks the node had to fetch for them."""
    before = node.bitswap.stats.blocks_fetched
    fetch = await node.fetch(cid, pin=False, start=start, end=end)  # type: ignore[arg-type]
    data = b"".join([c async for c in fetch.leaves()])
    return data, node.bitswap.stats.blocks_fetched - before


async def test_ranges_from_another_node_fetch_only_their_blocks(tmp_path: Path) -> None:
    payload = os.urandom(10 * LEAF + 1234)
    async with trio.open_nursery() as nursery:
        a, b = await start_nodes(nursery, tmp_path, 2, replicas=1)
        with trio.fail_after(20):
            await wait_for_mesh([a, b], announce.TOPIC)
        cid = await a.add(chunks(payload), name="t")
        with trio.fail_after(20):
            while not b.store.providers(cid):
                await b.announced.wait()
        size = len(payload)
        cases = [
            (0, 1, 2),  # root + first leaf
            (LEAF - 1, LEAF + 1, 3),  # across a leaf edge: two leaves
            (LEAF, 2 * LEAF, 2),  # exactly one leaf
            (size - 1, size, 2),  # the last byte
            (5 * LEAF + 7, None, 7),  # open-ended: leaves 5..10 (6 leaves; root known)
            (size, size, 1),  # empty at the end: only the root, for the size
        ]
        with trio.fail_after(60):
            for start, end, _ in cases:
                got, _blocks = await read(b, cid, start, end)
                assert got == payload[start:end]
        # block counts on a node that starts cold each time
        for start, end, blocks in cases:
            c = Node(
                NodeConfig.load(tmp_path / f"c{start}-{end}", bootstrap=(a.host.addrs()[0],)),
                oracle=AllowlistOracle(allow_all=True),
            )
            await nursery.start(c.run)
            c.store.add_providers(peer_id_bytes(a.peer_id), [cid], ttl=60)
            with trio.fail_after(30):
                got, fetched = await read(c, cid, start, end)
            assert got == payload[start:end]
            assert fetched == blocks, (start, end)
        assert not b.store.is_pinned(cid)  # a range is never pinned
        nursery.cancel_scope.cancel()


async def test_ranges_across_a_two_level_dag_from_the_local_store(tmp_path: Path) -> None:
    size = 174 * LEAF + 3 * LEAF + 5  # over one full 174-leaf subtree: two levels
    payload = pattern(size)
    async with trio.open_nursery() as nursery:
        (a,) = await start_nodes(nursery, tmp_path, 1)
        cid = await a.add(chunks(payload), name="big")
        edges = [0, LEAF - 1, 174 * LEAF - 1, 174 * LEAF, 174 * LEAF + 1, size - 1]
        with trio.fail_after(60):
            for start in edges:
                for length in (1, 2, LEAF + 3):
                    end = min(size, start + length)
                    got, fetched = await read(a, cid, start, end)
                    assert got == payload[start:end], (start, end)
                    assert fetched == 0
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("start", "end"), [(-1, 5), (5, 4)])
async def test_bad_ranges_are_refused(tmp_path: Path, start: int, end: int) -> None:
    async with trio.open_nursery() as nursery:
        (a,) = await start_nodes(nursery, tmp_path, 1)
        cid = await a.add(chunks(b"abc"), name="t")
        with pytest.raises(ValueError, match="bad byte range"):
            await a.fetch(cid, pin=False, start=start, end=end)
        nursery.cancel_scope.cancel()
