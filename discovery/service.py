"""The discovery role: indexer, query API and listens, composed for one node.

A :class:`DiscoveryService` owns the index (``<data dir>/index.sqlite``,
:class:`store.sqlite_index.SqliteIndex`), the :class:`~discovery.indexer.Indexer`
that fills it from the chain, the :class:`~discovery.api.DiscoveryAPI` that
answers queries (over HTTP on the node's gateway and over libp2p), the
:class:`~discovery.listens.ListenService` that counts plays, and a loop
that refreshes the trending scores. :class:`node.Node` builds one when its
config asks for the discovery role and starts it with ``nursery.start``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from chain.oracle import StakeOracle
from discovery.api import DiscoveryAPI
from discovery.indexer import ChainSource, Indexer, IndexerConfig
from discovery.listens import ListenConfig, ListenService
from p2p.abc import GossipLike, Stream, TaskStatus
from p2p.keys import PeerId
from protocols import discovery as discovery_proto
from store.index import IndexStore

log = logging.getLogger("coliving.discovery")


@dataclass(frozen=True)
class DiscoveryConfig:
    """The discovery role's settings (``[discovery]`` in node.toml)."""

    indexer: IndexerConfig = field(default_factory=IndexerConfig)
    listens: ListenConfig = field(default_factory=ListenConfig)
    trending_interval: float = 300.0  # seconds between trending refreshes (11 s each at 1M tracks)

    def __post_init__(self) -> None:
        if self.trending_interval <= 0:
            raise ValueError("trending_interval must be positive")


@dataclass(frozen=True)
class MusicChain:
    """Where the data contract is: what the indexer reads and listens sign for."""

    source: ChainSource
    chain_id: int
    contract: str  # the EntityManager's address
    start_block: int = 0


def open_index(data_dir: Path) -> IndexStore:
    """The node's index database (the embedded default backend)."""
    from store.sqlite_index import SqliteIndex

    return SqliteIndex(data_dir / "index.sqlite")


class DiscoveryService:
    """The discovery role of one node. ``await nursery.start(service.run)``."""

    def __init__(
        self,
        store: IndexStore,
        chain: MusicChain,
        *,
        gossip: GossipLike,
        oracle: StakeOracle,
        config: DiscoveryConfig | None = None,
        stream_base: Callable[[], str | None] = lambda: None,
        on_malformed: Callable[[PeerId, str], None] | None = None,
    ) -> None:
        self.store = store
        self.chain = chain
        self.config = config or DiscoveryConfig()
        self.indexer = Indexer(
            store, chain.source, start_block=chain.start_block, config=self.config.indexer
        )
        self.api = DiscoveryAPI(store, status=self.indexer.status, stream_base=stream_base)
        self.listens = ListenService(
            store,
            gossip,
            oracle,
            chain_id=chain.chain_id,
            config=self.config.listens,
            on_malformed=on_malformed,
        )
        self.trending_refreshed = trio.Event()  # set after each refresh (tests wait on it)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.indexer.run)
            await nursery.start(self.listens.run)
            nursery.start_soon(self._trending_loop)
            task_status.started()

    async def refresh_trending(self) -> None:
        await trio.to_thread.run_sync(self.store.refresh_trending, int(time.time()))
        self.trending_refreshed.set()
        self.trending_refreshed = trio.Event()

    async def _trending_loop(self) -> None:
        while True:
            try:
                await self.refresh_trending()
            except Exception:  # a full disk: the old scores stay; logged, retried
                log.exception("trending refresh failed")
            await trio.sleep(self.config.trending_interval)

    async def serve_stream(self, stream: Stream) -> None:
        """The ``/coliving/discovery/1.0.0`` handler (the node gates it)."""
        await discovery_proto.serve(stream, self.api.call)

    def health(self) -> dict[str, Any]:
        """The discovery part of the node's /health."""
        stats = self.indexer.stats()
        return {
            # what a client signs actions and listens for
            "chain_id": self.chain.chain_id,
            "entity_manager": self.chain.contract,
            "block": stats.tip,
            "digest": stats.digest,
            "chain_head": stats.chain_head,
            "lag": stats.lag,
            "actions_applied": stats.actions_applied,
            "actions_rejected": stats.actions_rejected,
            "reorgs": stats.reorgs,
            "last_error": stats.last_error,
        }

    def close(self) -> None:
        self.store.close()
