"""Plays: listens reported by clients, checked, deduplicated, counted and shared.

A client reports a listen to one discovery node (``POST
/v1/tracks/{id}/listen`` on the gateway, which calls
:meth:`ListenService.report`). A listen is either

- *signed*: user U listened to track T at unix time ts, signed by U's
  wallet (:mod:`chain.listen`: EIP-191 over a text naming the domain
  ``coliving-listen/1``, the chain id, U, T and ts). Accepted if the
  signature recovers to U's wallet in the index, T exists and is not
  deleted, and ts is neither more than ``max_skew`` in the future nor more
  than ``max_age`` in the past (both by this node's clock); or
- *anonymous*: only T. The node stamps it with its own clock and a random
  16-byte id. Bounded by a token bucket per client address
  (``anonymous_rate``, ``anonymous_burst``); every report, signed or not,
  also takes a token from a wider bucket (``report_rate``,
  ``report_burst``) that bounds the signature checks a client can cause.

Accepted listens are counted here and published every ``batch_interval``
(at most ``max_batch`` a batch) on gossipsub ``/coliving/listens/1``
(:mod:`protocols.listens`); while no peer is in this node's mesh for the
topic they wait (gossipsub would drop a publish to an empty mesh), at most
``max_pending`` of them, the oldest dropped first (counted here, unshared).

A batch is taken only from an origin the stake oracle counts as a staked
discovery node; one that does not parse counts against its origin
(``on_malformed``, the node's peer conduct). Each listen of an accepted
batch is checked again as above (anonymous ones are trusted to their staked
origin, but for the track and the time bounds) and counted through the
same deduplication; gossipsub forwards the batch, nobody publishes it again.

Counting rule (the same at every node, whatever order listens arrive in):

- every listen has an id: the sha256 of its signed text (the signature
  itself is not part of it: ECDSA signatures are malleable, so one listen
  has several valid ones), or its anonymous id. An id counts once.
- a signed listen of (U, T) at ts falls in the window ``ts // w`` where
  ``w`` is T's duration in whole seconds, at least ``min_window``. Each
  (U, T, window) counts once: the first listen seen in it counts, the rest
  are *repeated*. The count is the number of distinct windows, which does
  not depend on arrival order.

Limits of that rule: windows are aligned, so two listens less than a track
length apart on either side of a window boundary count twice (at most one a
window, at most two within any track length). Nodes agree only on what they
all accept: a listen that reaches a node after ``max_age`` by that node's
clock, or before the node has indexed U or T, or after T's duration
changed there, is refused or windowed differently there. An anonymous
listen is only as honest as the staked node that vouches for it.

Deduplication state is in memory, bounded: the ids seen and the windows
counted are each forgotten once no acceptable listen can hit them any more
(``max_age`` after the listen or window), and at most ``max_remembered`` of
each are kept; past that the ones that expire soonest go first, and a
listen whose id or window was forgotten that way counts again. A restart
forgets it all (a listen replayed within ``max_age`` of a restart counts
again); a store table could keep it across restarts.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

import trio

from chain.listen import listen_message, recover_listen
from chain.oracle import DISCOVERY_NODE, StakeOracle
from p2p.abc import GossipLike, TaskStatus
from p2p.keys import PeerId
from protocols import listens as wire
from protocols.errors import DecodingError, is_offence
from protocols.listens import AnonymousListen, Listen, ListenBatch, SignedListen
from store.index import IndexStore

log = logging.getLogger("coliving.listens")

K = TypeVar("K", bound=Hashable)

_SIGNED_BODY = frozenset({"user_id", "track_id", "timestamp", "signature"})
_ANONYMOUS_BODY = frozenset({"track_id"})
# digests of our own last batches: gossipsub validates and delivers what we publish
_OWN_KEPT = 256


class ListenRejected(ValueError):
    """The listen is malformed or fails a check; the message says which."""


class RateLimited(Exception):
    """Too many listens from this client address."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds until a listen would be taken


