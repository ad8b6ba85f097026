"""Keeping every CID on R owners: replication on upload, repair, rebalance.

Owners come from :mod:`protocols.placement` over the staked content nodes
(the oracle's ``content_nodes()``), taking the first R *live* ones of the
ranking. What exists and who holds it comes from the provider index that
announcements fill, never from polling other nodes. Each round:

- **pull**: a CID we own and do not hold is fetched from its holders and
  pinned (then announced like any pin); at most ``max_per_round`` CIDs a
  round, ``max_concurrent`` at once: repair traffic is bounded;
- **drop**: a CID we hold but do not own is unpinned only once R owners
  other than us are known to hold it; the blocks go at the next sweep.

A node that is not itself a staked content node neither pulls nor drops.
On upload, the receiving node asks the other owners to replicate (query op
``replicate``) before it acknowledges, and reports how many copies exist.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from chain.oracle import StakeOracle
from p2p.abc import StreamError, TaskStatus
from p2p.keys import PeerId
from protocols import placement
from protocols.cid import CID
from protocols.errors import NoAnswerError, TruncatedError
from store.blockstore import BlockStore

log = logging.getLogger(__name__)

# an upload's replicate request lost in transport is sent again, this many times in all
REPLICATE_TRIES = 3


RANKINGS_CACHED = 50_000  # CIDs whose ranking a replicator keeps


@dataclass(frozen=True)
class ReplicationConfig:
    replicas: int = placement.DEFAULT_REPLICAS
    interval: float = 10.0  # seconds between repair rounds
    max_concurrent: int = 2  # repair fetches at once
    max_per_round: int = 32  # CIDs pulled per round at most
    fetch_timeout: float = 300.0  # one CID, pulled or replicated
    owner_slack: int = 3  # a node ranked below replicas + this for a CID leaves it alone

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError("replicas must be at least 1")
        if self.interval <= 0 or self.max_concurrent < 1 or self.max_per_round < 1:
            raise ValueError("repair interval, concurrency and batch must be positive")


@dataclass
class RepairStatus:
    rounds: int = 0
    last_round: float | None = None  # wall-clock time of the last finished round
    backlog: int = 0  # owned CIDs not held here, as of the last round
    pulled: int = 0
    bytes_pulled: int = 0
    dropped: int = 0
    failed: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # CID -> last error


class ReplicaHost(Protocol):
    """What the replicator needs from its node."""

    peer_id: PeerId
    store: BlockStore
    oracle: StakeOracle

    def peer_bytes(self, peer: PeerId) -> bytes: ...

    def peer_of_bytes(self, raw: bytes) -> PeerId: ...

    def is_connected(self, peer: PeerId) -> bool: ...

    async def reach(self, peers: Sequence[PeerId]) -> set[PeerId]:
        """Which of ``peers`` are connected now (dialing the others once)."""
        ...

    async def pull(self, cid: CID, holders: Sequence[PeerId]) -> int:
        """Fetch ``cid`` from ``holders``, pin it; return its size."""
        ...

    async def ask(
        self, peer: PeerId, op: str, *, within: float = ..., **args: Any
    ) -> dict[str, Any]: ...

    def reannounce(self) -> None:
        """Announce every pin again (a new member must learn what exists)."""
        ...


class Replicator:
    def __init__(self, host: ReplicaHost, config: ReplicationConfig) -> None:
        self.host = host
        self.config = config
        self.status = RepairStatus()
        self.round_done = trio.Event()  # set after every round (tests wait on it)
        self._wake = trio.Event()
        self._members_seen: set[bytes] = set()
        # rankings of the current membership: a round re-ranks every CID it knows,
        # 200 sha256 each at 200 members, every round on every node
        self._ranked_among: list[bytes] = []
        self._rankings: dict[CID, list[bytes]] = {}
        self._pulling: dict[CID, trio.Event] = {}  # pulls running here, set when each ends

    @property
    def members_seen(self) -> int:
        """Staked content nodes the last round knew of."""
        return len(self._members_seen)

    def poke(self) -> None:
        """Run a round now (a registry change, a peer lost)."""
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self.round()
            except Exception:
                log.exception("repair round failed")
            self.round_done.set()
            self.round_done = trio.Event()
            with trio.move_on_after(self.config.interval):
                await self._wake.wait()
            self._wake = trio.Event()

    # -- placement as this node sees it ---------------------------------------

    async def view(
        self,
        cids: Iterable[CID],
        *,
        everyone: bool = False,
        held: Container[CID] | None = None,
    ) -> tuple[list[bytes], set[bytes], dict[CID, list[bytes]]]:
        """(members, live members, each deciding CID's ranking), as far as ``cids``
        need to know.

        Liveness is only checked where it decides something for this node:
        for a CID it holds, the ranking from the top down to its R-th live
        member (are R owners there, so this copy may go?); for a CID it does not
        hold, only the members ranked above it (is this node an owner?), and
        only if it ranks within ``replicas + owner_slack``: a node lower down
        would need that many owners dead at once, and leaves it to those
        ranked above. Members are checked in rounds, each assumed live until
        checked, so a round dials about R members per CID and the next one
        only replaces those that failed. Before this, every node that heard
        of a CID dialed down its ranking to the R-th member it was already
        connected to: at 200 nodes, everyone dialing the same owners and
        half the ranking besides, which stalled the 200-node simnet. CIDs
        outside the bound get no ranking in the result (``everyone``: rank
        and decide every CID). ``held``: the CIDs pinned here, if the caller
        has them already (else the store is asked for each).
        """
        members = await self.host.oracle.content_nodes()
        me = self.host.peer_bytes(self.host.peer_id)
        raw = [self.host.peer_bytes(p) for p in members]
        bound = self.config.replicas + self.config.owner_slack
        rankings: dict[CID, list[bytes]] = {}
        holding: set[CID] = set()
        is_held = held.__contains__ if held is not None else self.host.store.is_pinned
        if raw != self._ranked_among:  # the membership changed: every ranking may have
            self._ranked_among = raw
            self._rankings.clear()
        for cid in cids:
            ranked = self._rankings.get(cid)
            if ranked is None:
                if len(self._rankings) >= RANKINGS_CACHED:
                    self._rankings.clear()
                ranked = self._rankings[cid] = placement.ranking(cid, raw)
            if is_held(cid):
                holding.add(cid)
            elif not everyone and me in ranked[bound:]:
                continue
            rankings[cid] = ranked
        # Walk each ranking, counting members not yet checked as live; check
        # (reach) those, and walk again past the ones that turned out dead.
        # A connected member is only probed (cheap); only as many members as
        # ownership needs are dialed.
        live = {me} if me in raw else set()
        checked = {me}
        while True:
            deciding: set[bytes] = set()
            for cid, ranked in rankings.items():
                found = 0
                for peer in ranked:
                    if peer == me and cid not in holding:
                        break  # below this node nobody decides whether it owns the CID
                    if peer not in checked:
                        deciding.add(peer)
                    if peer in live or peer not in checked:
                        found += 1
                        if found == self.config.replicas:
                            break
            if not deciding:
                return raw, live, rankings
            reached = await self.host.reach([self.host.peer_of_bytes(p) for p in deciding])
            checked |= deciding
            live |= {self.host.peer_bytes(p) for p in reached}

    async def owners_of(self, cid: CID) -> list[PeerId]:
        _, live, rankings = await self.view([cid], everyone=True)
        chosen = placement.first_live(rankings[cid], self.config.replicas, live=live.__contains__)
        return [self.host.peer_of_bytes(p) for p in chosen]

    # -- on upload ------------------------------------------------------------

    async def replicate(self, cid: CID) -> int:
        """Ask the other owners of ``cid`` to hold it; return how many copies exist."""
        owners = await self.owners_of(cid)
        targets = [p for p in owners if p != self.host.peer_id]
        copies = 1 if self.host.store.is_pinned(cid) else 0
        done = 0

        async def one(peer: PeerId) -> None:
            nonlocal done
            for attempt in range(1, REPLICATE_TRIES + 1):
                try:
                    await self.host.ask(
                        peer, "replicate", within=self.config.fetch_timeout, cid=cid
                    )
                    done += 1
                    return
                except (StreamError, NoAnswerError, TruncatedError) as exc:
                    # the request or its answer was lost on the way (a stream
                    # reset, a connection replaced, an answer cut short): ask
                    # again; a refusal is final
                    log.info("replication of %s to %s, try %d: %s", cid, peer, attempt, exc)
                    if attempt < REPLICATE_TRIES:  # (the upload's reply waits for this)
                        await trio.sleep(0.2 * attempt)
                except Exception as exc:
                    log.info("replication of %s to %s failed: %s", cid, peer, exc)
                    return

        async with trio.open_nursery() as nursery:
            for peer in targets:
                nursery.start_soon(one, peer)
        return copies + done

    async def accept_replica(self, cid: CID, requester: PeerId) -> None:
        """Serve a ``replicate`` request: only from a staked content node, only if we
        own ``cid``. Raises PermissionError otherwise (the requester sees why)."""
        members = await self.host.oracle.content_nodes()
        if requester not in members or self.host.peer_id not in members:
            members = await self.host.oracle.content_nodes(fresh=True)  # we may lag the chain
        if requester not in members:
            raise PermissionError("only staked content nodes may ask for replicas")
        if self.host.peer_id not in members:
            raise PermissionError("this node is not a staked content node")
        if self.host.store.is_pinned(cid):
            return
        owners = await self.owners_of(cid)
        if self.host.peer_id not in owners:
            raise PermissionError(f"this node is not an owner of {cid}")
        holders = [requester] + [
            p for p in self._holders(cid) if p not in (requester, self.host.peer_id)
        ]
        with trio.fail_after(self.config.fetch_timeout):
            await self.pull(cid, holders)

    async def pull(self, cid: CID, holders: Sequence[PeerId]) -> None:
        """Fetch and pin ``cid``, counted in ``status``. A repair round and a
        replicate request may want one CID at once: a pull of a CID that is
        already being pulled here waits for that one, and fetches only if it
        failed. (Two fetches would move the file twice.)"""
        while (running := self._pulling.get(cid)) is not None:
            await running.wait()
        if self.host.store.is_pinned(cid):
            return
        ended = self._pulling[cid] = trio.Event()
        try:
            size = await self.host.pull(cid, holders)
        finally:
            del self._pulling[cid]
            ended.set()
        self.status.pulled += 1
        self.status.bytes_pulled += size

    def _holders(self, cid: CID) -> list[PeerId]:
        return [self.host.peer_of_bytes(p) for p in self.host.store.providers(cid)]

    # -- repair ---------------------------------------------------------------

    async def round(self) -> None:
        index = self.host.store.provided()
        pinned = {p.cid for p in self.host.store.pins()}
        known = set(index) | pinned
        members, live, rankings = await self.view(known, held=pinned)
        joined = set(members) - self._members_seen
        if self._members_seen and joined:
            # A node that joins has an empty provider index: it learns what
            # exists from re-announcements (announcements only say "new pin").
            self.host.reannounce()
        self._members_seen = set(members)
        me = self.host.peer_bytes(self.host.peer_id)
        if me not in members:
            self.status.backlog = 0
            return  # not a staked content node: no owner duties
        want: list[tuple[CID, list[PeerId]]] = []
        drop: list[CID] = []
        for cid in known:
            if cid not in rankings:
                continue  # ranked too low to be an owner, and not held here
            owners = placement.first_live(
                rankings[cid], self.config.replicas, live=live.__contains__
            )
            holders = [p for p in index.get(cid, []) if p != me]
            if me in owners and cid not in pinned:
                live_holders = [p for p in holders if p in live] or holders
                want.append((cid, [self.host.peer_of_bytes(p) for p in live_holders]))
            elif me not in owners and cid in pinned:
                held_by_owners = sum(1 for o in owners if o in holders)
                if held_by_owners >= self.config.replicas:
                    drop.append(cid)
        self.status.backlog = len(want)
        limiter = trio.CapacityLimiter(self.config.max_concurrent)

        async def repair(cid: CID, sources: list[PeerId]) -> None:
            async with limiter:
                try:
                    with trio.fail_after(self.config.fetch_timeout):
                        await self.pull(cid, sources)
                except Exception as exc:
                    self.status.failed += 1
                    self.status.failures[str(cid)] = f"{type(exc).__name__}: {exc}"
                    log.info("repair: pulling %s failed: %s", cid, exc)
                    return
                self.status.backlog -= 1
                self.status.failures.pop(str(cid), None)

        async with trio.open_nursery() as nursery:
            for cid, sources in want[: self.config.max_per_round]:
                if sources:
                    nursery.start_soon(repair, cid, sources)
        if drop:
            for cid in drop:
                self.host.store.unpin(cid)
            self.status.dropped += len(drop)
            removed = await trio.to_thread.run_sync(self.host.store.gc)
            log.info("dropped %d CIDs held by enough owners (%d blocks)", len(drop), removed)
        self.status.rounds += 1
        self.status.last_round = time.time()
