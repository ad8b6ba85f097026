"""Peer conduct: what a node holds against each peer, and the bans it leads to.

A handler that catches a peer breaking a protocol reports it here
(:meth:`Conduct.offend`) with a weight in points:

- ``PROVEN`` (a ban at once): what no honest peer sends. A block that does
  not hash to the CID it came for, a block nobody asked for, a Bitswap
  message that does not parse (a stable spec every implementation speaks).
- ``MALFORMED`` (30 points of the 100 a ban takes): a Coliving request or
  announcement (against its signed origin) that does not parse. A client
  of another version, or a bug on either side, can send one. Four in a row
  are a ban; so is one every five minutes, kept up (the points it settles
  at reach 100).

A stream that ends inside a message is no offence
(:class:`protocols.errors.TruncatedError`): a peer that crashed, or whose
network went, looks the same on the wire as one that stopped writing.

Nor is a well-formed request for what this version does not know
(:class:`protocols.errors.UnsupportedError`, a peer newer than us): it gets
an error reply.

Points halve every ``half_life`` seconds, so rare mistakes never add up to a
ban. A ban lasts ``Bans.first`` seconds, twice that for the next, up to
``Bans.longest``. While it lasts, the node resets the peer's Bitswap, query
and upload streams, closes each connection it makes, ignores its
announcements, and neither dials it nor asks it for blocks
(docs/decisions.md 22).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Final

from p2p.keys import PeerId

log = logging.getLogger(__name__)

BAN_AT: Final = 100.0
PROVEN: Final = 100.0
MALFORMED: Final = 30.0
HALF_LIFE: Final = 600.0
# peers with points kept at most; past it, the ones with the fewest are forgotten
MAX_TRACKED: Final = 4096

BanHook = Callable[[PeerId, str], None]


class Bans:
    """Peers banned for misbehaving, each for a while: ``first`` seconds for a
    first offence, twice as long for each next one, up to ``longest``.

    A ban for good cuts a node off, until it restarts, from a peer that erred
    once (a corrupt disk) or that a bug of ours misjudged (docs/decisions.md
    17). A peer that goes on lying loses one verified, discarded block per
    ban. Offences while banned (the rest of one bad message) add nothing. A
    peer with no ban for ``longest`` seconds starts again from ``first``.
    At most MAX_TRACKED peers are remembered, the ones banned last.
    """

    def __init__(
        self,
        first: float = 600.0,
        longest: float = 86_400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.first = first
        self.longest = longest
        self.clock = clock
        self.reasons: dict[PeerId, str] = {}  # the current bans
        self._until: dict[PeerId, float] = {}
        # bans so far, and when the last one ends: a peer whose last ban ended
        # over ``longest`` ago starts again from ``first``
        self._record: OrderedDict[PeerId, tuple[int, float]] = OrderedDict()

    def add(self, peer: PeerId, reason: str) -> None:
        if peer in self:
            return
        now = self.clock()
        count, ended = self._record.pop(peer, (0, -math.inf))
        if now - ended > self.longest:
            count = 0
        until = now + min(self.first * 2**count, self.longest)
        self._record[peer] = (count + 1, until)
        self._until[peer] = until
        self.reasons[peer] = reason
        self._forget_old(now)

    def _forget_old(self, now: float) -> None:
        """Bounds the records: past MAX_TRACKED peers, those banned longest ago
        go (and what is left of their bans)."""
        while len(self._record) > MAX_TRACKED:
            peer, _ = self._record.popitem(last=False)
            self._until.pop(peer, None)
            self.reasons.pop(peer, None)

    def __contains__(self, peer: object) -> bool:
        if not isinstance(peer, str):
            return False
        banned = PeerId(peer)
        until = self._until.get(banned)
        if until is None:
            return False
        if self.clock() < until:
            return True
        del self._until[banned], self.reasons[banned]
        return False

    def __len__(self) -> int:
        return len(self.current())

    def current(self) -> list[tuple[PeerId, str, float]]:
        """The bans in force: each peer, why, and the seconds left, soonest first."""
        now = self.clock()
        left = [(p, self.reasons[p], u - now) for p, u in list(self._until.items()) if p in self]
        return sorted(left, key=lambda ban: ban[2])

    def until(self, peer: PeerId) -> float | None:
        """When ``peer``'s ban ends (on ``clock``), if it is banned."""
        return self._until.get(peer) if peer in self else None


class Conduct:
    """Each peer's points, decaying, and the bans they reach.

    One per node, shared by its protocols: a peer banned by one is refused by
    all. ``on_ban`` callbacks run when a ban begins (Bitswap drops the peer
    from its fetches and disconnects it; the node forgets its provider records)."""

    def __init__(
        self,
        *,
        bans: Bans | None = None,
        half_life: float = HALF_LIFE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if half_life <= 0:
            raise ValueError("half_life must be positive")
        self.bans = bans if bans is not None else Bans(clock=clock)
        self.half_life = half_life
        self.clock = clock
        self.offences: Counter[str] = Counter()  # reported, by protocol (for /metrics)
        self.on_ban: list[BanHook] = []
        self._points: dict[PeerId, tuple[float, float]] = {}  # peer -> (points, when)

    def points(self, peer: PeerId) -> float:
        """``peer``'s points now (0 for a stranger; a ban starts them again)."""
        entry = self._points.get(peer)
        if entry is None:
            return 0.0
        value, when = entry
        return float(value * 0.5 ** ((self.clock() - when) / self.half_life))

    def offend(self, peer: PeerId, protocol: str, reason: str, weight: float) -> bool:
        """Hold ``reason`` (an offence on ``protocol``) against ``peer``; True
        if the peer is banned now."""
        self.offences[protocol] += 1
        if peer in self.bans:
            return True
        total = self.points(peer) + weight
        if total < BAN_AT:
            self._points[peer] = (total, self.clock())
            self._forget_least()
            log.info("peer %s offended on %s (%.0f points): %s", peer, protocol, total, reason)
            return False
        self._points.pop(peer, None)
        self.bans.add(peer, reason)
        log.warning("peer %s banned (%s): %s", peer, protocol, reason)
        for callback in list(self.on_ban):
            callback(peer, reason)
        return True

    def __contains__(self, peer: object) -> bool:
        """Whether ``peer`` is banned now."""
        return peer in self.bans

    def _forget_least(self) -> None:
        if len(self._points) <= MAX_TRACKED:
            return
        by_points = sorted(self._points, key=self.points)
        for peer in by_points[: len(by_points) - MAX_TRACKED // 2]:
            del self._points[peer]
