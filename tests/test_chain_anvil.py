"""The stake gate against a real JSON-RPC chain: anvil, started by the tests.

Skipped with a message where anvil is not installed (``npm ci`` installs it).
"""

from __future__ import annotations

import dataclasses
import socket
import time
from pathlib import Path

import trio

from chain.access import ChainAccess, ChainConfig, connect
from chain.local import LocalChain, open_chain
from chain.stake import ChainStakeOracle
from node import Node, NodeConfig
from p2p.host import peer_id_bytes, peer_id_of_key
from p2p.keys import NodeKey, PeerId
from protocols import announce
from protocols.cid import CID, RAW
from simnet.local import start_nodes, wait_for_mesh
from tests.anvil import rpc_call, start_anvil
from tests.conftest import chunks, pattern, wait_unstaked

MAX_BLOCKS_TO_REJECT = 2


def announcement() -> bytes:
    cid = CID.for_block(RAW, b"anything")
    return announce.encode(announce.Announcement(time.time(), 600, (), (cid,)))


async def test_register_gossip_then_deregister_and_slash_are_rejected(
    anvil_url: str, tmp_path: Path
) -> None:
    chain = await open_chain(anvil_url)
    async with trio.open_nursery() as nursery:
        nodes = await start_nodes(nursery, tmp_path, 3, chain=chain, chain_poll_interval=0.1)
        with trio.fail_after(30):
            await wait_for_mesh(nodes, announce.TOPIC)
        a, b, c = nodes
        cid = await a.add(chunks(pattern(50_000)), name="t")
        with trio.fail_after(30):
            while peer_id_bytes(a.peer_id) not in c.store.providers(cid):
                await c.announced.wait()
        oracle = c.oracle
        assert isinstance(oracle, ChainStakeOracle)

        block = await chain.block_number()
        await chain.deregister(a.key)
        with trio.fail_after(30):
            seen_at = await wait_unstaked(oracle, a.peer_id)
        assert seen_at - (block + 1) <= MAX_BLOCKS_TO_REJECT
        assert peer_id_bytes(a.peer_id) not in c.store.providers(cid)
        assert not await c.validator(a.peer_id, a.peer_id, announcement())

        block = await chain.block_number()
        await chain.slash(b.key, 1)  # one base unit under the minimum
        with trio.fail_after(30):
            seen_at = await wait_unstaked(oracle, b.peer_id)
        assert seen_at - (block + 1) <= MAX_BLOCKS_TO_REJECT
        assert not await c.validator(b.peer_id, b.peer_id, announcement())
        assert await c.validator(c.peer_id, c.peer_id, announcement())
        nursery.cancel_scope.cancel()


async def _registered_and_seen(chain: LocalChain, oracle: ChainStakeOracle, key: NodeKey) -> PeerId:
    await chain.register(key)
    await oracle.poll()
    peer = peer_id_of_key(key)
    stake = await oracle.stake_of(peer)
    assert stake is not None and stake.sufficient
    return peer