@dataclass(frozen=True)
class ListenConfig:
    """How listens are checked, limited, remembered and shared."""

    batch_interval: float = 1.0  # seconds between batches published
    max_batch: int = 256  # listens a batch (at most protocols.listens.MAX_LISTENS)
    # accepted listens waiting to be published (while no peer is meshed); past
    # it the oldest are not shared
    max_pending: int = 4096
    inbox: int = 64  # received batches waiting to be checked; past it, dropped here
    max_skew: float = 120.0  # how far in the future a listen's time may be
    max_age: float = 86_400.0  # how far in the past
    min_window: int = 30  # seconds: the shortest counting window (tracks without a duration)
    anonymous_rate: float = 0.2  # anonymous listens a second, per client address
    anonymous_burst: int = 10
    report_rate: float = 10.0  # reports of any kind a second, per client address
    report_burst: int = 100
    max_clients: int = 65_536  # client addresses with a bucket; the least recent are forgotten
    max_remembered: int = 262_144  # listen ids, and counted windows, kept for deduplication

    def __post_init__(self) -> None:
        whole = {"max_batch", "max_pending", "inbox", "min_window", "anonymous_burst"}
        whole |= {"report_burst", "max_clients", "max_remembered"}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"listens {f.name} must be a number, not {value!r}")
            if not 0 < value < math.inf:
                raise ValueError(f"listens {f.name} must be positive")
            if f.name in whole and not isinstance(value, int):
                raise ValueError(f"listens {f.name} must be a whole number")
        if self.max_batch > wire.MAX_LISTENS:
            raise ValueError(f"listens max_batch must be at most {wire.MAX_LISTENS}")


@dataclass(frozen=True, slots=True)
class ListenStats:
    """A snapshot of what the service did since it started."""

    accepted: int = 0  # listens that passed every check (reported here or received)
    counted: int = 0  # plays added to the index
    duplicate: int = 0  # accepted, but an id already seen
    repeated: int = 0  # accepted, but its (user, track, window) already counted
    rejected: int = 0  # failed a check (reported here or received)
    rate_limited: int = 0  # reports refused by a token bucket
    unshared: int = 0  # accepted here, dropped from the queue to publish (it was full)
    batches_sent: int = 0
    batches_received: int = 0  # accepted by the topic validator, from others
    batches_refused: int = 0  # refused by it (malformed, or not a staked discovery node)
    batches_dropped: int = 0  # accepted but not checked: the inbox was full


class TokenBuckets(Generic[K]):
    """One token bucket per key (a client address): ``rate`` tokens a second,
    up to ``burst``. At most ``max_keys`` buckets; the least recently used go
    (a forgotten client starts again with a full bucket)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[K, tuple[float, float]] = OrderedDict()  # tokens, when

    def take(self, key: K) -> float:
        """Take a token for ``key``: 0.0 if there was one, else the seconds until
        there will be (nothing taken)."""
        now = self.clock()
        tokens, when = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


class Expiring(Generic[K]):
    """A set whose members each expire at a time of their own, holding at most
    ``max_size``: past it, the members that expire soonest are dropped first."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._expiry: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []  # (expiry, insertion number, key)
        self._added = 0
        self.evicted = 0  # dropped before they expired

    def __contains__(self, key: object) -> bool:
        return key in self._expiry

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, key: K, expires: float) -> None:
        """Add ``key`` (not yet a member) until ``expires``."""
        self._expiry[key] = expires
        self._added += 1
        heapq.heappush(self._heap, (expires, self._added, key))
        while len(self._expiry) > self.max_size:
            self._pop()
            self.evicted += 1

    def discard(self, key: K) -> None:
        # its heap entry stays until popped; _pop skips entries no longer members
        self._expiry.pop(key, None)

    def prune(self, now: float) -> None:
        """Forget the members expired at ``now``."""
        while self._heap and self._heap[0][0] <= now:
            self._pop()

    def _pop(self) -> None:
        while self._heap:
            expires, _, key = heapq.heappop(self._heap)
            if self._expiry.get(key) == expires:
                del self._expiry[key]
                return


@dataclass(frozen=True, slots=True)
class Admitted:
    """What :meth:`PlayCounter.admit` made of one accepted listen."""

    fresh: bool  # an id not seen before (ours to publish, if reported here)
    counts: bool  # a play
    ident: bytes
    window: tuple[int, int, int] | None  # the (user, track, window) it fell in, if signed


