"""The stake gate on the embedded chain: real nodes, real contracts on py-evm.

Announcements count only from registered content nodes with at least the
minimum stake; deregistering or slashing below it stops a peer being accepted
within a few blocks and drops its provider records; an unstaked flood is
rejected while honest announcements still arrive.
"""

from __future__ import annotations

import time
from pathlib import Path

import trio

from chain.local import open_chain
from chain.oracle import AllowlistOracle
from chain.stake import ChainStakeOracle
from node import Node, NodeConfig
from p2p.host import peer_id_bytes
from p2p.keys import NodeKey, PeerId
from protocols import announce
from protocols.cid import CID, RAW
from simnet.local import start_nodes, wait_for_mesh
from tests.conftest import chunks, pattern, wait_unstaked

# a peer below the minimum must be refused within this many blocks of the change
MAX_BLOCKS_TO_REJECT = 2


async def wait_provider(node: Node, cid: CID, peer: PeerId) -> None:
    while peer_id_bytes(peer) not in node.store.providers(cid):
        await node.announced.wait()


def raw_cid(data: bytes) -> CID:
    return CID.for_block(RAW, data)


def announcement(cid: CID) -> bytes:
    return announce.encode(announce.Announcement(time.time(), 600, (), (cid,)))


async def test_staked_nodes_gossip_and_a_deregistered_one_is_dropped(tmp_path: Path) -> None:
    chain = await open_chain()
    async with trio.open_nursery() as nursery:
        nodes = await start_nodes(nursery, tmp_path, 3, chain=chain, chain_poll_interval=0.1)
        with trio.fail_after(30):
            await wait_for_mesh(nodes, announce.TOPIC)
        a, b, c = nodes
        cid = await a.add(chunks(pattern(300_000)), name="t")
        with trio.fail_after(30):
            await wait_provider(c, cid, a.peer_id)
        assert c.validator.rejected == {}

        # a deregisters: c stops accepting it and forgets what it announced
        block = await chain.block_number()
        await chain.deregister(a.key)
        oracle = c.oracle
        assert isinstance(oracle, ChainStakeOracle)
        with trio.fail_after(30):
            seen_at = await wait_unstaked(oracle, a.peer_id)
        assert seen_at - (block + 1) <= MAX_BLOCKS_TO_REJECT
        assert peer_id_bytes(a.peer_id) not in c.store.providers(cid)
        assert c.unstaked_dropped >= 1
        assert not await c.validator(a.peer_id, b.peer_id, announcement(cid))
        assert c.validator.rejected.get("unstaked") == 1
        # b is untouched
        assert await c.validator(b.peer_id, b.peer_id, announcement(cid))
        nursery.cancel_scope.cancel()


async def test_slash_below_minimum_is_rejected_but_above_is_not(tmp_path: Path) -> None:
    chain = await open_chain()
    async with trio.open_nursery() as nursery:
        nodes = await start_nodes(nursery, tmp_path, 2, chain=chain, chain_poll_interval=0.1)
        a, b = nodes
        key = NodeKey.load_or_create(tmp_path / "extra")
        await chain.register(key, stake=chain.minimum_stake * 2)
        extra = Node(NodeConfig.load(tmp_path / "extra"), key=key, oracle=chain.oracle())
        await nursery.start(extra.run)
        oracle = b.oracle
        assert isinstance(oracle, ChainStakeOracle)
        assert await oracle.stake_of(extra.peer_id) is not None
        # slashing half of a double stake leaves exactly the minimum: still accepted
        await chain.slash(extra.key, chain.minimum_stake)
        with trio.fail_after(30):
            while oracle.stats.clears == 0:
                await oracle.head_changed.wait()
        stake = await oracle.stake_of(extra.peer_id)
        assert stake is not None and stake.sufficient
        # one more token slashed: below the minimum, rejected within a few blocks
        block = await chain.block_number()
        await chain.slash(extra.key, 10**18)
        with trio.fail_after(30):
            seen_at = await wait_unstaked(oracle, extra.peer_id)
        assert seen_at - (block + 1) <= MAX_BLOCKS_TO_REJECT
        assert not await b.validator(extra.peer_id, extra.peer_id, announcement(raw_cid(b"x")))
        assert await b.validator(a.peer_id, a.peer_id, announcement(raw_cid(b"x")))
        nursery.cancel_scope.cancel()


async def test_unstaked_flood_is_rejected_and_honest_announcements_arrive(
    tmp_path: Path,
) -> None:
    chain = await open_chain()
    async with trio.open_nursery() as nursery:
        honest = await start_nodes(nursery, tmp_path, 2, chain=chain, chain_poll_interval=0.1)
        # the sybil runs code that trusts itself; it is not on the chain
        sybil = Node(
            NodeConfig.load(tmp_path / "sybil", bootstrap=(honest[1].host.addrs()[0],)),
            oracle=AllowlistOracle(allow_all=True),
        )
        await nursery.start(sybil.run)
        with trio.fail_after(30):
            await wait_for_mesh([*honest, sybil], announce.TOPIC)
        flood = 200
        for i in range(flood):
            await sybil.gossip.publish(announce.TOPIC, announcement(raw_cid(i.to_bytes(4, "big"))))
        cid = await honest[0].add(chunks(pattern(10_000)), name="honest")
        with trio.fail_after(30):
            await wait_provider(honest[1], cid, honest[0].peer_id)
        receiver = honest[1]
        with trio.fail_after(30):
            while receiver.validator.rejected.get("unstaked", 0) < 1:
                await receiver.validator.verdict.wait()
        for i in range(flood):
            assert not receiver.store.providers(raw_cid(i.to_bytes(4, "big")))
        assert receiver.validator.accepted >= 1
        nursery.cancel_scope.cancel()