async def test_a_reverted_registration_is_not_left_accepted(anvil_url: str) -> None:
    chain = await open_chain(anvil_url)
    # polled by hand, so the test decides exactly what the oracle sees between polls
    oracle = chain.oracle()
    await oracle.poll()

    # the head goes back below what the oracle saw
    snapshot = rpc_call(anvil_url, "evm_snapshot")
    peer = await _registered_and_seen(chain, oracle, NodeKey.generate())
    rpc_call(anvil_url, "evm_revert", [snapshot])
    await oracle.poll()
    assert await oracle.stake_of(peer) is None
    assert oracle.stats.reorgs == 1

    # a reorg to a longer chain: same heights, other blocks
    snapshot = rpc_call(anvil_url, "evm_snapshot")
    peer = await _registered_and_seen(chain, oracle, NodeKey.generate())
    seen = oracle.head
    assert seen is not None
    rpc_call(anvil_url, "evm_revert", [snapshot])
    rpc_call(anvil_url, "anvil_mine", [hex(seen + 3 - await chain.block_number())])
    await oracle.poll()
    assert await oracle.stake_of(peer) is None
    assert oracle.stats.reorgs == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_unreachable_rpc_keeps_the_node_running_and_is_retried(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = NodeKey.generate()
    # anvil deploys at the same addresses every time (same deployer, same nonces), so
    # the deployment file can be written before the chain the oracle will find exists
    with start_anvil() as first:
        deployment = (await open_chain(first)).deployment
    access = ChainAccess(connect(ChainConfig(rpc=url, request_timeout=2)))
    oracle = ChainStakeOracle(access, deployment, poll_interval=0.05)
    node = Node(NodeConfig.load(tmp_path / "n"), oracle=oracle)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        with trio.fail_after(30):
            while oracle.stats.rpc_failures < 2:  # tried and tried again
                await oracle.polled.wait()
        assert not oracle.available
        assert await oracle.stake_of(peer_id_of_key(key)) is None
        assert not await node.validator(peer_id_of_key(key), node.peer_id, announcement())
        # the node still serves
        cid = await node.add(chunks(b"still here"), name="x")
        assert node.store.has(cid)

        with start_anvil(port=port) as second:
            chain = await open_chain(second)
            assert chain.deployment == deployment
            await chain.register(key)
            with trio.fail_after(60):  # backoff grows to at most 30 s; here it is ~1 s
                while not oracle.available or oracle.problem is not None:
                    await oracle.polled.wait()
            stake = await oracle.stake_of(peer_id_of_key(key))
            assert stake is not None and stake.sufficient
            nursery.cancel_scope.cancel()


async def test_wrong_chain_id_accepts_nobody_and_says_why(anvil_url: str) -> None:
    chain = await open_chain(anvil_url)
    key = NodeKey.generate()
    await chain.register(key)
    wrong = dataclasses.replace(chain.deployment, chain_id=1)
    oracle = ChainStakeOracle(chain.access, wrong, poll_interval=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(oracle.run)
        assert oracle.problem is not None
        assert "chain id 1" in oracle.problem and "31337" in oracle.problem
        assert await oracle.stake_of(peer_id_of_key(key)) is None
        nursery.cancel_scope.cancel()
    right = ChainStakeOracle(chain.access, chain.deployment)
    await right.poll()
    assert right.problem is None
    assert await right.stake_of(peer_id_of_key(key)) is not None


def test_node_run_refuses_a_deployment_of_another_chain(anvil_url: str, tmp_path: Path) -> None:
    from tests.test_cli import run

    async def deploy() -> LocalChain:
        return await open_chain(anvil_url)

    chain = trio.run(deploy)
    wrong = dataclasses.replace(chain.deployment, chain_id=5)
    path = tmp_path / "deployment.json"
    path.write_text(wrong.to_json())
    args = ["node", "run", "--data-dir", str(tmp_path / "n"), "--rpc", anvil_url]
    proc = run(*args, "--deployment", str(path), check=False)
    assert proc.returncode == 1
    assert b"deployment is for chain id 5" in proc.stderr and b"31337" in proc.stderr
    assert b"Traceback" not in proc.stderr

    proc = run(*args, "--deployment", str(tmp_path / "missing.json"), check=False)
    assert proc.returncode == 1 and b"missing.json" in proc.stderr

    proc = run("node", "run", "--data-dir", str(tmp_path / "n"), "--rpc", "embedded", check=False)
    assert proc.returncode == 1 and b"coliving devnet" in proc.stderr


def test_devnet_on_anvil(anvil_url: str) -> None:
    from tests.test_cli import run

    out = run("devnet", "--nodes", "2", "--rpc", anvil_url, "--exit-after-demo").stdout.decode()
    assert f"chain: {anvil_url}, chain id 31337" in out
    assert out.count("200,000 LIVE staked") == 2
    assert "verified: yes" in out
    assert "rejected it (not staked on chain)" in out
