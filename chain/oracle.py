"""Who is staked: the interface gossip validators and replication ask.

Until the chain-backed oracle lands, :class:`AllowlistOracle` answers from
configuration. Both satisfy :class:`StakeOracle`, so the node takes either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import trio

from p2p.abc import TaskStatus
from p2p.keys import PeerId

CONTENT_NODE = "content-node"
DISCOVERY_NODE = "discovery-node"


@dataclass(frozen=True, slots=True)
class Stake:
    """A provider's standing: its service type and whether it meets the minimum."""

    service_type: str
    amount: int
    minimum: int

    @property
    def sufficient(self) -> bool:
        return self.amount >= self.minimum


class StakeOracle(Protocol):
    """Answers from local state only: it must never block the trio loop."""

    async def stake_of(self, peer: PeerId) -> Stake | None: ...

    async def content_nodes(self, *, fresh: bool = False) -> list[PeerId]:
        """Every staked content node (the placement set), in no particular order;
        ``fresh`` skips any cache."""
        ...


@runtime_checkable
class WatchingOracle(StakeOracle, Protocol):
    """An oracle that follows a changing source (the chain) in a task of its own.

    The node starts ``run`` in its nursery and sets ``on_unstaked``, which the
    oracle calls for each peer it had accepted and no longer does.
    """

    on_unstaked: Callable[[PeerId], None] | None

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None: ...


class AllowlistOracle:
    """Every listed peer counts as a staked content node (config-driven)."""

    def __init__(self, peers: Iterable[PeerId] = (), *, allow_all: bool = False) -> None:
        self._peers = set(peers)
        self.allow_all = allow_all

    def allow(self, peer: PeerId) -> None:
        self._peers.add(peer)

    def revoke(self, peer: PeerId) -> None:
        self._peers.discard(peer)

    async def stake_of(self, peer: PeerId) -> Stake | None:
        if self.allow_all or peer in self._peers:
            return Stake(CONTENT_NODE, 1, 1)
        return None

    async def content_nodes(self, *, fresh: bool = False) -> list[PeerId]:
        return sorted(self._peers)


async def is_staked_content_node(oracle: StakeOracle, peer: PeerId) -> bool:
    stake = await oracle.stake_of(peer)
    return stake is not None and stake.service_type == CONTENT_NODE and stake.sufficient
