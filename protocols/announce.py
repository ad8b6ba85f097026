"""Content announcements on gossipsub topic ``/coliving/announce/1``.

A message is CBOR, a map with exactly these keys::

    {"v": 1, "t": <unix seconds, float>, "ttl": <seconds, int>,
     "addrs": [<multiaddr string>, ...], "roots": [<CID bytes>, ...]}

It says "the origin peer holds these root CIDs, reach it at these addresses,
for ttl seconds". gossipsub's strict signing authenticates the origin. Bounds:
at most MAX_ROOTS roots, MAX_ADDRS addresses of at most 256 bytes, MAX_BYTES
in all, ``t`` within MAX_SKEW of our clock, ttl in [60, 86400]. The validator
rejects (and gossipsub scores down the forwarder for) anything malformed,
stale or from a peer that the StakeOracle does not count as a staked content
node.

The announcer batches: new roots go out at most once per ``interval`` in one
message, and everything pinned is re-announced every ttl/2.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import cbor2
import trio

from chain.oracle import StakeOracle, is_staked_content_node
from p2p.abc import TaskStatus
from p2p.keys import PeerId
from protocols.cid import CID
from protocols.errors import DecodingError
from protocols.wire import cbor_exact

log = logging.getLogger(__name__)

TOPIC: Final = "/coliving/announce/1"
MAX_ROOTS: Final = 512
MAX_ADDRS: Final = 8
MAX_ADDR_LEN: Final = 256
MAX_BYTES: Final = 64 * 1024
MAX_SKEW: Final = 120.0
MIN_TTL: Final = 60
MAX_TTL: Final = 86_400
_KEYS: Final = frozenset({"v", "t", "ttl", "addrs", "roots"})


@dataclass(frozen=True, slots=True)
class Announcement:
    timestamp: float
    ttl: int
    addrs: tuple[str, ...]
    roots: tuple[CID, ...]


def encode(ann: Announcement) -> bytes:
    data: bytes = cbor2.dumps(
        {
            "v": 1,
            "t": ann.timestamp,
            "ttl": ann.ttl,
            "addrs": list(ann.addrs),
            "roots": [c.to_bytes() for c in ann.roots],
        }
    )
    if len(data) > MAX_BYTES:
        raise ValueError("announcement over the size limit: send fewer roots")
    return data


def decode(data: bytes) -> Announcement:
    if len(data) > MAX_BYTES:
        raise DecodingError("announcement too large")
    obj: Any = cbor_exact(data, "announcement")
    if not isinstance(obj, dict) or set(obj) != _KEYS:
        raise DecodingError("announcement must be a map with keys v, t, ttl, addrs, roots")
    if obj["v"] != 1:
        raise DecodingError(f"unknown announcement version {obj['v']!r}")
    t, ttl, addrs, roots = obj["t"], obj["ttl"], obj["addrs"], obj["roots"]
    if not isinstance(t, (int, float)) or isinstance(t, bool) or t != t:
        raise DecodingError("announcement time must be a number")
    if isinstance(t, int) and not -(2**53) <= t <= 2**53:
        raise DecodingError("announcement time out of range")  # a CBOR bignum
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not MIN_TTL <= ttl <= MAX_TTL:
        raise DecodingError(f"announcement ttl must be an integer in [{MIN_TTL}, {MAX_TTL}]")
    if not isinstance(addrs, list) or len(addrs) > MAX_ADDRS:
        raise DecodingError(f"addrs must be a list of at most {MAX_ADDRS}")
    if not all(isinstance(a, str) and 0 < len(a) <= MAX_ADDR_LEN for a in addrs):
        raise DecodingError("each addr must be a non-empty string of at most 256 characters")
    if not isinstance(roots, list) or not 0 < len(roots) <= MAX_ROOTS:
        raise DecodingError(f"roots must be a list of 1 to {MAX_ROOTS} CIDs")
    if not all(isinstance(r, bytes) for r in roots):
        raise DecodingError("each root must be CID bytes")
    return Announcement(float(t), ttl, tuple(addrs), tuple(CID.from_bytes(r) for r in roots))


class AnnounceValidator:
    """The gossip validator for TOPIC; counts what it accepts and rejects."""

    def __init__(
        self,
        oracle: StakeOracle,
        *,
        clock: Callable[[], float] = time.time,
        on_malformed: Callable[[PeerId, str], None] | None = None,
    ) -> None:
        self.oracle = oracle
        self.clock = clock
        # told of the origin of an announcement that does not parse: gossipsub
        # checked the origin's signature, so the bytes are the origin's own
        # (a stale one is no offence: a clock can be wrong)
        self.on_malformed = on_malformed
        self.accepted = 0
        self.rejected: dict[str, int] = {}
        self.verdict = trio.Event()  # set after every decision (tests wait on it)

    def _decided(self) -> None:
        self.verdict.set()
        self.verdict = trio.Event()

    def _reject(self, reason: str) -> bool:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self._decided()
        return False

    async def __call__(self, origin: PeerId, forwarder: PeerId, data: bytes) -> bool:
        try:
            ann = decode(data)
        except DecodingError as exc:
            if self.on_malformed is not None:
                self.on_malformed(origin, f"malformed announcement: {exc}")
            return self._reject("malformed")
        if abs(self.clock() - ann.timestamp) > MAX_SKEW:
            return self._reject("stale")
        if not await is_staked_content_node(self.oracle, origin):
            return self._reject("unstaked")
        self.accepted += 1
        self._decided()
        return True


class Announcer:
    """Batches roots to announce; ``await nursery.start(announcer.run)``."""

    def __init__(
        self,
        publish: Callable[[bytes], Any],
        addrs: Callable[[], list[str]],
        pinned: Callable[[], list[CID]],
        *,
        interval: float = 1.0,
        ttl: int = 3600,
    ) -> None:
        self._publish = publish
        self._addrs = addrs
        self._pinned = pinned
        self.interval = interval
        self.ttl = ttl
        self._queue: dict[CID, None] = {}
        self._wake = trio.Event()
        self.sent_batches = 0
        self.first_full = trio.Event()  # set once the pins held at start are queued

    def announce(self, cid: CID) -> None:
        self._queue[cid] = None
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        next_full = trio.current_time() + self.interval
        while True:
            with trio.move_on_at(next_full):
                await self._wake.wait()
            self._wake = trio.Event()
            if trio.current_time() >= next_full:
                for cid in self._pinned():
                    self._queue[cid] = None
                next_full = trio.current_time() + self.ttl / 2
                self.first_full.set()
            await self.flush()
            await trio.sleep(self.interval)  # rate limit: one batch per interval

    async def flush(self) -> None:
        while self._queue:
            batch = list(self._queue)[:MAX_ROOTS]
            for cid in batch:
                del self._queue[cid]
            ann = Announcement(
                time.time(), self.ttl, tuple(self._addrs()[:MAX_ADDRS]), tuple(batch)
            )
            try:
                await self._publish(encode(ann))
                self.sent_batches += 1
            except Exception:
                log.exception("announcement publish failed; will retry")
                for cid in batch:
                    self._queue[cid] = None
                return
