"""An in-memory network for virtual-time simulation. **A model, not libp2p.**

:class:`MemoryHost` and :class:`MemoryGossip` satisfy :class:`p2p.abc.HostLike`
and :class:`p2p.abc.GossipLike`, so an unchanged :class:`node.Node` runs on
them; :mod:`simnet.virtual` runs thousands of such nodes in one trio process
under ``trio.testing.MockClock``, where only the link model costs time.

What is modelled:

- **Links.** Each ordered pair of peers has a :class:`LinkModel`: a write of
  n bytes waits for the link to be free, takes ``n / bandwidth_Bps`` to
  serialise (the writer is blocked meanwhile, as on a full send buffer) and
  reaches the reader ``latency_s`` later. With probability ``loss`` a write is
  "lost" and arrives one retransmit timeout (``rto_s``) late; delivery stays in
  order (TCP), so a loss delays what follows on that connection too. The
  draws come from one RNG per ordered pair, seeded from the network's seed.
- **Streams.** A byte pipe per direction, delivered in order, with a receive
  window (a writer waits while ``WINDOW`` bytes are unread), half-close and
  reset with the same delays as data. Opening a stream costs one round trip
  (multistream-select); the handler starts at the remote after one latency.
- **Connections.** A dial costs ``handshake_rtts`` round trips (TCP, Noise,
  Yamux negotiation); a dial to a stopped host is refused after one round
  trip, a dial to an unknown address times out after ``dial_timeout``.
  Addresses are ``/ip4/10.x.y.z/tcp/4001`` strings that no socket ever sees.
- **Gossip** (:class:`MemoryGossip`): subscriptions are exchanged on connect,
  like gossipsub's hello; a message is validated at each hop with the same
  validator signature ``(origin, forwarder, data)``, de-duplicated by message
  id ``(origin, seqno)`` and forwarded to every connected peer subscribed to
  the topic. It travels over the same modelled streams, so it pays the same
  latency, bandwidth and loss as the rest.

Where it differs from gossipsub (p2p.gossip): it is a flood, i.e. gossipsub
with a mesh as large as the peer's topic peers; there is no mesh degree, no
heartbeat, no IHAVE/IWANT repair, no peer scoring or graylisting (an invalid
message is dropped and counted, its forwarder is not punished), no message
signatures (the origin is taken from the frame: the model trusts its peers
not to forge it) and a message id is marked seen before validation, so two
copies arriving during one validation are not both delivered. Compute time
(validation, hashing, LMDB) costs no virtual time.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import cbor2
import trio

from p2p.abc import (
    GossipLike,
    GossipMessage,
    HostLike,
    Stream,
    StreamError,
    StreamHandler,
    TaskStatus,
    Validator,
)
from p2p.gossip import GossipConfig
from p2p.host import (
    AddressError,
    DialError,
    HostConfig,
    dial_each,
    parse_addr,
    peer_id_of_key,
)
from p2p.keys import NodeKey, PeerId

log = logging.getLogger(__name__)

WINDOW = 256 * 1024  # unread bytes a writer may have in flight (yamux's initial window)
GOSSIP_PROTOCOL = "/coliving-sim/flood/1"
GOSSIP_QUEUE = 1000  # frames queued per peer before we drop (py-libp2p: 1000 too)


@dataclass(frozen=True)
class LinkModel:
    """One direction of a link: one-way delay, bandwidth, loss as a late retransmit."""

    latency_s: float = 0.010
    bandwidth_Bps: float = 12_500_000.0  # 100 Mbit/s
    loss: float = 0.0
    rto_s: float = 0.2  # TCP's minimum retransmit timeout

    def __post_init__(self) -> None:
        if self.latency_s < 0 or self.rto_s < 0:
            raise ValueError("latency and rto must not be negative")
        if self.bandwidth_Bps <= 0:
            raise ValueError("bandwidth must be positive (math.inf for no limit)")
        if not 0 <= self.loss < 1:
            raise ValueError("loss is a probability in [0, 1)")


@dataclass(frozen=True)
class Links:
    """The default link and per-pair overrides (by peer; both directions)."""

    default: LinkModel = field(default_factory=LinkModel)
    pairs: Mapping[frozenset[PeerId], LinkModel] = field(default_factory=dict)

    def between(self, a: PeerId, b: PeerId) -> LinkModel:
        return self.pairs.get(frozenset((a, b)), self.default)


@dataclass
class NetworkStats:
    dials: int = 0
    streams: int = 0
    writes: int = 0
    bytes: int = 0
    losses: int = 0


class _Line:
    """One direction of one connection: a FIFO wire with a serialisation queue."""

    __slots__ = ("busy_until", "last_arrival", "model", "rng", "stats")

    def __init__(self, model: LinkModel, rng: random.Random, stats: NetworkStats) -> None:
        self.model = model
        self.rng = rng
        self.stats = stats
        self.busy_until = -math.inf
        self.last_arrival = -math.inf

    def transmit(self, size: int) -> tuple[float, float]:
        """(time the last byte leaves, time it arrives) of a write sent now."""
        model = self.model
        start = max(trio.current_time(), self.busy_until)
        sent = start + size / model.bandwidth_Bps
        self.busy_until = sent
        arrival = sent + model.latency_s
        if model.loss and self.rng.random() < model.loss:
            arrival += model.rto_s
            self.stats.losses += 1
        arrival = max(arrival, self.last_arrival)
        self.last_arrival = arrival
        self.stats.writes += 1
        self.stats.bytes += size
        return sent, arrival


class _Pipe:
    """Bytes in flight from one stream end to the other."""

    __slots__ = ("buffered", "changed", "chunks", "eof_at", "line", "reset_at", "writer_reset_at")

    def __init__(self, line: _Line) -> None:
        self.line = line
        self.chunks: deque[tuple[float, bytes]] = deque()  # (arrival, data)
        self.buffered = 0
        self.eof_at: float | None = None
        self.reset_at: float | None = None  # as the reader sees it
        self.writer_reset_at: float | None = None  # as the writer sees it
        self.changed = trio.Event()

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class MemoryStream:
    """One end of an in-memory stream; satisfies :class:`p2p.abc.Stream`."""

    __slots__ = ("_closed", "_conn", "_in", "_out", "_peer")

    def __init__(self, conn: _Conn, peer: PeerId, inbound: _Pipe, outbound: _Pipe) -> None:
        self._conn = conn
        self._peer = peer
        self._in = inbound
        self._out = outbound
        self._closed = False

    @property
    def remote_peer(self) -> PeerId:
        return self._peer

    async def read(self, max_bytes: int) -> bytes:
        pipe = self._in
        while True:
            now = trio.current_time()
            if self._closed:
                await trio.lowlevel.checkpoint()
                return b""
            head = pipe.chunks[0][0] if pipe.chunks else math.inf
            if head <= now and (pipe.reset_at is None or head <= pipe.reset_at):
                out = bytearray()
                while pipe.chunks and pipe.chunks[0][0] <= now and len(out) < max_bytes:
                    arrival, data = pipe.chunks.popleft()
                    room = max_bytes - len(out)
                    if len(data) > room:
                        pipe.chunks.appendleft((arrival, data[room:]))
                        data = data[:room]
                    out += data
                pipe.buffered -= len(out)
                pipe.poke()  # a writer may wait for window
                await trio.lowlevel.checkpoint()
                return bytes(out)
            if pipe.reset_at is not None and now >= pipe.reset_at:
                await trio.lowlevel.checkpoint()
                raise StreamError(f"read from {self._peer}: stream reset")
            if not pipe.chunks and pipe.eof_at is not None and now >= pipe.eof_at:
                await trio.lowlevel.checkpoint()
                return b""
            wake = min(
                pipe.chunks[0][0] if pipe.chunks else math.inf,
                math.inf if pipe.eof_at is None or pipe.chunks else pipe.eof_at,
                math.inf if pipe.reset_at is None else pipe.reset_at,
            )
            with trio.move_on_at(wake):
                await pipe.changed.wait()

    async def write(self, data: bytes) -> None:
        pipe = self._out
        while True:
            now = trio.current_time()
            if pipe.writer_reset_at is not None and now >= pipe.writer_reset_at:
                await trio.lowlevel.checkpoint()
                raise StreamError(f"write to {self._peer}: stream reset")
            if pipe.eof_at is not None or self._closed:
                await trio.lowlevel.checkpoint()
                raise StreamError(f"write to {self._peer}: stream closed for writing")
            if pipe.buffered == 0 or pipe.buffered + len(data) <= WINDOW:
                break
            wake = math.inf if pipe.writer_reset_at is None else pipe.writer_reset_at
            with trio.move_on_at(wake):
                await pipe.changed.wait()
        sent, arrival = pipe.line.transmit(len(data))
        pipe.chunks.append((arrival, bytes(data)))
        pipe.buffered += len(data)
        pipe.poke()
        await trio.sleep_until(sent)

    async def close_write(self) -> None:
        pipe = self._out
        if pipe.eof_at is None:
            pipe.eof_at = pipe.line.transmit(0)[1]
            pipe.poke()
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        await self.close_write()
        self._closed = True
        self._in.poke()
        self._conn.streams.discard(self)

    async def reset(self) -> None:
        self.reset_now()
        await trio.lowlevel.checkpoint()

    def reset_now(self) -> None:
        """Reset both directions: at once here, one latency later at the other end."""
        now = trio.current_time()
        there = now + self._out.line.model.latency_s
        if self._in.reset_at is None:
            self._in.reset_at = now
        if self._in.writer_reset_at is None:
            self._in.writer_reset_at = there
        if self._out.writer_reset_at is None:
            self._out.writer_reset_at = now
        if self._out.reset_at is None:
            self._out.reset_at = there
        self._in.poke()
        self._out.poke()
        self._conn.streams.discard(self)


class _Conn:
    """A connection between two hosts: two lines and the streams on them."""

    def __init__(self, a: MemoryHost, b: MemoryHost, net: MemoryNetwork) -> None:
        self.hosts = (a, b)
        self.lines = {
            a.peer_id: net.line(a.peer_id, b.peer_id),
            b.peer_id: net.line(b.peer_id, a.peer_id),
        }
        self.streams: set[MemoryStream] = set()
        self.closed = False

    def other(self, host: MemoryHost) -> MemoryHost:
        return self.hosts[1] if self.hosts[0] is host else self.hosts[0]

    def pair(self, opener: MemoryHost) -> tuple[MemoryStream, MemoryStream]:
        """(opener's end, the other's end)."""
        remote = self.other(opener)
        up = _Pipe(self.lines[opener.peer_id])
        down = _Pipe(self.lines[remote.peer_id])
        mine = MemoryStream(self, remote.peer_id, down, up)
        theirs = MemoryStream(self, opener.peer_id, up, down)
        self.streams.update((mine, theirs))
        return mine, theirs

    def close(self) -> None:
        self.closed = True
        for stream in list(self.streams):
            stream.reset_now()
        for host in self.hosts:
            host._lost(self)


class MemoryNetwork:
    """Every in-memory host of one simulation, and the links between them."""

    def __init__(
        self,
        links: Links | LinkModel | None = None,
        *,
        seed: int = 0,
        handshake_rtts: float = 3.0,
    ) -> None:
        self.links = links if isinstance(links, Links) else Links(default=links or LinkModel())
        self.seed = seed
        self.handshake_rtts = handshake_rtts
        self.stats = NetworkStats()
        self._hosts: dict[str, MemoryHost] = {}  # listen address -> host

    def host(self, key: NodeKey, config: HostConfig | None = None) -> MemoryHost:
        """A new host with the next free address (``/ip4/10.x.y.z/tcp/4001``)."""
        n = len(self._hosts) + 1
        if n >= 1 << 24:
            raise ValueError("the 10.0.0.0/8 address space is full")
        addr = f"/ip4/10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/tcp/4001"
        host = MemoryHost(self, key, addr, config)
        self._hosts[addr] = host
        return host

    def line(self, a: PeerId, b: PeerId) -> _Line:
        digest = hashlib.sha256(f"{self.seed}/{a}/{b}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        return _Line(self.links.between(a, b), rng, self.stats)

    def rtt(self, a: PeerId, b: PeerId) -> float:
        return self.links.between(a, b).latency_s + self.links.between(b, a).latency_s

    def lookup(self, addr: str) -> MemoryHost | None:
        return self._hosts.get(addr)


def _split(addr: str) -> tuple[str, PeerId]:
    base, sep, peer = addr.partition("/p2p/")
    if not sep or not peer or "/" in peer:
        raise AddressError(f"{addr!r} has no /p2p/<peer id> part")
    return base, PeerId(peer)


class MemoryHost:
    """A host on a :class:`MemoryNetwork`; satisfies :class:`p2p.abc.HostLike`."""

    def __init__(
        self, net: MemoryNetwork, key: NodeKey, addr: str, config: HostConfig | None = None
    ) -> None:
        self.net = net
        self.key = key
        self.config = config or HostConfig()
        self.addr = addr
        self._peer_id = peer_id_of_key(key)
        self._handlers: dict[str, StreamHandler] = {}
        self._conns: dict[PeerId, _Conn] = {}
        self._dialing: dict[PeerId, trio.Event] = {}
        self._peerstore: dict[PeerId, list[str]] = {}
        self._nursery: trio.Nursery | None = None
        self.on_connect: list[Callable[[PeerId], None]] = []
        self.on_disconnect: list[Callable[[PeerId], None]] = []
        self.ready = trio.Event()

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    @property
    def running(self) -> bool:
        return self._nursery is not None

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.ready.set()
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for conn in list(self._conns.values()):
                conn.close()

    async def dial_bootstrap(self) -> list[PeerId]:
        return await dial_each(self.connect, self.config.bootstrap)

    def addrs(self) -> list[str]:
        return [f"{self.addr}/p2p/{self._peer_id}"]

    async def connect(self, addr: str) -> PeerId:
        base, peer = _split(addr)
        if peer in self._conns:
            await trio.lowlevel.checkpoint()
            return peer
        while peer in self._dialing:  # one dial per peer at a time
            await self._dialing[peer].wait()
            if peer in self._conns:
                return peer
        done = self._dialing[peer] = trio.Event()
        try:
            return await self._dial(base, peer)
        finally:
            del self._dialing[peer]
            done.set()

    async def _dial(self, base: str, peer: PeerId) -> PeerId:
        self.net.stats.dials += 1
        target = self.net.lookup(base)
        if target is None:
            await trio.sleep(self.config.dial_timeout)
            raise DialError(f"dial {base}: timed out after {self.config.dial_timeout} s")
        rtt = self.net.rtt(self._peer_id, target.peer_id)
        if not target.running:
            await trio.sleep(rtt)
            raise DialError(f"dial {base}: connection refused")
        await trio.sleep(rtt * self.net.handshake_rtts)
        if target.peer_id != peer:
            raise DialError(f"dial {base}: the peer there is {target.peer_id}, not {peer}")
        if not (target.running and self.running):
            raise DialError(f"dial {base}: connection closed during the handshake")
        if peer in self._conns:  # it dialled us meanwhile
            return peer
        conn = _Conn(self, target, self.net)
        self._conns[peer] = target._conns[self._peer_id] = conn
        self._learn(peer, [base])
        target._learn(self._peer_id, [self.addr])
        for host, other in ((self, peer), (target, self._peer_id)):
            for callback in host.on_connect:
                callback(other)
        return peer

    def _learn(self, peer: PeerId, addrs: Sequence[str]) -> None:
        known = self._peerstore.setdefault(peer, [])
        known += [a for a in addrs if a not in known]

    def _lost(self, conn: _Conn) -> None:
        peer = conn.other(self).peer_id
        if self._conns.get(peer) is conn:
            del self._conns[peer]
            for callback in self.on_disconnect:
                callback(peer)

    def add_addrs(self, peer: PeerId, addrs: Sequence[str]) -> None:
        for addr in addrs:
            parse_addr(addr)  # the same AddressError as the libp2p host
        self._learn(peer, [a.partition("/p2p/")[0] for a in addrs])

    async def disconnect(self, peer: PeerId) -> None:
        conn = self._conns.get(peer)
        if conn is not None:
            conn.close()
        await trio.lowlevel.checkpoint()

    def connected_peers(self) -> list[PeerId]:
        return list(self._conns)

    def is_connected(self, peer: PeerId) -> bool:
        return peer in self._conns

    def peer_addrs(self, peer: PeerId) -> list[str]:
        return list(self._peerstore.get(peer, ()))

    async def open_stream(
        self, peer: PeerId, protocols: Sequence[str], *, optimistic: bool = False
    ) -> Stream:
        # (optimistic is a round trip saved on a real wire; the model has none to save)
        conn = self._conns.get(peer)
        if conn is None:
            for addr in self.peer_addrs(peer):
                try:
                    await self.connect(f"{addr}/p2p/{peer}")
                    break
                except (DialError, AddressError) as exc:
                    log.debug("dial %s at %s: %s", peer, addr, exc)
            conn = self._conns.get(peer)
            if conn is None:
                raise StreamError(f"open {list(protocols)} to {peer}: no connection")
        remote = conn.other(self)
        await trio.sleep(self.net.links.between(self._peer_id, peer).latency_s)
        proto = next((p for p in protocols if p in remote._handlers), None)
        nursery = remote._nursery
        if conn.closed or nursery is None:
            raise StreamError(f"open {list(protocols)} to {peer}: connection closed")
        back = self.net.links.between(peer, self._peer_id).latency_s
        if proto is None:
            await trio.sleep(back)
            raise StreamError(f"open {list(protocols)} to {peer}: protocol not supported")
        mine, theirs = conn.pair(self)
        self.net.stats.streams += 1
        nursery.start_soon(remote._serve, proto, remote._handlers[proto], theirs)
        await trio.sleep(back)
        if conn.closed:
            raise StreamError(f"open {list(protocols)} to {peer}: connection closed")
        return mine

    async def _serve(self, protocol: str, handler: StreamHandler, stream: MemoryStream) -> None:
        try:
            await handler(stream)
        except StreamError as exc:
            log.debug("%s stream from %s ended: %s", protocol, stream.remote_peer, exc)
            await stream.reset()
        except Exception:
            # libp2p logs a failing handler and resets its stream; so do we
            log.exception("%s handler failed on a stream from %s", protocol, stream.remote_peer)
            await stream.reset()

    def set_handler(self, protocol: str, handler: StreamHandler) -> None:
        self._handlers[protocol] = handler


# -- gossip -----------------------------------------------------------------------

_LEN = struct.Struct(">I")
_MAX_FRAME = 4 << 20


async def _read_exactly(stream: Stream, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.read(n - len(buf))
        if not chunk:
            if buf:
                raise StreamError("EOF inside a gossip frame")
            return None
        buf += chunk
    return bytes(buf)


@dataclass
class GossipStats:
    published: int = 0
    delivered: int = 0
    duplicates: int = 0
    rejected: int = 0
    dropped: int = 0  # a peer's queue was full


class MemoryGossip:
    """Flooding publish/subscribe on a MemoryHost; satisfies :class:`p2p.abc.GossipLike`.

    A model of p2p.gossip.Gossip: see the module docstring for the differences."""

    def __init__(self, host: MemoryHost, config: GossipConfig | None = None) -> None:
        self.config = config or GossipConfig()
        self.host = host
        self.stats = GossipStats()
        self._validators: dict[str, Validator] = {}
        self._subscribed: dict[str, trio.MemorySendChannel[GossipMessage]] = {}
        self._peer_topics: dict[str, set[PeerId]] = {}
        self._queues: dict[PeerId, trio.MemorySendChannel[bytes]] = {}
        self._seen: set[tuple[PeerId, int]] = set()
        self._seqno = 0
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.host.set_handler(GOSSIP_PROTOCOL, self._inbound)
            self.host.on_connect.append(self._connected)
            self.host.on_disconnect.append(self._disconnected)
            for peer in self.host.connected_peers():
                self._connected(peer)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self.host.on_connect.remove(self._connected)
                self.host.on_disconnect.remove(self._disconnected)
                self._nursery = None

    # -- peers --------------------------------------------------------------

    def _connected(self, peer: PeerId) -> None:
        if self._nursery is None or peer in self._queues:
            return
        send, receive = trio.open_memory_channel[bytes](GOSSIP_QUEUE)
        self._queues[peer] = send
        for topic in self._subscribed:
            send.send_nowait(self._frame(["sub", topic]))
        self._nursery.start_soon(self._outbound, peer, send, receive)

    def _disconnected(self, peer: PeerId) -> None:
        queue = self._queues.pop(peer, None)
        if queue is not None:
            queue.close()
        for peers in self._peer_topics.values():
            peers.discard(peer)
        self._poke()

    async def _outbound(
        self,
        peer: PeerId,
        queue: trio.MemorySendChannel[bytes],
        frames: trio.MemoryReceiveChannel[bytes],
    ) -> None:
        """Open our stream to ``peer`` and write its queued frames in order."""
        try:
            async with frames:
                stream = await self.host.open_stream(peer, [GOSSIP_PROTOCOL])
                try:
                    async for frame in frames:
                        await stream.write(frame)
                finally:
                    await stream.reset()
        except StreamError as exc:
            log.debug("gossip stream to %s ended: %s", peer, exc)
        finally:
            if self._queues.get(peer) is queue:
                del self._queues[peer]

    async def _inbound(self, stream: Stream) -> None:
        peer = stream.remote_peer
        while True:
            head = await _read_exactly(stream, _LEN.size)
            if head is None:
                return
            (size,) = _LEN.unpack(head)
            if size > _MAX_FRAME:
                raise StreamError(f"gossip frame of {size} bytes from {peer}")
            body = await _read_exactly(stream, size)
            if body is None:
                raise StreamError("EOF inside a gossip frame")
            frame = cbor2.loads(body)
            if frame[0] == "sub":
                self._peer_topics.setdefault(frame[1], set()).add(peer)
                self._poke()
            elif frame[0] == "unsub":
                self._peer_topics.get(frame[1], set()).discard(peer)
                self._poke()
            elif frame[0] == "msg":
                _, topic, origin, seqno, data = frame
                await self._received(topic, PeerId(origin), seqno, data, peer)

    # -- messages -----------------------------------------------------------

    @staticmethod
    def _frame(obj: list[object]) -> bytes:
        body: bytes = cbor2.dumps(obj)
        return _LEN.pack(len(body)) + body

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _received(
        self, topic: str, origin: PeerId, seqno: int, data: bytes, forwarder: PeerId
    ) -> None:
        msg_id = (origin, seqno)
        if msg_id in self._seen:
            self.stats.duplicates += 1
            return
        self._seen.add(msg_id)
        validator = self._validators.get(topic)
        if validator is not None:
            try:
                ok = await validator(origin, forwarder, data)
            except Exception:
                log.exception("gossip validator failed; rejecting the message")
                ok = False
            if not ok:
                self.stats.rejected += 1
                return
        channel = self._subscribed.get(topic)
        if channel is not None:
            try:
                channel.send_nowait(GossipMessage(topic, origin, data))
                self.stats.delivered += 1
            except trio.WouldBlock:
                self.stats.dropped += 1
        frame = self._frame(["msg", topic, origin, seqno, data])
        for peer in self._peer_topics.get(topic, ()):
            if peer in (forwarder, origin):
                continue
            queue = self._queues.get(peer)
            if queue is None:
                continue
            try:
                queue.send_nowait(frame)
            except (trio.WouldBlock, trio.ClosedResourceError):
                self.stats.dropped += 1

    def set_validator(self, topic: str, validator: Validator) -> None:
        self._validators[topic] = validator

    async def subscribe(self, topic: str) -> AsyncIterator[GossipMessage]:
        """Subscribe now; iterate the result to receive validated messages."""
        if topic in self._subscribed:
            raise ValueError(f"already subscribed to {topic}")
        send, receive = trio.open_memory_channel[GossipMessage](GOSSIP_QUEUE)
        self._subscribed[topic] = send
        frame = self._frame(["sub", topic])
        for queue in self._queues.values():
            try:
                queue.send_nowait(frame)
            except (trio.WouldBlock, trio.ClosedResourceError):
                self.stats.dropped += 1
        await trio.lowlevel.checkpoint()
        return _iterate(receive)

    async def publish(self, topic: str, data: bytes) -> None:
        if len(data) > self.config.max_message_size:
            raise ValueError(f"gossip message of {len(data)} bytes is over the limit")
        self._seqno += 1
        self.stats.published += 1
        me = self.host.peer_id
        await self._received(topic, me, self._seqno, data, me)

    async def wait_for_subscriber(self, peer: PeerId, topic: str) -> None:
        while peer not in self._peer_topics.get(topic, ()):
            await self._changed.wait()

    def mesh_peers(self, topic: str) -> list[PeerId]:
        # flooding: every connected subscriber is in the "mesh"
        return self.topic_peers(topic)

    def topic_peers(self, topic: str) -> list[PeerId]:
        return sorted(self._peer_topics.get(topic, ()))


async def _iterate(
    channel: trio.MemoryReceiveChannel[GossipMessage],
) -> AsyncIterator[GossipMessage]:
    async with channel:
        async for message in channel:
            yield message


def memory_node_parts(
    net: MemoryNetwork,
    key: NodeKey,
    *,
    bootstrap: Sequence[str] = (),
    gossip: GossipConfig | None = None,
) -> tuple[MemoryHost, MemoryGossip]:
    """A host and its gossip, ready to hand to ``Node(host=..., gossip=...)``."""
    host = net.host(key, HostConfig(bootstrap=tuple(bootstrap)))
    return host, MemoryGossip(host, gossip)


def _conforms(host: MemoryHost, gossip: MemoryGossip) -> tuple[HostLike, GossipLike]:
    """mypy checks here that the model satisfies the interfaces Node uses."""
    return host, gossip
