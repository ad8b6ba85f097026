"""Virtual-time mode: the same Node code over p2p.memory's modelled network.

**A model, not a measurement of libp2p.** Each :class:`node.Node` is
unchanged except for its host and gossip (p2p.memory: in-memory streams with
a latency/bandwidth/loss link model, a flooding gossip) and runs under
``trio.testing.MockClock``: time only passes when every task waits, and then
jumps to the next deadline. Link delays are the only cost: validation,
hashing and LMDB take no virtual time. See docs/simnet-virtual.md.

Run it under ``trio.run(main, clock=MockClock(autojump_threshold=0))`` (or
pytest-trio's ``autojump_clock``). Caveats handled here:

- **Threads.** LMDB writes in Bitswap, the chain's web3 calls and
  ``trio.open_file`` run in worker threads (``trio.to_thread``). MockClock's
  autojump would see the waiting task as blocked and jump the clock while the
  thread works, firing timeouts (stall, query, ``fail_after``) that real time
  would not. :func:`start_virtual_nodes` starts :func:`hold_clock_for_threads`,
  which takes over the jumping and never jumps while a worker thread of the
  default limiter is busy. So all timeouts are in virtual time and a thread's
  work costs none of it.
- **Wall-clock reads.** Announcement timestamps, provider-record expiry and
  Bitswap's stall bookkeeping read ``time.time()``/``time.monotonic()``,
  which do not follow the mock clock. Announcements are checked against the
  wall clock at both ends, so they still validate; provider TTLs expire in
  wall time (a run is shorter than any TTL); a stalled provider is not dropped
  in virtual time (``_wait`` wakes at the virtual stall timeout but measures
  wall time), so a fetch from a silent provider waits for its deadline.
- **Stores.** One LMDB environment per node, like the real node, with a small
  ``map_size`` (the default 1 TiB of address space times 10,000 nodes does
  not fit in 47 bits). Each environment costs 4 file descriptors, so when
  ``count`` would use more than half of ``ulimit -n``, groups of 32 nodes
  share one environment, each node in named databases of its own
  (store/shared.py).
- **Chain.** ``chain=`` registers staked nodes on a LocalChain like
  simnet.local; at scale use the default, one shared AllowlistOracle (py-evm
  takes seconds per registration: 10,000 would take hours).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from chain.local import LocalChain
from chain.oracle import AllowlistOracle, StakeOracle
from node import Node, NodeConfig
from p2p.host import HostConfig, peer_id_of_key
from p2p.keys import KEY_FILE, NodeKey, PeerId
from p2p.memory import LinkModel, Links, MemoryGossip, MemoryNetwork
from simnet.local import chain_topology
from store.shared import SharedEnvironment

__all__ = [
    "LinkModel",
    "LinkTable",
    "hold_clock_for_threads",
    "measure",
    "random_topology",
    "seed_keys",
    "seeded_key",
    "start_virtual_nodes",
]

STORE_MAP_SIZE = 64 << 20  # address space per node's LMDB map (the file grows as used)
FDS_PER_ENV = 3  # per environment: data.mdb, lock.mdb and LMDB's O_DSYNC descriptor


@dataclass(frozen=True)
class LinkTable:
    """Links of a virtual network: a default and overrides per pair of node names
    (both directions)."""

    default: LinkModel = field(default_factory=LinkModel)
    pairs: Mapping[tuple[str, str], LinkModel] = field(default_factory=dict)

    def resolve(self, peers: Mapping[str, PeerId]) -> Links:
        return Links(
            self.default,
            {frozenset((peers[a], peers[b])): m for (a, b), m in self.pairs.items()},
        )


def seeded_key(seed: int, name: str) -> NodeKey:
    """The key of node ``name`` in a run with ``seed`` (same derivation as simnet.scenario)."""
    return NodeKey(hashlib.sha256(f"coliving-simnet/{seed}/{name}".encode()).digest())


def seed_keys(base_dir: Path, names: Sequence[str], seed: int) -> list[NodeKey]:
    """Write the seeded keys into ``base_dir/<name>`` so that simnet.local's
    nodes get the same identities as the virtual ones (an existing key stays)."""
    keys = []
    for name in names:
        data_dir = base_dir / name
        if (data_dir / KEY_FILE).exists():
            keys.append(NodeKey.load(data_dir))
            continue
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = seeded_key(seed, name)
        fd = os.open(data_dir / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key.secret.hex() + "\n")
        keys.append(key)
    return keys


def random_topology(n: int, degree: int = 3, *, seed: int = 0) -> list[list[int]]:
    """Node i dials ``degree`` distinct earlier nodes chosen at random (seeded):
    a connected graph of diameter about log(n), unlike chain_topology's n - 1."""
    rng = random.Random(seed)
    return [sorted(rng.sample(range(i), min(i, degree))) for i in range(n)]