class PlayCounter:
    """The counting rule (module docstring): each listen id once, each
    (user, track, window) of a signed listen once; bounded, in memory."""

    def __init__(self, *, max_age: float, max_remembered: int) -> None:
        self.max_age = max_age
        self._seen = Expiring[bytes](max_remembered)
        self._windows = Expiring[tuple[int, int, int]](max_remembered)

    def admit(self, listen: Listen, ident: bytes, window: int, now: float) -> Admitted:
        """Record an accepted listen (``window``: its track's counting window
        in seconds). Sync: for trio, the test and the record are one step."""
        self._seen.prune(now)
        self._windows.prune(now)
        if ident in self._seen:
            return Admitted(fresh=False, counts=False, ident=ident, window=None)
        # no listen older than max_age is accepted: past that, this id cannot recur
        self._seen.add(ident, listen.timestamp + self.max_age + 1)
        if isinstance(listen, AnonymousListen):
            return Admitted(fresh=True, counts=True, ident=ident, window=None)
        slot = listen.timestamp // window
        key = (listen.user_id, listen.track_id, slot)
        if key in self._windows:
            return Admitted(fresh=False, counts=False, ident=ident, window=key)
        # nor one of this window, once its last second is older than max_age
        self._windows.add(key, (slot + 1) * window + self.max_age + 1)
        return Admitted(fresh=True, counts=True, ident=ident, window=key)

    def forget(self, admitted: Admitted) -> None:
        """Undo a counted admission (its play could not be stored)."""
        self._seen.discard(admitted.ident)
        if admitted.window is not None:
            self._windows.discard(admitted.window)

    def __len__(self) -> int:
        return len(self._seen) + len(self._windows)


def listen_id(listen: Listen, chain_id: int) -> bytes:
    """A listen's identity: the sha256 of its signed text, or its anonymous id."""
    if isinstance(listen, AnonymousListen):
        return listen.listen_id
    text = listen_message(
        chain_id=chain_id,
        user_id=listen.user_id,
        track_id=listen.track_id,
        timestamp=listen.timestamp,
    )
    return hashlib.sha256(text).digest()


def _int_field(body: dict[str, Any], name: str) -> int:
    value = body[name]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= wire.MAX_INT:
        raise ListenRejected(f"{name} must be an integer in [0, 2**63)")
    return value


def _signature_field(value: object) -> bytes:
    if not isinstance(value, str):
        raise ListenRejected("signature must be a hex string")
    text = value[2:] if value.startswith(("0x", "0X")) else value
    if len(text) != 2 * wire.SIGNATURE_LEN:
        raise ListenRejected(f"signature must be {wire.SIGNATURE_LEN} bytes in hex")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ListenRejected("signature is not hex") from None


