"""Several real nodes in one trio process on 127.0.0.1: the test and devnet driver.

Used by the tests, ``coliving devnet`` and the benchmarks, so all three run
the same code. Each node has its own data directory and key. Without a chain,
every node's allowlist holds the staked others; with one (a
:class:`chain.local.LocalChain`), the staked nodes are registered on it
before they start and every node asks the chain through its own
:class:`ChainStakeOracle`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import trio

from chain.local import LocalChain
from node import Node, NodeConfig
from p2p.host import peer_id_of_key
from p2p.keys import NodeKey, PeerId


def chain_topology(n: int) -> list[list[int]]:
    """Node i bootstraps from node i-1: a line, so content must cross hops."""
    return [[i - 1] if i else [] for i in range(n)]


def star_topology(n: int) -> list[list[int]]:
    return [[0] if i else [] for i in range(n)]


async def start_nodes(
    nursery: trio.Nursery,
    base_dir: Path,
    count: int,
    *,
    topology: Sequence[Sequence[int]] | None = None,
    names: Sequence[str] | None = None,
    staked: Sequence[bool] | None = None,
    chain: LocalChain | None = None,
    **config: object,
) -> list[Node]:
    """Start ``count`` nodes in order; node i dials the nodes ``topology[i]``.

    ``staked[i]`` False leaves node i off everyone's allowlist, or unregistered
    on ``chain``.
    """
    topology = topology or chain_topology(count)
    names = names or [f"node{i}" for i in range(count)]
    staked = staked or [True] * count
    keys = []
    for name in names:
        data_dir = base_dir / name
        keys.append(NodeKey.load_or_create(data_dir))
    allow = tuple(peer_id_of_key(k) for k, s in zip(keys, staked, strict=True) if s)
    if chain is not None:
        allow = ()
        for key, is_staked in zip(keys, staked, strict=True):
            if is_staked:
                await chain.register(key)
    nodes: list[Node] = []
    for i, name in enumerate(names):
        bootstrap = tuple(nodes[j].host.addrs()[0] for j in topology[i])
        cfg = NodeConfig.load(
            base_dir / name,
            bootstrap=bootstrap,
            allow=allow,
            **config,
        )
        node = Node(cfg, key=keys[i], oracle=None if chain is None else chain.oracle())
        await nursery.start(node.run)
        if chain is not None and staked[i]:
            await chain.update_multiaddrs(keys[i], node.host.addrs())
        nodes.append(node)
    return nodes


async def wait_for_mesh(nodes: Sequence[Node], topic: str) -> None:
    """Until every node has heard the subscription of each node it is connected to.

    No deadline of its own: callers wrap it in ``trio.fail_after``."""
    ours = {n.peer_id for n in nodes}
    for node in nodes:
        for peer in node.host.connected_peers():
            if peer in ours:
                await node.gossip.wait_for_subscriber(peer, topic)


def peer_ids(nodes: Sequence[Node]) -> list[PeerId]:
    return [n.peer_id for n in nodes]