async def hold_clock_for_threads(clock: MockClock) -> None:
    """Jump ``clock`` to the next deadline whenever every task waits, but never while
    a worker thread of trio's default limiter is busy (see the module docstring).

    While this task waits in ``wait_all_tasks_blocked``, trio wakes it instead of
    autojumping, so it replaces MockClock's autojump whatever its threshold."""
    limiter = trio.to_thread.current_default_thread_limiter()
    while True:
        busy = limiter.statistics().borrowed_tokens > 0
        # with a thread busy, let the run loop sleep (1 ms of real time at most)
        # until the thread reports back instead of spinning
        await wait_all_tasks_blocked(cushion=0.001 if busy else 0.0)
        if limiter.statistics().borrowed_tokens > 0:
            continue
        jump = trio.lowlevel.current_statistics().seconds_to_next_deadline
        if 0 < jump < math.inf:
            clock.jump(jump)


def _fd_budget() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


async def start_virtual_nodes(
    nursery: trio.Nursery,
    base_dir: Path,
    count: int,
    *,
    topology: Sequence[Sequence[int]] | None = None,
    names: Sequence[str] | None = None,
    staked: Sequence[bool] | None = None,
    chain: LocalChain | None = None,
    links: LinkModel | LinkTable | None = None,
    seed: int = 0,
    network: MemoryNetwork | None = None,
    oracle: StakeOracle | None = None,
    map_size: int = STORE_MAP_SIZE,
    stores_per_env: int | None = None,
    **config: object,
) -> list[Node]:
    """Start ``count`` nodes on an in-memory network (a model: see above); node i
    dials the nodes ``topology[i]``. Mirrors simnet.local.start_nodes, except
    that node i starts as soon as the hosts it dials listen (not after the
    previous node has finished starting): startup takes virtual time of the
    order of the topology's depth, not of ``count``.

    ``staked[i]`` False leaves node i out of the (one, shared) allowlist, or
    unregistered on ``chain``. ``oracle`` replaces both (e.g.
    ``AllowlistOracle(allow_all=True)`` at scale: see docs/simnet-virtual.md).
    Keys come from ``seed`` unless ``base_dir/<name>/node.key`` exists. Pass
    ``network`` to keep a handle on the links and their statistics.
    ``stores_per_env`` nodes share one LMDB environment (store.shared); by
    default 1 (each node its own, like a real node) unless the file
    descriptor limit would not allow it."""
    topology = topology or chain_topology(count)
    names = names or [f"node{i}" for i in range(count)]
    staked = staked or [True] * count
    keys = seed_keys(base_dir, names, seed)
    peers = [peer_id_of_key(k) for k in keys]
    table = links if isinstance(links, LinkTable) else LinkTable(links or LinkModel())
    if network is None:
        network = MemoryNetwork(table.resolve(dict(zip(names, peers, strict=True))), seed=seed)
    clock = trio.lowlevel.current_clock()
    if isinstance(clock, MockClock):
        nursery.start_soon(hold_clock_for_threads, clock)
    if oracle is None and chain is None:
        oracle = AllowlistOracle([p for p, s in zip(peers, staked, strict=True) if s])
    elif chain is not None:
        for key, is_staked in zip(keys, staked, strict=True):
            if is_staked:
                await chain.register(key)
    if stores_per_env is None:
        stores_per_env = 1 if count * FDS_PER_ENV < _fd_budget() // 2 else 32
    envs: list[SharedEnvironment] = []
    hosts = [network.host(key) for key in keys]
    nodes: list[Node] = []
    for i, name in enumerate(names):
        bootstrap = tuple(hosts[j].addrs()[0] for j in topology[i])
        hosts[i].config = HostConfig(bootstrap=bootstrap)
        cfg = NodeConfig.load(base_dir / name, bootstrap=bootstrap, **config)
        if i % stores_per_env == 0:
            envs.append(
                SharedEnvironment(
                    base_dir / name / "store"
                    if stores_per_env == 1
                    else base_dir / f"stores-{i // stores_per_env}",
                    capacity=stores_per_env,
                    map_size=map_size * stores_per_env,
                )
            )
            store = envs[-1].store(name)
        nodes.append(
            Node(
                cfg,
                key=keys[i],
                oracle=oracle if chain is None else chain.oracle(),
                host=hosts[i],
                gossip=MemoryGossip(hosts[i], cfg.gossip),
                store=store,
            )
        )

    async def boot(i: int) -> None:
        for j in topology[i]:
            await hosts[j].ready.wait()
        await nursery.start(nodes[i].run)

    async with trio.open_nursery() as booting:
        for i in range(count):
            booting.start_soon(boot, i)
    if chain is not None:
        for key, node, is_staked in zip(keys, nodes, staked, strict=True):
            if is_staked:
                await chain.update_multiaddrs(key, node.host.addrs())
    return nodes


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def measure(
    base_dir: Path, count: int, *, degree: int = 3, seed: int = 1
) -> dict[str, float]:
    """The scale run of docs/simnet-virtual.md: ``count`` nodes on a random graph,
    one upload announced to all, one fetch by the last node. Replication is
    off (``AllowlistOracle(allow_all=True)``: no placement set), because
    Replicator.view() dials every staked member each round: O(count^2)."""
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nodes = await start_virtual_nodes(
            nursery,
            base_dir,
            count,
            topology=random_topology(count, degree, seed=seed),
            seed=seed,
            oracle=AllowlistOracle(allow_all=True),
        )
        gc.freeze()  # the nodes live to the end: the collector need not rescan them
        up = time.perf_counter()
        data = random.Random(seed).randbytes(300_000)
        root = await nodes[0].add(_one_chunk(data))
        sent = trio.current_time()
        latencies: list[float] = []

        async def hear(node: Node) -> None:
            while not node.store.providers(root):
                await node.announced.wait()
            latencies.append(trio.current_time() - sent)

        with trio.fail_after(600):
            async with trio.open_nursery() as waiting:
                for node in nodes[1:]:
                    waiting.start_soon(hear, node)
            fetch = await nodes[-1].fetch(root)
            fetched = await fetch.read_all() == data
        latencies.sort()
        figures = {
            "nodes": count,
            "startup_wall_s": up - started,
            "startup_virtual_s": sent,
            "announced_to": len(latencies),
            "latency_median_virtual_s": latencies[len(latencies) // 2],
            "latency_max_virtual_s": latencies[-1],
            "fetch_ok": float(fetched),
            "virtual_s": trio.current_time(),
            "wall_s": time.perf_counter() - started,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        nursery.cancel_scope.cancel()
    gc.unfreeze()
    return figures


def main() -> None:
    """``python -m simnet.virtual COUNT [DIR]``: print the figures of :func:`measure`."""
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    logging.basicConfig(level=logging.ERROR)
    gc.set_threshold(50_000, 20, 100)  # millions of long-lived objects
    with tempfile.TemporaryDirectory(prefix="coliving-virtual-") as tmp:
        base = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tmp)
        figures = trio.run(measure, base, count, clock=MockClock(autojump_threshold=0))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
