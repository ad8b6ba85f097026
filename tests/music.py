"""Test driver for the music layer: wallets that sign EntityManager actions,
an index and an indexer on a real chain (embedded py-evm or anvil)."""

from __future__ import annotations

import itertools
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account

from chain.entity import EntityReader, sign_action
from chain.local import LocalChain
from discovery.indexer import Indexer, IndexerConfig
from store.index import IndexStore
from store.sqlite_index import SqliteIndex

CID_A = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
CID_B = "bafkreidon73zkcrwdb5iafqtijxildoonbwnpv7dyd6ef3qdgads2jc4su"
_ids = itertools.count(1000)


def track_metadata(title: str = "Song", **extra: Any) -> str:
    meta: dict[str, Any] = {
        "title": title,
        "genre": "Electronic",
        "duration": 180.0,
        "stream_cid": CID_A,
    }
    meta.update(extra)
    return json.dumps(meta)


@dataclass
class Wallet:
    """One user's key; ``act`` signs and submits through the chain's relay account."""

    chain: LocalChain
    user_id: int
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @property
    def address(self) -> str:
        return str(Account.from_key(self.key).address).lower()

    async def act(
        self,
        entity_type: str,
        entity_id: int,
        action: str,
        metadata: str = "",
        *,
        user_id: int | None = None,
        key: bytes | None = None,
    ) -> int:
        """Sign (by this wallet, or ``key``) and submit; the block it landed in."""
        assert self.chain.deployment.entity_manager is not None
        signed = sign_action(
            key or self.key,
            chain_id=self.chain.deployment.chain_id,
            contract=self.chain.deployment.entity_manager,
            user_id=self.user_id if user_id is None else user_id,
            entity_type=entity_type,
            entity_id=entity_id,
            action=action,
            metadata=metadata,
        )
        return await self.chain.submit(signed)

    async def sign_up(self, handle: str, **extra: Any) -> int:
        return await self.act(
            "User", self.user_id, "Create", json.dumps({"handle": handle, **extra})
        )

    async def upload(self, track_id: int | None = None, title: str = "Song", **extra: Any) -> int:
        track_id = next(_ids) if track_id is None else track_id
        await self.act("Track", track_id, "Create", track_metadata(title, **extra))
        return track_id


@dataclass
class Discovery:
    """An index and its indexer on ``chain``, stepped by hand."""

    chain: LocalChain
    store: IndexStore
    indexer: Indexer

    async def sync(self) -> int:
        """Index up to the chain's head; the tip."""
        return await self.sync_to(await self.chain.block_number())

    async def sync_to(self, block: int) -> int:
        """Step the indexer until its tip is ``block`` (a reorg's undoing included)."""
        while self.indexer.tip is None or self.indexer.tip.number < block:
            await self.indexer.step()
        while await self.indexer.step():  # a reorg found at the tip, or more to read
            pass
        assert self.indexer.tip is not None
        return self.indexer.tip.number


def open_discovery(
    chain: LocalChain, path: Path, *, config: IndexerConfig | None = None
) -> Discovery:
    store = SqliteIndex(path)
    reader = EntityReader.for_access(chain.access, chain.deployment)
    indexer = Indexer(
        store,
        reader,
        start_block=chain.deployment.entity_manager_block,
        config=config or IndexerConfig(),
    )
    return Discovery(chain, store, indexer)