class ListenService:
    """Counts the plays of one discovery node and shares its listens with the
    others. ``await nursery.start(service.run)``; ``await service.report(...)``.

    ``on_malformed(origin, reason)`` is told of each batch that does not parse
    (the node's peer conduct: gossipsub checked the origin's signature, so
    the bytes are the origin's own)."""

    def __init__(
        self,
        store: IndexStore,
        gossip: GossipLike,
        oracle: StakeOracle,
        *,
        chain_id: int,
        config: ListenConfig | None = None,
        clock: Callable[[], float] = time.time,
        on_malformed: Callable[[PeerId, str], None] | None = None,
    ) -> None:
        self.store = store
        self.gossip = gossip
        self.oracle = oracle
        self.chain_id = chain_id
        self.config = cfg = config or ListenConfig()
        self.clock = clock
        self.on_malformed = on_malformed
        self._stats: dict[str, int] = {f.name: 0 for f in fields(ListenStats)}
        self.refused: dict[str, int] = {}  # batches refused, by reason
        self.changed = trio.Event()  # set after every report and batch (tests wait on it)
        self._anonymous = TokenBuckets[str](
            cfg.anonymous_rate, cfg.anonymous_burst, max_keys=cfg.max_clients
        )
        self._reports = TokenBuckets[str](
            cfg.report_rate, cfg.report_burst, max_keys=cfg.max_clients
        )
        self.counter = PlayCounter(max_age=cfg.max_age, max_remembered=cfg.max_remembered)
        self._pending: list[Listen] = []
        self._wake = trio.Event()
        self._own: OrderedDict[bytes, None] = OrderedDict()
        self._inbox_send, self._inbox = trio.open_memory_channel[ListenBatch](cfg.inbox)
        # one worker thread at a time for the index and the signature checks
        self._limiter = trio.CapacityLimiter(1)

    # --- what others call ---

    def statistics(self) -> ListenStats:
        return ListenStats(**self._stats)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Validate, receive and check batches; publish ours every batch_interval."""
        self.gossip.set_validator(wire.TOPIC, self.validate)
        messages = await self.gossip.subscribe(wire.TOPIC)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drain, messages)
            nursery.start_soon(self._check_received)
            task_status.started()
            await self._publish_loop()

    async def report(self, body: object, client: str) -> dict[str, Any]:
        """Take one listen from a client at address ``client``: ``{"user_id",
        "track_id", "timestamp", "signature": hex}`` signed, or ``{"track_id"}``
        anonymous. ``{"accepted": True, "id": hex}``, or ListenRejected /
        RateLimited."""
        try:
            return await self._report(body, client)
        finally:
            self._changed()

    async def validate(self, origin: PeerId, forwarder: PeerId, data: bytes) -> bool:
        """The gossip validator of the listens topic."""
        digest = hashlib.sha256(data).digest()
        if digest in self._own:
            return True  # gossipsub validates what we publish too; counted already
        try:
            batch = wire.decode(data)
        except DecodingError as exc:
            if is_offence(exc) and self.on_malformed is not None:
                self.on_malformed(origin, f"malformed listen batch: {exc}")
            return self._refuse("malformed")
        stake = await self.oracle.stake_of(origin)
        if stake is None or stake.service_type != DISCOVERY_NODE or not stake.sufficient:
            return self._refuse("not a staked discovery node")
        self._bump("batches_received")
        try:
            self._inbox_send.send_nowait(batch)
        except trio.WouldBlock:
            # forwarded still: the others may have the time to check it
            self._bump("batches_dropped")
            log.warning("listen inbox full: a batch from %s is not counted here", origin)
        self._changed()
        return True

    # --- reports ---

    async def _report(self, body: object, client: str) -> dict[str, Any]:
        now = self.clock()
        if not isinstance(body, dict):
            self._bump("rejected")
            raise ListenRejected("a listen is a JSON object")
        try:
            listen = self._parse(body, now)
        except ListenRejected:
            self._bump("rejected")
            raise
        wait = self._reports.take(client)
        if wait == 0.0 and isinstance(listen, AnonymousListen):
            wait = self._anonymous.take(client)
        if wait > 0.0:
            self._bump("rate_limited")
            raise RateLimited(f"too many listens from {client}", wait)
        reason = self._time_problem(listen, now)
        if reason is None:
            [verdict] = await self._verify([listen])
        else:
            verdict = reason
        if isinstance(verdict, str):
            self._bump("rejected")
            raise ListenRejected(verdict)
        self._bump("accepted")
        ident = listen_id(listen, self.chain_id)
        admitted = self._admit(listen, ident, verdict, now)
        if admitted.fresh:
            self._share(listen)
        if admitted.counts:
            await self._add_plays([(listen.track_id, admitted)])
        return {"accepted": True, "id": ident.hex()}

    def _parse(self, body: dict[str, Any], now: float) -> Listen:
        keys = set(body)
        if keys == _ANONYMOUS_BODY:
            return AnonymousListen(
                os.urandom(wire.ANONYMOUS_ID_LEN), _int_field(body, "track_id"), int(now)
            )
        if keys == _SIGNED_BODY:
            return SignedListen(
                _int_field(body, "user_id"),
                _int_field(body, "track_id"),
                _int_field(body, "timestamp"),
                _signature_field(body["signature"]),
            )
        raise ListenRejected(
            "a listen has keys user_id, track_id, timestamp, signature (signed) "
            "or track_id only (anonymous)"
        )

    # --- checks and counting ---

    def _time_problem(self, listen: Listen, now: float) -> str | None:
        if listen.timestamp > now + self.config.max_skew:
            return "listen timestamp is in the future"
        if listen.timestamp < now - self.config.max_age:
            return "listen is too old"
        return None

    async def _verify(self, listens: Sequence[Listen]) -> list[int | str]:
        """Per listen, its counting window in seconds, or why it is refused."""
        return await trio.to_thread.run_sync(self._verify_sync, listens, limiter=self._limiter)

    def _verify_sync(self, listens: Sequence[Listen]) -> list[int | str]:
        windows: dict[int, int | str] = {}
        wallets: dict[int, str | None] = {}
        out: list[int | str] = []
        for listen in listens:
            window = windows.get(listen.track_id)
            if window is None:
                window = windows[listen.track_id] = self._window_of(listen.track_id)
            if isinstance(window, str) or isinstance(listen, AnonymousListen):
                out.append(window)
                continue
            if listen.user_id not in wallets:
                user = self.store.user(listen.user_id)
                wallet = None if user is None else user.get("wallet")
                wallets[listen.user_id] = wallet.lower() if isinstance(wallet, str) else None
            wallet = wallets[listen.user_id]
            if wallet is None:
                out.append("unknown user")
                continue
            signer = recover_listen(
                listen.signature,
                chain_id=self.chain_id,
                user_id=listen.user_id,
                track_id=listen.track_id,
                timestamp=listen.timestamp,
            )
            out.append(window if signer == wallet else "signature is not the user's wallet")
        return out

    def _window_of(self, track_id: int) -> int | str:
        track = self.store.track(track_id)
        if track is None:
            return "unknown track"
        if track.get("deleted"):
            return "track is deleted"
        duration = track.get("duration")
        seconds = 0
        if isinstance(duration, bool) or not isinstance(duration, int | float):
            duration = 0.0
        if math.isfinite(duration) and duration > 0:
            seconds = math.ceil(duration)
        return max(seconds, self.config.min_window)

    def _admit(self, listen: Listen, ident: bytes, window: int, now: float) -> Admitted:
        admitted = self.counter.admit(listen, ident, window, now)
        if not admitted.counts:
            self._bump("duplicate" if admitted.window is None else "repeated")
        return admitted

    async def _add_plays(self, counted: Sequence[tuple[int, Admitted]]) -> None:
        counts: dict[int, int] = {}
        for track_id, _ in counted:
            counts[track_id] = counts.get(track_id, 0) + 1
        try:
            await trio.to_thread.run_sync(
                self.store.add_plays, sorted(counts.items()), limiter=self._limiter
            )
        except BaseException:
            # not counted: forgotten, so that the same listens may count later
            for _, admitted in counted:
                self.counter.forget(admitted)
            raise
        self._bump("counted", len(counted))

    # --- gossip ---

    async def _drain(self, messages: Any) -> None:
        # subscribed to be in the mesh; the validator already took each batch
        async for _ in messages:
            pass

    async def _check_received(self) -> None:
        async for batch in self._inbox:
            try:
                await self._count_batch(batch)
            except Exception:  # a store failure: these listens count nowhere here
                log.exception("counting a listen batch failed")
            self._changed()

    async def _count_batch(self, batch: ListenBatch) -> None:
        now = self.clock()
        timely: list[Listen] = []
        for listen in batch.listens:
            if self._time_problem(listen, now) is None:
                timely.append(listen)
            else:
                self._bump("rejected")
        verdicts = await self._verify(timely) if timely else []
        counted: list[tuple[int, Admitted]] = []
        for listen, verdict in zip(timely, verdicts, strict=True):
            if isinstance(verdict, str):
                self._bump("rejected")
                log.debug("listen in a batch refused: %s", verdict)
                continue
            self._bump("accepted")
            admitted = self._admit(listen, listen_id(listen, self.chain_id), verdict, now)
            if admitted.counts:
                counted.append((listen.track_id, admitted))
        if counted:
            await self._add_plays(counted)

    def _share(self, listen: Listen) -> None:
        self._pending.append(listen)
        if len(self._pending) > self.config.max_pending:
            # counted here, but the others will not hear of it from us
            del self._pending[0]
            self._bump("unshared")
        self._wake.set()

    async def _publish_loop(self) -> None:
        cfg = self.config
        while True:
            if not self._pending:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            if not self.gossip.mesh_peers(wire.TOPIC):
                # gossipsub sends a publish to the mesh only: with none yet
                # (before a heartbeat grafted one) the batch would be lost
                await trio.sleep(cfg.batch_interval)
                continue
            batch = self._pending[: cfg.max_batch]
            del self._pending[: len(batch)]
            data = wire.encode(ListenBatch(tuple(batch)))
            self._own[hashlib.sha256(data).digest()] = None
            while len(self._own) > _OWN_KEPT:
                self._own.popitem(last=False)
            try:
                await self.gossip.publish(wire.TOPIC, data)
            except Exception:  # put back: the next round tries again
                log.exception("publishing a listen batch failed; will retry")
                self._pending[:0] = batch
                excess = len(self._pending) - cfg.max_pending
                if excess > 0:
                    del self._pending[:excess]
                    self._bump("unshared", excess)
            else:
                self._bump("batches_sent")
                self._changed()
            await trio.sleep(cfg.batch_interval)  # the rate limit: one batch an interval

    # --- bookkeeping ---

    def _refuse(self, reason: str) -> bool:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self._bump("batches_refused")
        self._changed()
        return False

    def _bump(self, name: str, by: int = 1) -> None:
        self._stats[name] += by

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()
