"""Bitswap 1.2.0 block exchange: serving wants and fetching DAGs from many peers.

Wire: see :mod:`protocols.bitswap_msg`. As in go and js Bitswap, each side
sends its messages on a stream it opened itself; we keep one long-lived
outbound stream per peer and read every inbound stream until it closes.

Serving: each peer has a ledger of wanted CIDs; one sender task per peer
drains it in order, packing blocks into messages of up to ``batch_bytes``.
A want for a CID we lack gets DONT_HAVE when the peer asked for it.

Fetching: a :class:`Fetch` walks a UnixFS DAG in file order, keeps up to
``window`` blocks in flight split across its providers (at most
``per_peer_window`` each, the least loaded peer first), verifies every block
(its CID is computed from its bytes and must be one we asked that peer for),
and yields leaf bytes in order, so playback can start at the first block.
Blocks go to the store in batches as they arrive; a reader that lags (a
player, a browser on a slow link) has at most ``buffer_bytes`` of leaves
kept in memory ahead of it, and reads the rest back from the store.
A provider that sends a block we did not ask it for is reported as bad,
disconnected, dropped and banned for a while (:mod:`protocols.conduct`); one that
answers DONT_HAVE or stalls loses those CIDs to the others. The fetch fails
only when no provider is left.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from p2p.abc import Stream, StreamError, StreamHandler, StreamRefused, TaskStatus
from p2p.keys import PeerId
from protocols import bitswap_msg as msg
from protocols.bitswap_msg import BitswapMessage, Presence, WantEntry, WantType
from protocols.cid import CID, DAG_PB
from protocols.conduct import PROVEN, Conduct
from protocols.errors import DecodingError, NotFoundError, is_offence
from protocols.unixfs import Block, FileNode, child_at, decode_file_node
from protocols.wire import FrameReader
from store.blockstore import BlockStore

log = logging.getLogger(__name__)


class Network(Protocol):
    """What Bitswap needs of the host (p2p.host.Host satisfies it)."""

    async def open_stream(
        self, peer: PeerId, protocols: Sequence[str], *, optimistic: bool = False
    ) -> Stream: ...

    def set_handler(self, protocol: str, handler: StreamHandler) -> None: ...

    async def disconnect(self, peer: PeerId) -> None: ...

    # called with a peer whose last connection closed
    on_disconnect: list[Callable[[PeerId], None]]


# a peer whose wants ran out this long ago is starting afresh: its first reply is one block
PAUSE = 0.05


@dataclass(frozen=True)
class BitswapConfig:
    window: int = 96
    per_peer_window: int = 32
    batch_bytes: int = 1 << 20
    stall_timeout: float = 10.0
    max_ledger: int = 8192
    store_batch: int = 16
    # leaf bytes a fetch keeps in memory ahead of its reader; the blocks beyond
    # are in the store (the lookahead is twice the window: 48 MiB of 256 KiB
    # leaves, all of it held in memory for a reader slower than the network)
    buffer_bytes: int = 8 << 20


@dataclass
class BitswapStats:
    blocks_served: int = 0
    bytes_served: int = 0
    blocks_fetched: int = 0
    bytes_fetched: int = 0
    bad_blocks: int = 0
    dont_haves_sent: int = 0
    late_blocks: int = 0  # arrived after we cancelled them: harmless, not counted as fetched


@dataclass
class _Ledger:
    """What one peer wants from us, in the order it asked."""

    wants: OrderedDict[CID, WantEntry] = field(default_factory=OrderedDict)
    wake: trio.Event = field(default_factory=trio.Event)
    idle_since: float = -math.inf  # when its wants last ran out (trio clock)
    gone: bool = False  # the peer disconnected: its server task ends


class Bitswap:
    """One node's Bitswap engine. ``await nursery.start(bitswap.run)``."""

    def __init__(
        self,
        network: Network,
        store: BlockStore,
        *,
        config: BitswapConfig | None = None,
        conduct: Conduct | None = None,
    ) -> None:
        self.network = network
        self.store = store
        self.config = config or BitswapConfig()
        self.stats = BitswapStats()
        # shared with the node's other protocols: a peer banned by one is refused by all
        self.conduct = conduct if conduct is not None else Conduct()
        self.conduct.on_ban.append(self._banned)
        self._ledgers: dict[PeerId, _Ledger] = {}
        self._outbound: dict[PeerId, Stream] = {}
        self._send_locks: defaultdict[PeerId, trio.Lock] = defaultdict(trio.Lock)
        self._fetches: set[Fetch] = set()  # the fetches running (in leaves())
        self._made: weakref.WeakSet[Fetch] = weakref.WeakSet()  # ... and those not yet
        self._cancelled: defaultdict[PeerId, OrderedDict[CID, None]] = defaultdict(OrderedDict)
        # recently received from each peer: a second copy of one is a duplicate
        self._received: defaultdict[PeerId, OrderedDict[CID, None]] = defaultdict(OrderedDict)
        # the last late inner node from each peer, and how many blocks of the
        # path below it may still come (see _late)
        self._late_path: dict[PeerId, tuple[bytes, int]] = {}
        self._nursery: trio.Nursery | None = None
        self.banned = self.conduct.bans
        # peers that refused an optimistic open: their streams are negotiated
        self._negotiate_with: set[PeerId] = set()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for proto in msg.PROTOCOLS:
                self.network.set_handler(proto, functools.partial(self._handle_stream, proto))
            self.network.on_disconnect.append(self._forget_peer)
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self.network.on_disconnect.remove(self._forget_peer)

    def _forget_peer(self, peer: PeerId) -> None:
        """``peer``'s last connection closed: what it wanted from us, our stream
        to it and what we remember of its blocks go (a node serves many light
        clients, each once). A peer forgets our wants as it disconnects, so
        no late block of theirs can follow. Bans stay. Fetches that asked the
        peer for blocks drop it now and ask their other providers (they waited
        for the stall timeout, 10 s: the peer forgot their wants)."""
        for fetch in list(self._fetches):
            fetch.drop_peer(peer, "disconnected")
        ledger = self._ledgers.pop(peer, None)
        if ledger is not None:
            ledger.gone = True
            ledger.wants.clear()
            ledger.wake.set()
        self._outbound.pop(peer, None)
        lock = self._send_locks.get(peer)
        if lock is not None and not lock.locked():
            del self._send_locks[peer]
        for remembered in (self._received, self._cancelled, self._late_path):
            remembered.pop(peer, None)
        self._negotiate_with.discard(peer)

    # -- inbound ----------------------------------------------------------

    async def _handle_stream(self, protocol: str, stream: Stream) -> None:
        peer = stream.remote_peer
        if peer in self.banned:
            await stream.reset()
            return
        if peer not in self._outbound and self._nursery is not None:
            # Our replies go on a stream of our own: open it while the peer's
            # first wants are still on their way, not after they arrive; in the
            # protocol the peer just spoke, so without waiting for its answer.
            self._nursery.start_soon(self._open_outbound, peer, protocol)
        reader = FrameReader(stream)
        try:
            while True:
                payload = await reader.read_frame(msg.MAX_MESSAGE)
                if payload is None:
                    break
                await self._on_message(peer, msg.decode(payload))
        except DecodingError as exc:
            if is_offence(exc):  # (not a peer that went away mid-message)
                self.report_bad_peer(peer, f"malformed bitswap message: {exc}")
            await stream.reset()

    async def _on_message(self, peer: PeerId, message: BitswapMessage) -> None:
        if message.wants or message.full:
            self._on_wants(peer, message)
        for block in message.blocks:
            self._on_block(peer, block)
        for cid, presence in message.presences:
            for fetch in list(self._fetches):
                fetch.on_presence(peer, cid, presence)

    def _on_block(self, peer: PeerId, block: Block) -> None:
        claimed = [f for f in self._fetches if f.asked(peer, block.cid)]
        if not claimed:
            # a block on the path a want's path_to asked for (within that want's
            # budget); asked before _late, which would take a block this peer sent
            # once before (an earlier fetch of the same file) for a duplicate
            takers = [f for f in list(self._fetches) if f.take_path_block(peer, block)]
            if takers:
                self._note_received(peer, block)
                return
            if self._late(peer, block):
                self.stats.late_blocks += 1
                return
            self.stats.bad_blocks += 1
            self.report_bad_peer(peer, f"sent a block nobody asked it for ({block.cid})")
            return
        self._note_received(peer, block)
        for fetch in claimed:
            fetch.on_block(peer, block)

    def _late(self, peer: PeerId, block: Block) -> bool:
        """Whether a block no fetch wants now is harmless (a block never asked
        for is an offence): it crossed our cancel on the wire; or two of our
        fetches wanted it from this peer and it answered each want; or it is
        on the path below such a block, which the peer sends when the want
        carried path_to (each a link of the one before, as Fetch checks)."""
        if block.cid in self._cancelled.get(peer, ()) or block.cid in self._received.get(peer, ()):
            if block.cid.codec == DAG_PB:
                self._late_path[peer] = (block.data, msg.MAX_PATH_BLOCKS)
            return True
        tail, budget = self._late_path.get(peer, (b"", 0))
        if budget > 0 and block.cid.to_bytes() in tail:
            self._late_path[peer] = (block.data, budget - 1)
            return True
        return False

    def _note_received(self, peer: PeerId, block: Block) -> None:
        # Every block a fetch took from ``peer``, asked for or on a path: a second
        # copy of one is a duplicate (_late), and the path below a second copy
        # of an inner node is late too (_late_path).
        self.stats.blocks_fetched += 1
        self.stats.bytes_fetched += len(block.data)
        received = self._received[peer]
        received[block.cid] = None
        if len(received) > self.config.max_ledger:
            received.popitem(last=False)

    def _on_wants(self, peer: PeerId, message: BitswapMessage) -> None:
        ledger = self._ledgers.get(peer)
        if ledger is None:
            ledger = self._ledgers[peer] = _Ledger()
            if self._nursery is not None:
                self._nursery.start_soon(self._serve_peer, peer, ledger)
        if message.full:
            ledger.wants.clear()
        for want in message.wants:
            if want.cancel:
                ledger.wants.pop(want.cid, None)
            elif len(ledger.wants) < self.config.max_ledger:
                ledger.wants[want.cid] = want
        ledger.wake.set()

    async def _serve_peer(self, peer: PeerId, ledger: _Ledger) -> None:
        try:
            while not ledger.gone:
                await ledger.wake.wait()
                ledger.wake = trio.Event()
                # The first reply after a pause carries one block, so the first
                # byte is not held back behind a whole batch; then full batches.
                # A fetch in full flow runs out of wants for a moment between
                # two of its batches: no pause, no one-block reply.
                paused = trio.current_time() - ledger.idle_since >= PAUSE
                limit = 1 if paused else self.config.batch_bytes
                while ledger.wants:
                    await self.send(peer, self._next_reply(ledger, limit))
                    limit = self.config.batch_bytes
                ledger.idle_since = trio.current_time()
        except StreamError as exc:
            log.debug("stopped serving %s: %s", peer, exc)
        finally:
            if self._ledgers.get(peer) is ledger:
                del self._ledgers[peer]

    def _next_reply(self, ledger: _Ledger, limit: int) -> BitswapMessage:
        blocks: list[Block] = []
        presences: list[tuple[CID, Presence]] = []
        size = 0
        while ledger.wants and size < limit:
            cid, want = ledger.wants.popitem(last=False)
            if want.want_type == WantType.HAVE:
                if self.store.has(cid):
                    presences.append((cid, Presence.HAVE))
                elif want.send_dont_have:
                    presences.append((cid, Presence.DONT_HAVE))
                continue
            data = self.store.get(cid)  # verified against its CID before it leaves
            if data is None:
                if want.send_dont_have:
                    presences.append((cid, Presence.DONT_HAVE))
                    self.stats.dont_haves_sent += 1
                continue
            path = [Block(cid, data)]
            if want.path_to is not None and cid.codec == DAG_PB:
                # within one batch, so a reply never nears the 4 MiB message bound
                path += self._path_below(data, want.path_to, self.config.batch_bytes - len(data))
            for block in path:
                blocks.append(block)
                size += len(block.data)
                self.stats.blocks_served += 1
                self.stats.bytes_served += len(block.data)
        return BitswapMessage(blocks=tuple(blocks), presences=tuple(presences))

    def _path_below(self, data: bytes, offset: int, max_bytes: int) -> list[Block]:
        """The blocks under a UnixFS node down to the leaf holding byte ``offset``
        of its file, as far as this store has them and ``max_bytes`` allows (a
        want's ``path_to``)."""
        path: list[Block] = []
        while len(path) < msg.MAX_PATH_BLOCKS:
            try:
                found = child_at(data, offset)
            except DecodingError:
                break
            if found is None:
                break  # past the end of the file
            cid, offset = found
            child = self.store.get(cid)  # verified against its CID, as every block we send
            if child is None or len(child) > max_bytes:
                break
            max_bytes -= len(child)
            path.append(Block(cid, child))
            if cid.codec != DAG_PB:
                break
            data = child
        return path

    # -- outbound ---------------------------------------------------------

    async def _open_outbound(self, peer: PeerId, protocol: str) -> None:
        async with self._send_locks[peer]:
            if peer in self._outbound or peer in self.banned:
                return
            try:
                stream = await self._open(peer, [protocol])
            except StreamError as exc:
                log.debug("no bitswap stream to %s yet: %s", peer, exc)
                return  # send() tries again when there is something to send
            if peer in self.banned:
                await stream.reset()
                return
            self._outbound[peer] = stream

    async def _open(self, peer: PeerId, protocols: Sequence[str]) -> Stream:
        """Our stream to ``peer``. Opened optimistically (the first message goes
        with the proposal: a round trip less before a cold fetch's first want)
        unless the peer once refused that; its answer is checked by a watcher."""
        if peer in self._negotiate_with or self._nursery is None:
            return await self.network.open_stream(peer, protocols)
        stream = await self.network.open_stream(peer, protocols, optimistic=True)
        self._nursery.start_soon(self._watch_outbound, peer, stream)
        return stream

    async def _watch_outbound(self, peer: PeerId, stream: Stream) -> None:
        """Read the peer's answer on our optimistic stream, then wait for the
        stream's end (a peer never writes on the stream we opened). A refusal
        moves the peer to negotiated streams and asks again for what was asked."""
        try:
            await stream.read(1)
        except StreamRefused as exc:
            log.info("%s; negotiating with it from now on", exc)
            self._negotiate_with.add(peer)
            if self._outbound.get(peer) is stream:
                del self._outbound[peer]
            await stream.reset()
            wanted = [cid for fetch in list(self._fetches) for cid in fetch.asked_of(peer)]
            if wanted:
                wants = tuple(WantEntry(c, WantType.BLOCK, send_dont_have=True) for c in wanted)
                with contextlib.suppress(StreamError):
                    await self.send(peer, BitswapMessage(wants=wants))
        except StreamError:
            pass  # the stream ended: send() opens another when there is something to send

    async def send(self, peer: PeerId, message: BitswapMessage) -> None:
        """Send on our long-lived stream to ``peer``, reopening it once if it broke."""
        data = msg.encode_frame(message)
        async with self._send_locks[peer]:
            for attempt in (1, 2):
                stream = self._outbound.get(peer)
                if stream is None:
                    stream = await self._open(peer, msg.PROTOCOLS)
                    self._outbound[peer] = stream
                try:
                    await stream.write(data)
                    return
                except StreamError:
                    self._outbound.pop(peer, None)
                    await stream.reset()
                    if attempt == 2:
                        raise

    def forget_wants(self, peer: PeerId, cids: Sequence[CID]) -> None:
        """Remember CIDs we stopped wanting from ``peer``: a late block is no offence."""
        cancelled = self._cancelled[peer]
        for cid in cids:
            cancelled[cid] = None
        while len(cancelled) > self.config.max_ledger:
            cancelled.popitem(last=False)

    def report_bad_peer(self, peer: PeerId, reason: str) -> None:
        """``peer`` sent what no honest peer sends: it is banned."""
        self.conduct.offend(peer, "bitswap", reason, PROVEN)

    def _banned(self, peer: PeerId, reason: str) -> None:
        for fetch in list(self._fetches):
            fetch.drop_peer(peer, reason)
        if self._nursery is not None:
            self._nursery.start_soon(self._disconnect, peer)

    async def _disconnect(self, peer: PeerId) -> None:
        stream = self._outbound.pop(peer, None)
        if stream is not None:
            await stream.reset()
        await self.network.disconnect(peer)

    # -- fetching ---------------------------------------------------------

    def fetch(
        self,
        root: CID,
        providers: Sequence[PeerId],
        *,
        pin_name: str | None = None,
        start: int = 0,
        end: int | None = None,
    ) -> Fetch:
        """A fetch of the DAG under ``root``; iterate ``fetch.leaves()`` to run it.

        With ``start``/``end``, only the bytes in [start, end) are yielded and only
        the blocks covering them are fetched (a range is never pinned)."""
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"bad byte range [{start}, {end})")
        if pin_name is not None and (start or end is not None):
            raise ValueError("a byte range of a file cannot be pinned")
        usable = [p for p in dict.fromkeys(providers) if p not in self.banned]
        fetch = Fetch(self, root, usable, pin_name=pin_name, start=start, end=end)
        self._made.add(fetch)
        return fetch

    def active_roots(self) -> Iterator[CID]:
        """Roots of the fetches made and not ended: a store collection keeps
        what they may read from the store (see store.blockstore.Collection)."""
        return (f.root for f in list(self._made) if not f._ended)


