"""The indexer: follows the chain's ``ManageEntity`` events into the index.

One loop, :meth:`Indexer.run`. Each :meth:`Indexer.step`:

1. reads the chain head; the *target* is ``head - confirmations``;
2. checks the tip it indexed last is still on the chain (its hash at that
   height); if not, a reorg: it walks the indexed blocks newest first to the
   newest one the chain still has (the common ancestor), undoes every block
   above it (``IndexStore.rollback_to``) and starts again from there;
3. reads the events of the next range (at most ``batch_blocks`` blocks) and
   the headers of the blocks that hold them, of the range's first block and
   of its last; the first block's parent must be the tip, every event's
   block hash must be its header's (else the chain moved under the reads:
   the step is retried, nothing applied);
4. applies the range's events block by block by the rules
   (:mod:`discovery.rules`), each block one transaction with its hash,
   parent hash and digest, then records the range's last block so its hash
   is known for the next check.

An RPC that fails or goes away is retried with backoff (``status()`` shows
the error); nothing is half-applied, since each block commits whole. A reorg
deeper than the confirmations is undone the same way: every block's
changes are journaled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from chain.access import ChainUnavailable
from discovery import rules
from p2p.abc import TaskStatus
from store.index import BlockRef, IndexStore

log = logging.getLogger("coliving.discovery")


class HeaderLike(Protocol):
    number: int
    hash: bytes
    parent_hash: bytes
    timestamp: int


class EventLike(Protocol):
    block_number: int
    block_hash: bytes
    log_index: int
    tx_hash: bytes
    user_id: int
    signer: str
    entity_type: str
    entity_id: int
    action: str
    metadata: str


class ChainSource(Protocol):
    """What the indexer reads from the chain (chain.entity.EntityReader)."""

    async def head(self) -> int: ...

    async def headers(self, numbers: Sequence[int]) -> dict[int, Any]: ...

    async def actions(self, from_block: int, to_block: int) -> list[Any]: ...


class ChainMoved(Exception):
    """The chain changed between the reads of one step; the step is retried."""


@dataclass(frozen=True)
class IndexerConfig:
    """How the indexer follows the chain."""

    confirmations: int = 0  # blocks below the head before a block is indexed
    batch_blocks: int = 2000  # blocks read per step, at most
    poll_interval: float = 1.0  # seconds between head reads when caught up
    retry_min: float = 0.2  # backoff after a chain error, doubling up to retry_max
    retry_max: float = 10.0
    ancestor_search: int = 256  # indexed blocks fetched per round when seeking the ancestor

    def __post_init__(self) -> None:
        if self.confirmations < 0:
            raise ValueError("confirmations must be 0 or more")
        if self.batch_blocks < 1:
            raise ValueError("batch_blocks must be at least 1")
        if self.poll_interval <= 0 or self.retry_min <= 0 or self.retry_max < self.retry_min:
            raise ValueError("poll_interval and retry bounds must be positive")


@dataclass(frozen=True, slots=True)
class IndexerStats:
    """A snapshot for /health and the tests."""

    tip: int | None
    digest: str
    chain_head: int | None
    lag: int | None
    actions_applied: int
    actions_rejected: int
    reorgs: int
    blocks_undone: int
    chain_errors: int
    last_error: str | None


class Indexer:
    """Follows one chain into one index. ``await nursery.start(indexer.run)``."""

    def __init__(
        self,
        store: IndexStore,
        source: ChainSource,
        *,
        start_block: int = 0,
        config: IndexerConfig | None = None,
    ) -> None:
        self.store = store
        self.source = source
        self.start_block = start_block
        self.config = config or IndexerConfig()
        self.chain_head: int | None = None
        self.applied = 0
        self.rejected = 0
        self.reorgs = 0
        self.undone = 0
        self.chain_errors = 0
        self.last_error: str | None = None
        self._tip: BlockRef | None = store.tip()
        self._progress = trio.Event()  # set whenever the tip moves (or a reorg undoes)
        self._errored = trio.Event()  # set at every chain error (tests wait on it)
        self._limiter = trio.CapacityLimiter(1)  # the store writes from one thread

    # -- state ---------------------------------------------------------------

    @property
    def tip(self) -> BlockRef | None:
        return self._tip

    def stats(self) -> IndexerStats:
        tip = self._tip.number if self._tip else None
        lag = None
        if self.chain_head is not None:
            lag = max(0, self.chain_head - (tip if tip is not None else self.start_block - 1))
        return IndexerStats(
            tip=tip,
            digest=(self._tip.digest if self._tip else bytes(32)).hex(),
            chain_head=self.chain_head,
            lag=lag,
            actions_applied=self.applied,
            actions_rejected=self.rejected,
            reorgs=self.reorgs,
            blocks_undone=self.undone,
            chain_errors=self.chain_errors,
            last_error=self.last_error,
        )

    def status(self) -> dict[str, Any]:
        """The API envelope's and /health's view: blocks, digest, lag."""
        s = self.stats()
        return {
            "latest_indexed_block": s.tip,
            "latest_chain_block": s.chain_head,
            "lag": s.lag,
            "digest": s.digest,
        }

    async def wait_for(self, block: int) -> BlockRef:
        """Wait until the index has reached ``block`` (tests, the SDK's
        'visible after my write')."""
        while self._tip is None or self._tip.number < block:
            await self._progress.wait()
        return self._tip

    async def wait_for_error(self) -> None:
        """Wait for the next chain error (a failed read, retried)."""
        await self._errored.wait()

    def _moved(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    # -- the loop ------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        backoff = self.config.retry_min
        while True:
            try:
                advanced = await self.step()
            except (ChainUnavailable, ChainMoved) as exc:
                self.chain_errors += 1
                self.last_error = str(exc)
                self._errored.set()
                self._errored = trio.Event()
                log.warning("indexer: %s; retrying in %.1f s", exc, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self.config.retry_max)
                continue
            backoff = self.config.retry_min
            self.last_error = None
            if not advanced:
                await trio.sleep(self.config.poll_interval)

    async def step(self) -> bool:
        """Index what the chain has to offer, up to one range; True if the
        tip moved (or a reorg was undone)."""
        head = await self.source.head()
        self.chain_head = head
        target = head - self.config.confirmations
        tip = self._tip
        if tip is not None:
            if await self._reorged(tip):
                return True
            first = tip.number + 1
        else:
            first = self.start_block
        if target < first:
            return False
        last = min(target, first + self.config.batch_blocks - 1)
        events = await self.source.actions(first, last)
        numbers = sorted({first, last, *(e.block_number for e in events)})
        headers = await self.source.headers(numbers)
        if any(n not in headers for n in numbers):
            raise ChainMoved(f"a header of blocks {first}..{last} is missing (the chain moved)")
        if tip is not None and headers[first].parent_hash != tip.hash:
            raise ChainMoved(f"block {first}'s parent is not the indexed block {tip.number}")
        by_block: dict[int, list[Any]] = {}
        for event in events:
            if bytes(headers[event.block_number].hash) != bytes(event.block_hash):
                raise ChainMoved(f"block {event.block_number} changed between reads")
            by_block.setdefault(event.block_number, []).append(event)
        await trio.to_thread.run_sync(self._apply, by_block, headers, last, limiter=self._limiter)
        self._moved()
        assert self._tip is not None
        log.info(
            "indexed to block %d, digest %s (%d actions in %d..%d)",
            self._tip.number,
            self._tip.digest.hex(),
            len(events),
            first,
            last,
        )
        return True

    def _apply(self, by_block: dict[int, list[Any]], headers: dict[int, Any], last: int) -> None:
        for number in sorted(by_block):
            header = headers[number]
            with self.store.block(
                number, bytes(header.hash), bytes(header.parent_hash), int(header.timestamp)
            ) as writer:
                for event in sorted(by_block[number], key=lambda e: e.log_index):
                    if rules.apply(writer, _action(event, int(header.timestamp))):
                        self.applied += 1
                    else:
                        self.rejected += 1
        if last not in by_block:
            header = headers[last]
            with self.store.block(
                last, bytes(header.hash), bytes(header.parent_hash), int(header.timestamp)
            ):
                pass
        self._tip = self.store.tip()

    async def _reorged(self, tip: BlockRef) -> bool:
        """If ``tip`` left the chain, undo back to the common ancestor: True."""
        headers = await self.source.headers([tip.number])
        header = headers.get(tip.number)
        if header is not None and bytes(header.hash) == tip.hash:
            return False
        started = time.monotonic()
        ancestor = await self._common_ancestor()
        undone = await trio.to_thread.run_sync(
            self.store.rollback_to, ancestor, limiter=self._limiter
        )
        self._tip = self.store.tip()
        self.reorgs += 1
        self.undone += undone
        log.warning(
            "indexer: reorg below block %d; undid %d indexed blocks back to %d (%.0f ms)",
            tip.number,
            undone,
            ancestor,
            (time.monotonic() - started) * 1000,
        )
        self._moved()
        return True

    async def _common_ancestor(self) -> int:
        """The newest indexed block the chain still has (start_block - 1: none)."""
        seen = 0
        while True:
            recent = self.store.recent_blocks(seen + self.config.ancestor_search)[seen:]
            if not recent:
                return self.start_block - 1
            headers = await self.source.headers([b.number for b in recent])
            for block in recent:  # newest first
                header = headers.get(block.number)
                if header is not None and bytes(header.hash) == block.hash:
                    return block.number
            seen += len(recent)


def _action(event: EventLike, timestamp: int) -> rules.Action:
    return rules.Action(
        block=event.block_number,
        log_index=event.log_index,
        tx_hash=bytes(event.tx_hash),
        timestamp=timestamp,
        user_id=event.user_id,
        signer=event.signer.lower(),
        entity_type=event.entity_type,
        entity_id=event.entity_id,
        action=event.action,
        metadata=event.metadata,
    )
