"""A slice of the simnet's nodes in one process, and the operations the runner asks of it.

:class:`NodeHost` starts planned nodes (honest, byzantine or sybil), each in
its own cancel scope so it can leave at any moment; uploads through a light
client and fetches at a node; applies partitions; and records what the
metrics need, as it happens:

- every gossip publish (message id, origin, time) and every validator
  verdict (message id, origin, receiver, time, accepted), by wrapping the
  node's publish and validator before it starts;
- duplicates and bytes on the wire, from :mod:`p2p.simlinks`;
- on demand (:meth:`sample`), each node's pins, repair status, Bitswap
  counters and misbehaviour reports.

The runner drives it directly (one process) or through :mod:`simnet.worker`
(JSON lines over a pipe); every operation takes and returns JSON-able values.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from chain.local import LocalChain
from chain.oracle import AllowlistOracle, Stake, StakeOracle
from chain.stake import ChainStakeOracle
from node import Client, Node, NodeConfig
from p2p import simlinks
from p2p.abc import TaskStatus
from p2p.keys import NodeKey, PeerId
from protocols import announce
from protocols.cid import CID, RAW
from protocols.errors import NotFoundError
from simnet.byzantine import ByzantineProvider, Mode
from simnet.scenario import PlannedNode, payload

log = logging.getLogger("coliving.simnet")

# (nursery, planned node, node config, oracle, key) -> a started-able Node
NodeFactory = Callable[[NodeConfig, NodeKey, StakeOracle], Node]


class OracleView:
    """A node's view of the process's one shared chain oracle (see SharedOracle)."""

    def __init__(self, oracle: ChainStakeOracle, lock: trio.Lock) -> None:
        self._oracle = oracle
        self._lock = lock

    async def stake_of(self, peer: PeerId) -> Stake | None:
        return await self._oracle.stake_of(peer)

    async def content_nodes(self, *, fresh: bool = False) -> list[PeerId]:
        # one read at a time: after a registry change the first caller reads the
        # members (1 + N calls) and the others then hit the cache, instead of every
        # node's replicator reading them all at once
        async with self._lock:
            return await self._oracle.content_nodes(fresh=fresh)

    @property
    def registered_addrs(self) -> dict[PeerId, list[str]]:
        return self._oracle.registered_addrs


class SharedOracle:
    """One :class:`ChainStakeOracle` for all the nodes of this process.

    Every node would read the same registry; with one oracle each, a registry
    change costs N x (1 + N) calls (each oracle re-reads every member), which
    at 200 nodes is minutes of RPC. The nodes get :class:`OracleView` objects
    (not WatchingOracles: the node neither runs nor hooks them); the shared
    oracle runs here and tells every node about a peer that lost its stake.
    """

    def __init__(self, oracle: ChainStakeOracle) -> None:
        self.oracle = oracle
        self.listeners: dict[str, Callable[[PeerId], None]] = {}
        self.lock = trio.Lock()
        oracle.on_unstaked = self._unstaked

    def _unstaked(self, peer: PeerId) -> None:
        for listener in list(self.listeners.values()):
            listener(peer)


class RecordingValidator(announce.AnnounceValidator):
    """The announce validator, noting each verdict for the metrics."""

    def __init__(
        self,
        oracle: StakeOracle,
        receiver: str,
        log_to: list[list[Any]],
        clock: Callable[[], float],
    ) -> None:
        super().__init__(oracle)
        self.receiver = receiver
        self.log_to = log_to
        self.now = clock

    async def __call__(self, origin: PeerId, forwarder: PeerId, data: bytes) -> bool:
        verdict = await super().__call__(origin, forwarder, data)
        self.log_to.append([simlinks.message_id(data), origin, self.receiver, self.now(), verdict])
        return verdict


async def _one(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 1 << 20):
        yield data[i : i + (1 << 20)]


class NodeHost:
    """Hosts nodes in this process for the runner. ``await nursery.start(host.run)``."""

    def __init__(
        self,
        base_dir: Path,
        *,
        chain: LocalChain | None,
        links: dict[str, Any],
        seed: int,
        config: dict[str, Any],
        clock: Callable[[], float] = time.time,
        factory: NodeFactory | None = None,
    ) -> None:
        self.base_dir = base_dir
        self.chain = chain
        self.model = simlinks.LinkModel.from_config(links, seed=seed)
        self.seed = seed
        self.config = config
        self.clock = clock
        self.factory = factory or (lambda cfg, key, oracle: Node(cfg, key=key, oracle=oracle))
        self.nodes: dict[str, Node] = {}
        self.planned: dict[str, PlannedNode] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        self.byzantine: dict[str, ByzantineProvider] = {}
        self.flooded: dict[str, int] = {}
        self.published: list[list[Any]] = []  # [msg id, origin, t, [root CIDs]]
        self.received: list[list[Any]] = []  # [msg id, origin, receiver, t, accepted]
        self._nursery: trio.Nursery | None = None
        self._client: Client | None = None
        self._client_lock = trio.Lock()
        self.shared: SharedOracle | None = None
        if chain is not None:
            self.shared = SharedOracle(chain.oracle(poll_interval=config["poll_interval"]))

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            simlinks.install(self.model, nursery)
            if self.shared is not None:
                await nursery.start(self.shared.oracle.run)
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                simlinks.uninstall()

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "NodeHost.run has not started"
        return self._nursery

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        """Dispatch one operation by name (the worker protocol's entry point)."""
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            raise ValueError(f"unknown simnet operation {op!r}")
        result: Awaitable[Any] = handler(**args)
        return await result

    # -- nodes ---------------------------------------------------------------------

    async def op_classes(self, classes: dict[str, str]) -> None:
        self.model.classes.update(classes)

    async def op_start(self, spec: dict[str, Any], bootstrap: list[str]) -> dict[str, Any]:
        plan = PlannedNode(
            **{
                **spec,
                "delegations": tuple(spec["delegations"]),
                "bootstrap": tuple(spec["bootstrap"]),
            }
        )
        key = NodeKey(bytes.fromhex(plan.secret))
        data_dir = self.base_dir / plan.name
        cfg = NodeConfig.load(
            data_dir,
            bootstrap=tuple(bootstrap),
            announce_interval=self.config["announce_interval"],
            repair_interval=self.config["repair_interval"],
            replicas=self.config["replicas"],
        )
        oracle: StakeOracle
        if plan.role == "sybil" or self.shared is None:
            oracle = AllowlistOracle(allow_all=True)  # a sybil trusts itself
        else:
            oracle = OracleView(self.shared.oracle, self.shared.lock)
        node = self.factory(cfg, key, oracle)
        if self.shared is not None and plan.role != "sybil":
            self.shared.listeners[plan.name] = node._peer_unstaked
        node.validator = RecordingValidator(oracle, node.peer_id, self.received, self.clock)
        self._record_publishes(node)
        self.nodes[plan.name] = node
        self.planned[plan.name] = plan

        async def host(*, task_status: TaskStatus[trio.CancelScope]) -> None:
            async with trio.open_nursery() as inner:
                await inner.start(node.run)
                if plan.role == "byzantine":
                    # Bitswap._on_message: the node's own fetches keep working
                    byz = ByzantineProvider(
                        _mode(plan.mode), host=node.host, engine=node.bitswap._on_message
                    )
                    byz.take_over()
                    self.byzantine[plan.name] = byz
                    inner.start_soon(self._lie, node)
                if plan.role == "sybil":
                    inner.start_soon(self._flood, plan, node)
                task_status.started(inner.cancel_scope)

        self.scopes[plan.name] = await self.nursery.start(host)
        return {"peer": node.peer_id, "addrs": node.host.addrs()}

    def _record_publishes(self, node: Node) -> None:
        publish = node.gossip.publish

        async def recording(topic: str, data: bytes) -> None:
            ann = announce.decode(data)
            self.published.append(
                [simlinks.message_id(data), node.peer_id, self.clock(), [str(r) for r in ann.roots]]
            )
            await publish(topic, data)

        node.gossip.publish = recording  # type: ignore[method-assign]

    async def op_stop(self, name: str) -> None:
        scope = self.scopes.pop(name, None)
        if scope is not None:
            scope.cancel()
        self.nodes.pop(name, None)
        if self.shared is not None:
            self.shared.listeners.pop(name, None)

    async def _lie(self, node: Node) -> None:
        """A byzantine node claims every root it hears of, once per interval."""
        claimed: set[CID] = set()
        while True:
            await trio.sleep(self.config["announce_interval"])
            roots = [c for c in node.store.provided() if c not in claimed][: announce.MAX_ROOTS]
            if roots:
                claimed.update(roots)
                ann = announce.Announcement(
                    time.time(), 600, tuple(node.host.addrs()[:4]), tuple(roots)
                )
                await node.gossip.publish(announce.TOPIC, announce.encode(ann))

    async def _flood(self, plan: PlannedNode, node: Node) -> None:
        """An unstaked sybil announces made-up roots at its flood rate."""
        if plan.flood_rate <= 0:
            return
        rng = random.Random(f"{self.seed}/flood/{plan.name}")
        while True:
            await trio.sleep(1 / plan.flood_rate)
            roots = tuple(CID.for_block(RAW, rng.randbytes(16)) for _ in range(plan.flood_roots))
            ann = announce.Announcement(time.time(), 600, tuple(node.host.addrs()[:4]), roots)
            try:
                await node.gossip.publish(announce.TOPIC, announce.encode(ann))
            except Exception as exc:  # the sybil's own troubles are not the metric
                log.debug("sybil publish failed: %s", exc)
            self.flooded[plan.name] = self.flooded.get(plan.name, 0) + 1

    # -- workload ------------------------------------------------------------------

    async def _light_client(self) -> Client:
        async with self._client_lock:
            if self._client is None:
                client = Client(data_dir=self.base_dir / "_client")
                await self.nursery.start(client.run)
                self._client = client
            return self._client

    async def op_upload(self, name: str, index: int, size: int, within: float) -> dict[str, Any]:
        node = self.nodes[name]
        data = payload(self.seed, index, size)
        client = await self._light_client()
        t0 = time.perf_counter()
        result: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest(), "size": size}
        try:
            with trio.fail_after(within):
                peer = await client.connect(node.host.addrs()[0])
                done = await client.upload(peer, _one(data), name=f"upload{index}", size=size)
        except Exception as exc:
            result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        else:
            result.update(ok=True, cid=str(done.cid), replicas=done.replicas)
        result["seconds"] = time.perf_counter() - t0
        return result

    async def op_fetch(self, name: str, cid: str, sha256: str, within: float) -> dict[str, Any]:
        node = self.nodes[name]
        bad_before = node.bitswap.stats.bad_blocks
        target = CID.parse(cid)
        local = node.store.is_pinned(target)
        t0 = time.perf_counter()
        digest = hashlib.sha256()
        result: dict[str, Any] = {"local": local, "ok": False}
        fetch = None
        try:
            with trio.fail_after(within):
                fetch = await node.fetch(target, pin=False)
                async for chunk in fetch.leaves():
                    digest.update(chunk)
        except (Exception, trio.TooSlowError) as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
        else:
            result["ok"] = digest.hexdigest() == sha256
            result["corrupt"] = not result["ok"]
        elapsed = time.perf_counter() - t0
        result["seconds"] = elapsed
        if fetch is not None:
            result["bytes"] = fetch.bytes
            if fetch.first_byte_at is not None:
                result["ttfb"] = fetch.first_byte_at - t0
        result["bad_blocks"] = node.bitswap.stats.bad_blocks - bad_before
        return result

    # -- faults --------------------------------------------------------------------

    async def op_partition(self, sides: dict[str, int]) -> None:
        self.model.partition(sides)

    async def op_heal(self) -> None:
        self.model.heal()

    # -- observation ---------------------------------------------------------------

    async def op_sample(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, node in self.nodes.items():
            bs = node.bitswap.stats
            rs = node.replicator.status
            out[name] = {
                "pins": [str(p.cid) for p in node.store.pins()],
                "pulled": rs.pulled,
                "bytes_pulled": rs.bytes_pulled,
                "dropped": rs.dropped,
                "backlog": rs.backlog,
                "repair_failed": rs.failed,
                "rounds": rs.rounds,
                "bytes_served": bs.bytes_served,
                "bytes_fetched": bs.bytes_fetched,
                "bad_blocks": bs.bad_blocks,
                "bytes_out": self.model.bytes_out.get(node.peer_id, 0),
                "misbehaviour": dict(node.misbehaviour),
                "banned": [peer for peer, _, _ in node.conduct.bans.current()],
                "accepted": node.validator.accepted,
                "rejected": dict(node.validator.rejected),
                "connections": len(node.host.connected_peers()),
            }
        return out

    async def op_members(self) -> dict[str, int]:
        """How many staked content nodes each live node sees now: its oracle, and
        its replicator's last round (a round that finds new members makes the
        node re-announce its pins; the schedule starts after those rounds, so
        runs of one seed do not differ by when they happened)."""
        out = {}
        for name, node in self.nodes.items():
            if self.planned[name].role == "sybil":
                continue
            seen = len(await node.oracle.content_nodes())
            if node.replicator.members_seen < seen:
                node.replicator.poke()
            out[name] = min(seen, node.replicator.members_seen)
        return out

    async def op_records(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "received": self.received,
            "duplicates": [[p, m, n] for (p, m), n in self.model.duplicates.items()],
            "bytes_out": dict(self.model.bytes_out),
            "retransmits": self.model.retransmits,
            "held": self.model.held,
            "flooded": self.flooded,
            "byzantine": {
                name: {"wants_seen": b.wants_seen, "replies_sent": b.replies_sent}
                for name, b in self.byzantine.items()
            },
        }

    async def op_shutdown(self) -> None:
        for scope in self.scopes.values():
            scope.cancel()
        self.nursery.cancel_scope.cancel()


def _mode(text: str) -> Mode:
    if text not in ("corrupt", "substitute", "stall", "dont_have"):
        raise ValueError(f"unknown byzantine mode {text!r}")
    return text  # type: ignore[return-value]


__all__ = ["NodeFactory", "NodeHost", "NotFoundError", "RecordingValidator"]