@dataclass
class _Want:
    peer: PeerId
    sent_at: float


class Fetch:
    """One DAG download. Not reusable: ``leaves()`` runs it once."""

    def __init__(
        self,
        bitswap: Bitswap,
        root: CID,
        providers: list[PeerId],
        *,
        pin_name: str | None,
        start: int = 0,
        end: int | None = None,
    ) -> None:
        self.bs = bitswap
        self.root = root
        self.providers = providers
        self.pin_name = pin_name
        self.dropped: dict[PeerId, str] = {}
        self.blocks_from: defaultdict[PeerId, int] = defaultdict(int)
        self.bytes = 0
        self.first_byte_at: float | None = None
        self.start = start
        self.end = end
        self._seq: list[CID] = [root]
        self._off: list[int] = [0]  # file offset of each _seq entry's first byte
        self._pos = 0
        self._arrived: dict[CID, bytes] = {}
        self._buffered = 0  # bytes of the leaves in _arrived
        self._inflight: dict[CID, _Want] = {}
        self._lacks: defaultdict[CID, set[PeerId]] = defaultdict(set)
        self._asked: defaultdict[PeerId, set[CID]] = defaultdict(set)
        self._pending_store: dict[CID, Block] = {}
        self._storing: dict[CID, Block] = {}  # the batch being written
        self._store_lock = trio.Lock()
        self._flushing = False  # a flush started as blocks arrived is running
        self._ended = False
        # path blocks still welcome from each peer we sent a want with path_to, and
        # the last block of that path so far: the next must be one of its links
        self._path_budget: defaultdict[PeerId, int] = defaultdict(int)
        self._path_tail: dict[PeerId, bytes] = {}
        self._wake = trio.Event()
        self._session: str | None = None
        self._error: Exception | None = None
        self.filesize: int | None = None

    # called by Bitswap from the reading task --------------------------------

    def asked(self, peer: PeerId, cid: CID) -> bool:
        return cid in self._asked.get(peer, ())

    def asked_of(self, peer: PeerId) -> list[CID]:
        """What this fetch asked ``peer`` for and has not had yet."""
        return list(self._asked.get(peer, ()))

    def on_block(self, peer: PeerId, block: Block) -> None:
        self._asked[peer].discard(block.cid)
        if block.cid == self.root and self._path_budget.get(peer, 0) > 0:
            self._path_tail[peer] = block.data  # the path below it may follow
        want = self._inflight.pop(block.cid, None)
        if want is None and self._has(block.cid):
            return  # a second copy (two providers answered one want)
        self._keep(peer, block)

    def _holds(self, cid: CID) -> bool:
        """Whether ``cid`` arrived and is not yet consumed or in the store."""
        return cid in self._arrived or cid in self._pending_store or cid in self._storing

    def _has(self, cid: CID) -> bool:
        """Whether ``cid`` is here: held (see _holds), or in the store."""
        return self._holds(cid) or self.bs.store.has(cid)

    def _keep(self, peer: PeerId, block: Block) -> None:
        """A verified block for the walk, and for the store at the next flush."""
        self.blocks_from[peer] += 1
        self._pending_store[block.cid] = block
        # An inner node is decoded by the walk when it needs its children
        # (leaves() at the node, _request_more() looking ahead), not here: the
        # siblings that arrive with the first inner node would otherwise be
        # decoded before the first leaf is even asked for. Inner nodes stay in
        # memory (the walk needs them, and they are small); leaves do while
        # buffer_bytes allows, and the rest are read back from the store.
        if block.cid.codec == DAG_PB:
            self._arrived[block.cid] = block.data
        elif self._buffered + len(block.data) <= self.bs.config.buffer_bytes:
            self._arrived[block.cid] = block.data
            self._buffered += len(block.data)
        self._wake.set()
        nursery = self.bs._nursery
        full = len(self._pending_store) >= self.bs.config.store_batch
        if full and not self._flushing and nursery is not None:
            # stored now, not when the reader next takes a leaf: a reader that
            # lags would otherwise keep every block that arrives in memory
            self._flushing = True
            nursery.start_soon(self._flush_as_they_arrive)

    def take_path_block(self, peer: PeerId, block: Block) -> bool:
        """A block ``peer`` sent on the path a want's path_to asked for: kept like
        any block, if it is a link of the path's last block (so each is vouched
        for by the one above it, back to the root we asked for), up to
        msg.MAX_PATH_BLOCKS per such want. False otherwise: an unasked block."""
        tail = self._path_tail.get(peer)
        if self._path_budget.get(peer, 0) <= 0 or tail is None or block.cid.to_bytes() not in tail:
            return False
        self._path_budget[peer] -= 1
        self._path_tail[peer] = block.data
        if not self._holds(block.cid):
            self._keep(peer, block)
        return True

    def on_presence(self, peer: PeerId, cid: CID, presence: Presence) -> None:
        if presence != Presence.DONT_HAVE or cid not in self._asked.get(peer, ()):
            return
        self._asked[peer].discard(cid)
        self._lacks[cid].add(peer)
        want = self._inflight.get(cid)
        if want is not None and want.peer == peer:
            del self._inflight[cid]
        self._wake.set()

    def drop_peer(self, peer: PeerId, reason: str) -> None:
        if peer not in self.providers:
            return
        self.providers.remove(peer)
        self.dropped[peer] = reason
        lost = [c for c, w in self._inflight.items() if w.peer == peer]
        for cid in lost:
            del self._inflight[cid]
        self.bs.forget_wants(peer, lost)
        self._asked.pop(peer, None)
        self._wake.set()

    # the fetch itself -----------------------------------------------------

    def _expand(self, cid: CID, data: bytes) -> None:
        try:
            node = decode_file_node(data)
        except DecodingError as exc:
            self._error = NotFoundError(f"{cid} is not a UnixFS file node: {exc}")
            return
        if cid == self.root:
            self.filesize = node.filesize
        if len(node.blocksizes) != len(node.links):
            self._error = NotFoundError(f"{cid}: {len(node.links)} links but blocksizes differ")
            return
        i = self._pos
        while i < len(self._seq):
            if self._seq[i] == cid:
                kids, offs = self._children_in_range(node, self._off[i])
                self._seq[i : i + 1] = kids
                self._off[i : i + 1] = offs
                i += len(kids)
            else:
                i += 1

    def _children_in_range(self, node: FileNode, base: int) -> tuple[list[CID], list[int]]:
        kids: list[CID] = []
        offs: list[int] = []
        offset = base + len(node.data)
        for link, size in zip(node.links, node.blocksizes, strict=True):
            if offset + size > self.start and (self.end is None or offset < self.end):
                kids.append(link.cid)
                offs.append(offset)
            offset += size
        return kids, offs

    async def leaves(self) -> AsyncIterator[bytes]:
        """Leaf bytes in file order, each verified; stored as they arrive."""
        self.bs._fetches.add(self)
        # The write session is begun with the first batch of blocks, not here: its
        # synced write would sit on the first-byte path, and a fetch whose blocks
        # are all stored already needs none.
        try:
            while self._pos < len(self._seq):
                if self._error is not None:
                    raise self._error
                cid = self._seq[self._pos]
                data = self._take(cid)
                if data is not None and cid.codec == DAG_PB:
                    self._expand(cid, data)
                    continue
                if data is None:
                    # ask again only for a block nobody is sending, or to top up
                    # the window: a want per arriving block would make every
                    # reply a one-block message
                    if cid not in self._inflight or len(self._inflight) <= self._refill_below():
                        await self._request_more()
                    await self._wait()
                    continue
                offset = self._off[self._pos]
                self._pos += 1
                if cid == self.root:  # a one-block file: a raw root is its own size
                    self.filesize = len(data)
                if self.start > offset or (self.end is not None and offset + len(data) > self.end):
                    lo = max(0, self.start - offset)
                    hi = len(data) if self.end is None else min(len(data), self.end - offset)
                    data = data[lo:hi]
                if self.first_byte_at is None:
                    self.first_byte_at = time.perf_counter()
                self.bytes += len(data)
                await self._flush(self.bs.config.store_batch)
                if data:
                    yield data
                if self._pos < len(self._seq) and len(self._inflight) <= self._refill_below():
                    await self._request_more()
            await self._flush()
            if self.filesize is None:
                self.filesize = self.bytes
            if self.pin_name is not None:
                self.bs.store.pin(
                    self.root, size=self.bytes, name=self.pin_name, session=self._session
                )
                self._session = None
        finally:
            self.bs._fetches.discard(self)
            with trio.CancelScope(shield=True):
                async with self._store_lock:  # a flush still running ends first
                    self._ended = True
                    if self._pending_store:
                        self._flush_quietly()
                    if self._session is not None:
                        self.bs.store.end_session(self._session)
                await self._cancel_all()

    def _take(self, cid: CID) -> bytes | None:
        """The block at the reader's position, if it is here: in memory, on its
        way to the store, or in it (read back, verified, as every stored block)."""
        data = self._arrived.pop(cid, None)
        if data is not None:
            if cid.codec != DAG_PB:
                self._buffered -= len(data)
            return data
        held = self._pending_store.get(cid) or self._storing.get(cid)
        if held is not None:
            return held.data
        return self.bs.store.get(cid)

    def _capacity(self) -> int:
        cfg = self.bs.config
        return min(cfg.window, cfg.per_peer_window * max(1, len(self.providers)))

    def _batch(self) -> int:
        # Wants go a quarter of the window at a time, not one per block: one
        # want message per several blocks, and far fewer scans of the DAG.
        return max(1, self._capacity() // 4)

    def _refill_below(self) -> int:
        # top the window up once a batch of it is free
        return self._capacity() - self._batch()

    async def read_all(self) -> bytes:
        return b"".join([chunk async for chunk in self.leaves()])

    async def _flush(self, at_least: int = 1) -> None:
        # Verify and write in a worker thread: LMDB's copy and fsync release the
        # GIL, so the blocks behind keep arriving meanwhile. One batch at a time
        # (from leaves(), or started as blocks arrive), of ``at_least`` blocks:
        # each commit syncs. Until it is written the batch is in _storing, where
        # leaves() and _request_more() look for it.
        if len(self._pending_store) < at_least:
            return
        async with self._store_lock:
            if len(self._pending_store) < at_least or self._ended:
                return
            self._storing = self._pending_store
            self._pending_store = {}
            try:
                await trio.to_thread.run_sync(self._store, list(self._storing.values()))
            except Exception as exc:  # (the store is full, or failed): leaves() raises it
                if self._error is None:
                    self._error = exc
                self._wake.set()
                raise
            finally:
                self._storing = {}

    async def _flush_as_they_arrive(self) -> None:
        try:
            while not self._ended and len(self._pending_store) >= self.bs.config.store_batch:
                await self._flush(self.bs.config.store_batch)
        except Exception as exc:  # kept in _error: leaves() raises it
            log.debug("storing blocks of %s failed: %s", self.root, exc)
        finally:
            self._flushing = False

    def _store(self, batch: Sequence[Block]) -> None:
        if self._session is None:
            self._session = self.bs.store.begin_session(f"fetch {self.root}")
        self.bs.store.put_many(batch, session=self._session)

    def _flush_quietly(self) -> None:
        try:
            self._store(list(self._pending_store.values()))
            self._pending_store = {}
        except Exception:
            log.debug("could not store the last blocks of %s", self.root, exc_info=True)

    async def _wait(self) -> None:
        with trio.move_on_after(self.bs.config.stall_timeout) as scope:
            await self._wake.wait()
        self._wake = trio.Event()
        if scope.cancelled_caught:
            now = time.monotonic()
            stalled = {
                w.peer
                for w in self._inflight.values()
                if now - w.sent_at >= self.bs.config.stall_timeout
            }
            for peer in stalled:
                self.drop_peer(peer, f"no block in {self.bs.config.stall_timeout} s")

    async def _request_more(self) -> None:
        cfg = self.bs.config
        load: defaultdict[PeerId, int] = defaultdict(int)
        for want in self._inflight.values():
            load[want.peer] += 1
        picks: list[tuple[PeerId, CID]] = []
        budget = cfg.window - len(self._inflight)
        needed = False
        i = self._pos
        while budget > 0 and i < min(len(self._seq), self._pos + cfg.window * 2):
            cid = self._seq[i]
            i += 1
            if cid.codec == DAG_PB and cid in self._arrived:
                # an inner node within the lookahead: its children are what to ask for
                self._expand(cid, self._arrived.pop(cid))
                if self._error is not None:
                    self._wake.set()  # leaves() raises it
                    return
                i -= 1  # (the loop's bound is read again: the sequence grew)
                continue
            if cid in self._inflight or self._has(cid):
                continue  # (a stored block is read by leaves(): no provider needed)
            needed = True
            candidates = [
                p
                for p in self.providers
                if p not in self._lacks.get(cid, ()) and load[p] < cfg.per_peer_window
            ]
            if not candidates:
                if not [p for p in self.providers if p not in self._lacks.get(cid, ())]:
                    raise NotFoundError(self._why_not_found(cid))
                break
            peer = min(candidates, key=lambda p: load[p])
            load[peer] += 1
            budget -= 1
            picks.append((peer, cid))
        if needed and not self.providers:
            raise NotFoundError(self._why_not_found(self._seq[self._pos]))
        if not picks:
            return
        # Wants go in batches. While the blocks ahead are buffered, unconsumed,
        # only a few would fit the lookahead; sent one by one, each would wake
        # the provider for a one-block reply. So hold them back until a batch
        # fits, unless the block leaves() needs is among them or the file ends.
        urgent = picks[0][1] == self._seq[self._pos] or i >= len(self._seq)
        if not urgent and len(picks) < self._batch():
            return
        now = time.monotonic()
        batches: defaultdict[PeerId, list[WantEntry]] = defaultdict(list)
        for peer, cid in picks:
            self._inflight[cid] = _Want(peer, now)
            self._asked[peer].add(cid)
            path_to = None
            if cid == self.root and cid.codec == DAG_PB:
                # the first byte in one round trip: the root and the path below it
                path_to = self.start
                self._path_budget[peer] += msg.MAX_PATH_BLOCKS
            batches[peer].append(
                WantEntry(cid, WantType.BLOCK, send_dont_have=True, path_to=path_to)
            )
        for peer, wants in batches.items():
            try:
                await self.bs.send(peer, BitswapMessage(wants=tuple(wants)))
            except StreamError as exc:
                self.drop_peer(peer, f"unreachable: {exc}")

    def _why_not_found(self, cid: CID) -> str:
        parts = [f"no provider left for {cid} (root {self.root})"]
        parts += [f"{p}: {why}" for p, why in self.dropped.items()]
        lacking = self._lacks.get(cid, set())
        if lacking:
            parts.append(f"{len(lacking)} said they do not have it")
        return "; ".join(parts)

    async def _cancel_all(self) -> None:
        pending: defaultdict[PeerId, list[WantEntry]] = defaultdict(list)
        for cid, want in self._inflight.items():
            pending[want.peer].append(WantEntry(cid, cancel=True, send_dont_have=False))
        self._inflight.clear()
        for peer, wants in pending.items():
            self.bs.forget_wants(peer, [w.cid for w in wants])
        for peer, wants in pending.items():
            with trio.move_on_after(2), contextlib.suppress(StreamError):
                await self.bs.send(peer, BitswapMessage(wants=tuple(wants)))
