"""A libp2p host on TCP + Noise + Yamux, behind a small trio-friendly API.

This package is the only one that imports libp2p. Everything it hands out is
ours: peer IDs are strings (``PeerId``), addresses are multiaddr strings, and
streams satisfy :class:`p2p.abc.Stream` with libp2p's exceptions turned into
:class:`p2p.abc.StreamError`.

Choices (measured, see ../shared/LIBP2P-NOTES.md and docs/decisions.md):
- only Noise is offered: py-libp2p's default list also offers plaintext and
  secio, which would let a peer downgrade the connection;
- only Yamux: Mplex is 5x slower;
- ``max_connections_per_peer=1``: otherwise every dial waits a 250 ms
  happy-eyeballs timer.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import coincurve
import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INotifee
from libp2p.crypto.secp256k1 import Secp256k1PublicKey, create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.io.trio import TrioTCPStream
from libp2p.io.utils import read_exactly
from libp2p.network.config import ConnectionConfig
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.network.stream.net_stream import NetStream as NetStream  # (tests patch its write)
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.protocol_muxer.exceptions import (
    MultiselectClientError,
    MultiselectCommunicatorError,
    MultiselectError,
    ProtocolNotSupportedError,
)
from libp2p.protocol_muxer.multiselect import Multiselect
from libp2p.protocol_muxer.multiselect_client import (
    MULTISELECT_PROTOCOL_ID,
    PROTOCOL_NOT_FOUND_MSG,
    is_valid_handshake,
)
from libp2p.protocol_muxer.multiselect_client import (
    MultiselectClient as MultiselectClient,  # (tests use the stock client)
)
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH as NOISE_MAX_PLAINTEXT
from libp2p.security.noise.io import BaseNoiseMsgReadWriter
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux import yamux as _yamux
from libp2p.stream_muxer.yamux.yamux import YamuxStream
from libp2p.utils import encode_delim

from p2p.abc import Stream, StreamError, StreamHandler, StreamRefused, TaskStatus
from p2p.keys import NodeKey, PeerId, eth_address_of

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/0"


class AddressError(ValueError):
    """A multiaddr that cannot be parsed or dialled."""


class DialError(Exception):
    """A peer could not be reached."""


@dataclass(frozen=True)
class HostConfig:
    """How a host listens and whom it dials at start."""

    listen: Sequence[str] = (DEFAULT_LISTEN,)
    bootstrap: Sequence[str] = ()
    dial_timeout: float = 10.0
    max_connections: int = 300
    # py-libp2p's pruner closes connections above high_watermark, down to
    # low_watermark. Its auto-connector (which would dial every peer in the
    # peerstore up to the mid-point of the two: 158 by default, everyone
    # dialing everyone in a swarm of hundreds) is switched off: a node chooses
    # whom it connects to (bootstrap peers, staked members for its gossip
    # degree, owners, providers; see node.Node.keep_degree).
    min_connections: int = 8
    low_watermark: int = 16
    # Identify on every new connection (both sides ask; see node.Client): a node
    # learns a peer's listen addresses from it, which it hands out to others. A
    # light client hands out nobody's and skips asking (it still answers).
    identify: bool = True
    # A peer that dialed us is asked to Identify this long after it connected,
    # not at once: its first requests (a cold fetch's first wants) are then not
    # queued behind the exchange (5-8 ms of a cold first byte, bench.transfer),
    # and a client that leaves sooner is never asked. Peers we dial are asked at once.
    identify_inbound_after: float = 0.25
    extra: dict[str, Any] = field(default_factory=dict)


async def dial_each(
    connect: Callable[[str], Awaitable[PeerId]], addrs: Sequence[str]
) -> list[PeerId]:
    """Dial each of ``addrs`` in turn; the peers reached (a failure is logged, not
    raised). A host's bootstrap, real or in-memory."""
    reached = []
    for addr in addrs:
        try:
            reached.append(await connect(addr))
        except DialError as exc:
            log.warning("bootstrap peer %s unreachable: %s", addr, exc)
    return reached


# Set by Host.open_stream(optimistic=True) for the negotiation it runs (a context
# variable: it follows that one call, whatever else runs concurrently): the
# negotiation leaves its proposal here, unsent, for the stream's first write.
_optimistic: contextvars.ContextVar[list[bytes] | None] = contextvars.ContextVar(
    "coliving_optimistic_select", default=None
)


def _never(*_: object) -> bool:
    return False


async def _no_auto_dial() -> None:
    """Stands in for py-libp2p's AutoConnector.maybe_connect (see HostConfig)."""


_yamux_window_update = YamuxStream._auto_tune_and_send_window_update
SMALL_READ = 16 * 1024  # a read this small does not trigger a window update by itself


async def _window_update_when_due(self: Any, *, bytes_read: int = 0) -> None:
    """Yamux flow control as go-yamux does it: a receiver tells the sender about
    bytes it consumed once they reach half its window, not after every read.

    py-libp2p 0.8.1 sends a WINDOW_UPDATE frame after every read that consumed
    anything: for small messages on a long-lived stream (every gossipsub RPC)
    that is a second frame each way, encrypted and decoded (14% of the CPU a
    node spends on gossip, bench.gossip). Reads below the threshold only count
    the bytes; py-libp2p's own logic (growth, auto-tuning) runs when due. Bulk
    reads (SMALL_READ or more: Bitswap blocks, uploads) go to py-libp2p's logic
    at once, and so does every later read of a stream that has had one (a
    Bitswap stream's small reads must not hold back its window: -20% get
    throughput when they did); that logic runs with release-on-read off (below).
    """
    if bytes_read >= SMALL_READ:
        self._coliving_bulk = True
    elif bytes_read > 0 and not getattr(self, "_coliving_bulk", False):
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        threshold = self._grow_threshold()
        delta = self.target_recv_window - (self.recv_window + buffered)
        # no await between this check and the update: trio cannot interleave
        if delta < threshold and self._pending_recv_release + bytes_read < threshold:
            self._pending_recv_release += bytes_read
            return
    await _yamux_window_update(self, bytes_read=bytes_read)


YamuxStream._auto_tune_and_send_window_update = _window_update_when_due  # type: ignore[method-assign]

# py-libp2p's "release on read" (on by default) sends a WINDOW_UPDATE after each
# read of a bulk stream, which is about every 64 KiB: each is an encryption and a
# send(), and on these machines a loopback send() that wakes the peer costs
# 0.3-0.6 ms. Off, its window logic is go-yamux's: an update once half the
# (auto-tuned, up to 16 MiB) window is consumed. Measured (bench.transfer, 128
# MiB, 3 rounds each): CPU per MiB of the raw receiver 7.7 -> 5.5 ms, of a
# Bitswap fetcher 12.7 -> 11.2 ms and its provider 8.1 -> 6.2 ms.
_yamux._yamux_release_on_read = _never

# py-libp2p reads its PY_YAMUX_* tuning variables from the environment on every
# read and every data frame (os.getenv, 4-5% of a Bitswap fetcher's samples in
# py-spy). They are read once per process here: set them before it starts.
_yamux._py_yamux_env = functools.cache(_yamux._py_yamux_env)
_yamux._py_yamux_env_set = functools.cache(_yamux._py_yamux_env_set)

_tcp_read = TrioTCPStream.read
TCP_READ_SLICE = 256 * 1024


async def _buffered_tcp_read(self: Any, n: int | None = None) -> bytes:
    """TrioTCPStream.read served from one large receive.

    Noise reads a message as a 2-byte length, then its body, and py-libp2p asks
    the socket for exactly those sizes: three or more recv() calls, each a trip
    through trio's I/O wait, for every 64 KiB message. Here one recv() takes
    whatever has arrived, up to TCP_READ_SLICE, and the exact-size reads are cut
    from it (each slice is the one copy the caller gets anyway). Only the Noise
    reader reads a connection, so there is one reader per buffer.
    """
    if n == 0:
        return b""
    buf: bytes = getattr(self, "_coliving_buf", b"")
    pos: int = getattr(self, "_coliving_pos", 0)
    if pos >= len(buf):
        buf = await _tcp_read(self, max(n or 0, TCP_READ_SLICE))
        pos = 0
        if not buf:
            return buf
    end = len(buf) if n is None else min(len(buf), pos + n)
    if end < len(buf):
        self._coliving_buf, self._coliving_pos = buf, end
        return buf[pos:end]
    self._coliving_buf, self._coliving_pos = b"", 0  # an idle connection keeps no buffer
    return buf if pos == 0 else buf[pos:]


TrioTCPStream.read = _buffered_tcp_read  # type: ignore[method-assign]


# Yamux writes: py-libp2p 0.8.1's YamuxStream.write (1) polls a zero send window
# every 10 ms: a stream's first message larger than its 256 KiB initial window
# (a Bitswap reply with a leaf, on a new connection) stood still for up to 10 ms
# after the peer's WINDOW_UPDATE had arrived (14 ms of a cold first byte in a
# trace); and (2) hands each frame to Noise and the socket on its own: a 271 KB
# reply was five send() calls, each waking the reader's process for one frame.
# This write waits on an event (send_window is a property that wakes the writer
# when it grows) and sends all the frames the window allows, up to WRITE_BATCH,
# in one call; Noise then seals them and sends them in one send() (below).
WINDOW_WAIT = 5.0  # as py-libp2p: a window shut this long fails the write
WRITE_BATCH = 1 << 20
_FRAME_PAYLOAD = NOISE_MAX_PLAINTEXT - _yamux.HEADER_SIZE
_DATA_HEADER = _yamux.YAMUX_HEADER_FORMAT  # version, type, flags, stream id, length


def _get_send_window(self: Any) -> int:
    return int(self._coliving_send_window)


def _set_send_window(self: Any, value: int) -> None:
    opened = value > getattr(self, "_coliving_send_window", value)
    self._coliving_send_window = value
    waiter = getattr(self, "_coliving_window_waiter", None)
    if opened and waiter is not None:
        waiter.set()


YamuxStream.send_window = property(_get_send_window, _set_send_window)  # type: ignore[assignment]


async def _window_opens(self: Any) -> None:
    """Until the send window is open (or the stream closed); MuxedStreamError after
    WINDOW_WAIT seconds of a shut window."""
    give_up = trio.current_time() + WINDOW_WAIT
    while self.send_window <= 0 and not (self.closed or self.send_closed):
        if trio.current_time() >= give_up:
            raise MuxedStreamError(f"no window update in {WINDOW_WAIT} s")
        self._coliving_window_waiter = trio.Event()
        with trio.move_on_after(0.05):  # a reset or a close opens no window: look again
            await self._coliving_window_waiter.wait()


async def _yamux_write(self: Any, data: bytes) -> None:
    sent = 0
    while sent < len(data):
        await _window_opens(self)
        async with self.rw_lock.write_lock():
            if self.send_closed:
                raise MuxedStreamError("Stream is closed for sending")
            async with self.window_lock:
                if self.closed:
                    raise MuxedStreamError("Stream is closed")
                take = min(self.send_window, len(data) - sent, WRITE_BATCH)
                if take <= 0:
                    continue  # another writer on this stream took the window first
                self.send_window -= take
        parts: list[bytes] = []
        end = sent + take
        while sent < end:
            size = min(_FRAME_PAYLOAD, end - sent)
            parts.append(struct.pack(_DATA_HEADER, 0, _yamux.TYPE_DATA, 0, self.stream_id, size))
            parts.append(data[sent : sent + size])
            sent += size
        await self.conn._write_frame(b"".join(parts))


YamuxStream.write = _yamux_write  # type: ignore[method-assign]

# A stream a peer opens to us gets a 1 MiB receive window at once, not Yamux's
# 256 KiB: a reply that opens a stream (a Bitswap provider's first, 271 KB with
# a leaf) no longer waits for our first window update, which is sent only after
# we have negotiated the stream's protocol, started its handler and read half
# the window. A peer can leave at most this much unread per stream.
INBOUND_WINDOW = 1 << 20
_yamux_accept = _yamux.Yamux.accept_stream


async def _accept_with_window(self: Any) -> Any:
    stream: Any = await _yamux_accept(self)
    grant = INBOUND_WINDOW - stream.recv_window
    if grant > 0 and not stream.closed:
        stream.recv_window += grant
        stream.target_recv_window = max(stream.target_recv_window, INBOUND_WINDOW)
        await stream.send_window_update(grant)
    return stream


_yamux.Yamux.accept_stream = _accept_with_window  # type: ignore[method-assign]

_noise_write_msg = BaseNoiseMsgReadWriter.write_msg


async def _noise_write_sealed_at_once(self: Any, msg: bytes, prefix_encoded: bool = False) -> None:
    """Noise's write of a message longer than one Noise message: each part sealed
    as before, all sent with one write instead of one per part."""
    if prefix_encoded or len(msg) <= NOISE_MAX_PLAINTEXT:
        await _noise_write_msg(self, msg, prefix_encoded)
        return
    packets = [
        self.read_writer.encode_msg(self.encrypt(msg[i : i + NOISE_MAX_PLAINTEXT]))
        for i in range(0, len(msg), NOISE_MAX_PLAINTEXT)
    ]
    await self.read_writer.read_write_closer.write(b"".join(packets))


BaseNoiseMsgReadWriter.write_msg = _noise_write_sealed_at_once  # type: ignore[method-assign]


# py-libp2p 0.8.1 keeps the task that accepted an inbound connection until the
# swarm stops ("keep handler alive", since trio closes the socket when the
# handler returns), and that task holds one of the swarm's inbound slots
# (max_connections - min_connections: 292 here). So a node refused every
# inbound connection once it had accepted that many in its life, all of them
# long gone, and kept each one's task and objects meanwhile. Here the task
# ends when its connection has closed: it finds the connection its upgrade
# registered (through a context variable, as the upgrade is called in the
# task itself), waits for it to close, then cancels py-libp2p's wait.
class _Upgraded:
    __slots__ = ("conn", "done")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.conn: Any = None  # the muxed connection the upgrade returned


_INBOUND: contextvars.ContextVar[_Upgraded | None] = contextvars.ContextVar(
    "coliving_inbound", default=None
)
_upgrade_inbound = Swarm.upgrade_inbound_raw_conn
_handle_inbound = Swarm._do_handle_inbound_connection


async def _upgrade_inbound_noted(self: Any, raw_conn: Any, maddr: Any) -> Any:
    muxed = await _upgrade_inbound(self, raw_conn, maddr)
    upgraded = _INBOUND.get()
    if upgraded is not None and not upgraded.done.is_set():
        upgraded.conn = muxed
        upgraded.done.set()
    return muxed


async def _until_closed(swarm: Any, upgraded: _Upgraded, scope: trio.CancelScope) -> None:
    await upgraded.done.wait()
    for conn in swarm.get_connections():
        if conn.muxed_conn is upgraded.conn:
            await conn.event_closed.wait()
            break
    # closed (or never registered: closed already, or refused): end py-libp2p's wait
    scope.cancel()


async def _handle_inbound_until_closed(
    self: Any, read_write_closer: Any, maddr: Any, failure_event: Any
) -> None:
    upgraded = _Upgraded()
    token = _INBOUND.set(upgraded)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_closed, self, upgraded, nursery.cancel_scope)
            await _handle_inbound(self, read_write_closer, maddr, failure_event)
            nursery.cancel_scope.cancel()  # it returned: the upgrade failed or was refused
    finally:
        _INBOUND.reset(token)


Swarm.upgrade_inbound_raw_conn = _upgrade_inbound_noted  # type: ignore[method-assign]
Swarm._do_handle_inbound_connection = _handle_inbound_until_closed  # type: ignore[method-assign]

# py-libp2p 0.8.1's SwarmConn.close() marks the connection closed first, then
# awaits the muxer's close, which sends GO_AWAY and closes the socket. When a
# node stops, the task serving a connection closes it on its way out, being
# cancelled: the await is cancelled before the socket closes, and every later
# close() (the swarm's own, at its close) returns at once, seeing the mark. The
# peer then kept a connection to the stopped node until its liveness probe
# (30 s), and the socket leaked until garbage collection: in-process nodes (the
# simnet, tests) only, as a process that exits closes its sockets. So the close
# runs shielded, bounded in time; past the bound, the socket is closed without
# the GO_AWAY.
CONN_CLOSE_TIMEOUT = 2.0
_swarm_conn_close = SwarmConn.close


async def _swarm_conn_close_whole(self: Any) -> None:
    with trio.CancelScope(shield=True):
        with trio.move_on_after(CONN_CLOSE_TIMEOUT):
            await _swarm_conn_close(self)
            return
        with trio.move_on_after(CONN_CLOSE_TIMEOUT), contextlib.suppress(Exception):
            await self.muxed_conn.secured_conn.close()


SwarmConn.close = _swarm_conn_close_whole  # type: ignore[method-assign]

# A Yamux data frame (12-byte header + payload) that fits one Noise transport
# message. py-libp2p's 64 KiB frames are 16 bytes too big for Noise's 65519-byte
# plaintext, so each went out as two Noise messages (65519 + 17 bytes): twice
# the encryptions, length reads and sends, and a receiver that joined the two.
_yamux.MAX_MESSAGE_SIZE = NOISE_MAX_PLAINTEXT


def parse_addr(text: str) -> multiaddr.Multiaddr:
    try:
        return multiaddr.Multiaddr(text)
    except Exception as exc:  # multiaddr raises several unrelated types
        raise AddressError(f"bad multiaddr {text!r}: {exc}") from None


def peer_of_addr(text: str) -> PeerId:
    """The peer ID in a ``/.../p2p/<id>`` address."""
    try:
        return PeerId(info_from_p2p_addr(parse_addr(text)).peer_id.to_base58())
    except AddressError:
        raise
    except Exception as exc:
        raise AddressError(f"{text!r} has no /p2p/<peer id> part: {exc}") from None


def eth_address_of_peer(peer: PeerId) -> str | None:
    """The Ethereum address of a secp256k1 peer ID (None for other key types)."""
    try:
        key = ID.from_base58(peer).extract_public_key()
    except Exception:
        return None
    if not isinstance(key, Secp256k1PublicKey):
        return None
    return eth_address_of(coincurve.PublicKey(key.to_bytes()))


def peer_id_of_key(key: NodeKey) -> PeerId:
    pair = create_new_key_pair(key.secret)
    return PeerId(ID.from_pubkey(pair.public_key).to_base58())


# Cached: the replicator converts every staked member at every repair round, and
# base58 costs ~45 us a peer (0.45 s a round per node at 10,000 members); the
# connection checks parse the same few hundred IDs over and over (9% of a
# simnet worker's CPU at 200 nodes before this cache).
@functools.lru_cache(maxsize=1 << 16)
def _libp2p_id(peer: PeerId) -> ID:
    return ID.from_base58(peer)


def peer_id_bytes(peer: PeerId) -> bytes:
    return _libp2p_id(peer).to_bytes()


@functools.lru_cache(maxsize=1 << 16)
def peer_id_from_bytes(raw: bytes) -> PeerId:
    return PeerId(ID(raw).to_base58())


MULTISTREAM_READ = 4096  # one read for a listener's answer (and whatever follows it)
MULTISTREAM_LINE = 1024  # longest multistream line accepted (a protocol name and "\n")


def _multistream_line(buf: bytes) -> tuple[str, bytes] | None:
    """The first multistream message of ``buf`` (its text, without the newline)
    and the bytes after it; None while it is incomplete."""
    length = shift = 0
    for i, byte in enumerate(buf[:2]):
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise ValueError("multistream line length not minimally encoded")
            start = i + 1
            break
        shift += 7
    else:
        if len(buf) >= 2:
            raise ValueError("multistream line length over two bytes")
        return None
    if length > MULTISTREAM_LINE:
        raise ValueError(f"multistream line of {length} bytes")
    end = start + length
    if len(buf) < end:
        return None
    line = buf[start:end]
    if not line.endswith(b"\n"):
        raise ValueError("multistream line without its newline")
    return line[:-1].decode(), buf[end:]


_py_negotiate = Multiselect.negotiate


async def _negotiate_from_one_read(
    self: Any, communicator: Any, negotiate_timeout: int = 30
) -> tuple[Any, Any]:
    """multistream-select, listener side, for a stream: a pipelined proposal
    (the header and a protocol in one frame, as go, js and this host send)
    is read at once and answered in one write.

    py-libp2p's listener writes its header, then reads the dialer's header
    and protocol in four reads, then writes the answer. Here the first byte
    is read, the rest of the two lines is looked up in the stream's Yamux
    buffer, and exactly those bytes are taken: what follows stays for the
    protocol's handler. Anything else (a dialer that waits for our header, a
    proposal split over frames, "na" and a second try, "ls") goes on as
    py-libp2p's listener does, with our header sent first.
    """
    rw = communicator.read_writer
    muxed = getattr(rw, "muxed_stream", None)
    buffers = getattr(getattr(muxed, "conn", None), "stream_buffers", None)
    if muxed is None or not isinstance(buffers, dict):
        return cast(tuple[Any, Any], await _py_negotiate(self, communicator, negotiate_timeout))
    try:
        with trio.fail_after(negotiate_timeout):
            first = await rw.read(1)
            seen = first + bytes(buffers.get(muxed.stream_id, b"")[:MULTISTREAM_READ])
            header = _multistream_line(seen)
            proposal = None if header is None else _multistream_line(header[1])
            if header is None or proposal is None or not is_valid_handshake(header[0]):
                # not a whole pipelined proposal: py-libp2p's way, after the first byte
                return await _negotiate_rest(self, communicator, first)
            command, after = proposal
            await read_exactly(rw, len(seen) - len(after) - 1)  # the two lines only
            answer, selected = _answer(self, command)
            await rw.write(
                encode_delim(MULTISELECT_PROTOCOL_ID.encode()) + encode_delim(answer.encode())
            )
            if selected:
                return TProtocol(command), self.handlers[command]
            return await _commands(self, communicator)
    except trio.TooSlowError:
        raise MultiselectError("handshake read timeout") from None
    except MultiselectError:
        raise
    except Exception as exc:
        if isinstance(exc, trio.Cancelled):
            raise
        raise MultiselectError(f"negotiation failed: {exc}") from exc


async def _negotiate_rest(self: Any, communicator: Any, first: bytes) -> tuple[Any, Any]:
    """The listener's way once the header's first byte is read: finish reading
    the dialer's header, send ours, then answer commands."""
    rw = communicator.read_writer
    if first[0] & 0x80:
        raise MultiselectError("multistream header length over one byte")
    handshake = (await read_exactly(rw, first[0]))[:-1].decode()
    if not is_valid_handshake(handshake):
        raise MultiselectError(f"multiselect protocol ID mismatch: {handshake!r}")
    await rw.write(encode_delim(MULTISELECT_PROTOCOL_ID.encode()))
    return await _commands(self, communicator)


def _answer(self: Any, command: str) -> tuple[str, bool]:
    """The listener's answer to a command, and whether it selects a protocol
    (whose handler py-libp2p allows to be None)."""
    if command == "ls":
        return "\n".join(p for p in self.handlers if p is not None) + "\n", False
    if command and command in self.handlers:
        return command, True
    return PROTOCOL_NOT_FOUND_MSG, False


async def _commands(self: Any, communicator: Any) -> tuple[Any, Any]:
    """Answer "ls" and proposals until one names a protocol we speak."""
    while True:
        command = await communicator.read()
        answer, selected = _answer(self, command)
        await communicator.write(answer)
        if selected:
            return TProtocol(command), self.handlers[command]


Multiselect.negotiate = _negotiate_from_one_read  # type: ignore[method-assign]


class _NetStream:
    """Adapts a libp2p INetStream to p2p.abc.Stream."""

    __slots__ = ("_peer", "_prefix", "_proposal", "_stream", "_unconfirmed")

    def __init__(
        self, stream: Any, *, unconfirmed: str | None = None, proposal: bytes = b""
    ) -> None:
        self._stream = stream
        self._peer = PeerId(stream.muxed_conn.peer_id.to_base58())
        # an optimistic open: the listener's answer to this protocol is still unread
        self._unconfirmed = unconfirmed
        # ... and the proposal itself is still unsent: it goes with the first write
        self._proposal = proposal
        self._prefix = b""  # read with the answer, not yet returned

    @property
    def remote_peer(self) -> PeerId:
        return self._peer

    async def _confirm(self, protocol: str) -> None:
        """Read the listener's answer to an optimistic open: its header, then the
        protocol echoed back, or "na" (the peer refused it: StreamError).

        Both usually come in one frame: they are cut from whatever one read
        returns (py-libp2p's reader takes four: a length, a line, a length, a
        line), and what follows them is kept for the stream's next read."""
        self._unconfirmed = None
        buf = b""
        answers: list[str] = []
        try:
            while len(answers) < 2:
                taken = _multistream_line(buf)
                if taken is None:
                    chunk = await self._stream.read(MULTISTREAM_READ)
                    if not chunk:
                        raise EOFError("the stream ended")
                    buf += chunk
                    continue
                answers.append(taken[0])
                buf = taken[1]
        except Exception as exc:
            if isinstance(exc, trio.Cancelled):
                raise
            raise StreamError(f"{self._peer} never answered {protocol}: {exc}") from None
        self._prefix = buf
        if not is_valid_handshake(answers[0]) or answers[1] != protocol:
            raise StreamRefused(f"{self._peer} refused {protocol} (answered {answers[1]!r})")

    async def read(self, max_bytes: int) -> bytes:
        if self._proposal:
            await self.write(b"")  # a read before any write: propose first
        if self._unconfirmed is not None:
            await self._confirm(self._unconfirmed)
        if self._prefix:
            out, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return out
        try:
            return bytes(await self._stream.read(max_bytes))
        except EOFError:
            return b""
        except Exception as exc:
            if isinstance(exc, trio.Cancelled):
                raise
            raise StreamError(f"read from {self._peer}: {type(exc).__name__} {exc}") from None

    async def write(self, data: bytes) -> None:
        if self._proposal:
            data, self._proposal = self._proposal + data, b""
        try:
            await self._stream.write(data)
        except Exception as exc:
            raise StreamError(f"write to {self._peer}: {type(exc).__name__} {exc}") from None

    async def close_write(self) -> None:
        if self._proposal:
            await self.write(b"")
        try:
            await self._stream.close_write()
        except Exception as exc:
            raise StreamError(f"close_write to {self._peer}: {exc}") from None

    async def close(self) -> None:
        try:
            await self._stream.close()
        except Exception:
            log.debug("close of a stream to %s failed", self._peer, exc_info=True)

    async def reset(self) -> None:
        try:
            await self._stream.reset()
        except Exception:
            log.debug("reset of a stream to %s failed", self._peer, exc_info=True)


class _AnswerReader:
    __slots__ = ("read",)

    def __init__(self, read: Callable[..., Awaitable[bytes]]) -> None:
        self.read = read


def _answer_on_first_read(conn: Any, protocol: str) -> None:
    """Make ``conn``'s first read take the listener's answer to ``protocol``
    (its header, then the protocol echoed back) before what follows it.

    A connection's reader is one task at a time (the Noise handshake, then
    Yamux's loop), so an instance attribute standing in for the class's read,
    removed on first use, sees every read.
    """
    read = conn.read

    async def first_read(n: int | None = None) -> bytes:
        del conn.read  # the class's read from now on
        communicator = MultiselectCommunicator(cast(Any, _AnswerReader(read)))
        try:
            handshake = await communicator.read()
            answer = await communicator.read()
        except MultiselectCommunicatorError as exc:
            raise MultiselectClientError(f"no answer to {protocol}: {exc}") from exc
        if not is_valid_handshake(handshake) or answer != protocol:
            raise MultiselectClientError(f"the peer refused {protocol} (answered {answer!r})")
        return bytes(await read(n))

    conn.read = first_read


class _PipelinedMultiselectClient(MultiselectClient):
    """multistream-select that sends the header and the first protocol at once.

    py-libp2p's client waits for the header's echo before it names a protocol:
    two round trips for every stream it opens. go-libp2p and js-libp2p send
    both together and read both answers (the listener answers each in order),
    which saves one round trip per stream; on "na" the remaining protocols are
    tried one by one as before.

    ``lazy``, for a new connection's security and muxer (each has one choice
    here: Noise, Yamux): propose it and go on at once, the Noise handshake or
    Yamux's first frames following the proposal; the answer is read, and
    checked, by the connection's next read (_answer_on_first_read). Half a
    round trip fewer for each on every dial.
    """

    def __init__(self, *, lazy: bool = False) -> None:
        super().__init__()
        self.lazy = lazy

    async def select_one_of(
        self,
        protocols: Sequence[TProtocol],
        communicator: Any,
        negotiate_timeout: int = 30,
    ) -> TProtocol:
        if not protocols or not isinstance(communicator, MultiselectCommunicator):
            return await super().select_one_of(protocols, communicator, negotiate_timeout)
        first = protocols[0]
        proposal = encode_delim(MULTISELECT_PROTOCOL_ID.encode()) + encode_delim(first.encode())
        if self.lazy and len(protocols) == 1:
            try:
                await communicator.read_writer.write(proposal)
            except Exception as exc:
                raise MultiselectClientError(f"handshake write failed: {exc}") from exc
            _answer_on_first_read(communicator.read_writer, first)
            return first
        unsent = _optimistic.get()
        if unsent is not None and isinstance(communicator.read_writer, NetStream):
            # (a stream's protocol, not a connection's security or muxer that a
            # dial within the same open_stream negotiates)
            # sent by the stream's first write, its answer read by the first read
            unsent.append(proposal)
            return first
        with trio.move_on_after(negotiate_timeout):
            try:
                await communicator.read_writer.write(proposal)
            except Exception as exc:
                raise MultiselectClientError(f"handshake write failed: {exc}") from exc
            try:
                handshake = await communicator.read()
                if not is_valid_handshake(handshake):
                    raise MultiselectClientError(f"multiselect handshake: got {handshake!r}")
                response = await communicator.read()
            except MultiselectCommunicatorError as exc:
                raise MultiselectClientError(f"negotiation read failed: {exc}") from exc
            if response == first:
                return first
            if response != PROTOCOL_NOT_FOUND_MSG:
                raise MultiselectClientError(f"unexpected answer {response!r} to {first!r}")
            for protocol in protocols[1:]:
                try:
                    return await self.try_select(communicator, protocol)
                except ProtocolNotSupportedError:
                    continue
            raise MultiselectClientError(f"none of {list(protocols)} is supported")
        raise MultiselectClientError(f"negotiation timed out after {negotiate_timeout} s")


class _Departures(INotifee):
    """Tells ``host.on_disconnect`` of a peer whose last connection closed (a
    connection replaced by another is no departure); closes a new connection
    from a peer ``host.refuse`` names."""

    def __init__(self, host: Host) -> None:
        self.host = host

    async def disconnected(self, network: Any, conn: Any) -> None:
        peer = PeerId(conn.muxed_conn.peer_id.to_base58())
        if not self.host.is_connected(peer):  # (the swarm forgot conn before this)
            for callback in list(self.host.on_disconnect):
                callback(peer)

    async def opened_stream(self, network: Any, stream: Any) -> None:
        pass

    async def closed_stream(self, network: Any, stream: Any) -> None:
        pass

    async def connected(self, network: Any, conn: Any) -> None:
        peer = PeerId(conn.muxed_conn.peer_id.to_base58())
        if self.host.refuse(peer):
            log.info("closing a connection from %s: refused", peer)
            await conn.close()

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        pass


class Host:
    """One libp2p host. ``await nursery.start(host.run)`` to listen."""

    def __init__(self, key: NodeKey, config: HostConfig | None = None) -> None:
        self.key = key
        self.config = config or HostConfig()
        self._listen = [parse_addr(a) for a in self.config.listen]
        self._bootstrap = list(self.config.bootstrap)
        for addr in self._bootstrap:
            peer_of_addr(addr)  # fail early on a bad bootstrap address
        pair = create_new_key_pair(key.secret)
        noise = NoiseTransport(pair, noise_privkey=create_x25519_key_pair().private_key)
        self._host: Any = new_host(
            key_pair=pair,
            sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
            # Yamux alone (py-libp2p adds mplex, deprecated by the libp2p specs): a
            # dial proposes it without waiting for the answer (_PipelinedMultiselectClient)
            muxer_opt={TProtocol(_yamux.PROTOCOL_ID): _yamux.Yamux},
            listen_addrs=self._listen,
            connection_config=ConnectionConfig(
                max_connections_per_peer=1,
                max_connections=self.config.max_connections,
                min_connections=self.config.min_connections,
                low_watermark=self.config.low_watermark,
                dial_timeout=self.config.dial_timeout,
            ),
        )
        swarm: Any = self._host.get_network()
        swarm.auto_connector.maybe_connect = _no_auto_dial
        if self.config.identify_inbound_after > 0:
            self._delay_inbound_identify(self.config.identify_inbound_after)
        self._identify_ended: dict[Any, trio.Event] = {}
        self._note_identify_ends()
        if not self.config.identify:
            # BasicHost asks this before each outbound Identify
            cast(Any, self._host)._should_identify_peer = _never
        # a documented attribute of BasicHost: the client new_stream negotiates with
        cast(Any, self._host).multiselect_client = _PipelinedMultiselectClient()
        # and the dialer's choice of security and muxer on a new connection: two
        # round trips fewer on every dial
        upgrader = swarm.upgrader
        for chooser in (upgrader.security_multistream, upgrader.muxer_multistream):
            chooser._selector.multiselect_client = _PipelinedMultiselectClient(lazy=True)
        self.peer_id = PeerId(self._host.get_id().to_base58())
        self.ready = trio.Event()
        # called with a peer whose last connection closed: per-peer state can go
        self.on_disconnect: list[Callable[[PeerId], None]] = []
        # whether to close a peer's new connection at once (a banned peer's)
        self.refuse: Callable[[PeerId], bool] = _never
        swarm.register_notifee(_Departures(self))

    def _delay_inbound_identify(self, seconds: float) -> None:
        # BasicHost runs each Identify through this method
        host: Any = self._host
        host._identify_task_entry = self.later_if_inbound(seconds, host._identify_task_entry)

    def _note_identify_ends(self) -> None:
        host: Any = self._host
        identify = host._identify_task_entry

        async def noted(peer_id: Any, *args: Any) -> None:
            try:
                await identify(peer_id, *args)
            finally:
                ended = self._identify_ended.pop(peer_id, None)
                if ended is not None:
                    ended.set()

        host._identify_task_entry = noted

    async def identified_protocols(self, peer_id: Any, *, wait: float) -> set[str] | None:
        """The protocols a peer (a libp2p ID) listed in Identify, waiting up to
        ``wait`` s for a running or coming Identify; None if none succeeded.

        A peer identified on an earlier connection is not asked again
        (py-libp2p keeps its protocols): its answer then is the one used."""
        host: Any = self._host
        if not host._has_cached_protocols(peer_id) and self.config.identify:
            ended = self._identify_ended.setdefault(peer_id, trio.Event())
            with trio.move_on_after(wait):
                await ended.wait()
            if self._identify_ended.get(peer_id) is ended:
                del self._identify_ended[peer_id]  # (no Identify came)
        if not host._has_cached_protocols(peer_id):
            return None
        try:
            return {str(p) for p in host.get_peerstore().get_protocols(peer_id)}
        except Exception:
            return None

    def dialed_us(self, peer_id: Any) -> bool:
        """Whether our connection to ``peer_id`` (a libp2p ID) is one it dialed."""
        connections = self._host.get_network().get_connections(peer_id)
        muxed = getattr(connections[0], "muxed_conn", None) if connections else None
        return getattr(muxed, "is_initiator_value", True) is False

    def later_if_inbound(
        self, seconds: float, work: Callable[..., Awaitable[None]]
    ) -> Callable[..., Awaitable[None]]:
        """``work(peer_id, ...)`` (a libp2p peer ID first), started ``seconds`` late
        when that peer dialed us: what a new connection asks of a peer (Identify)
        then does not stand before its first requests, and a client that leaves
        sooner is spared it. Peers we dial get it at once."""

        async def later(peer_id: Any, *args: Any) -> None:
            if self.dialed_us(peer_id):
                await trio.sleep(seconds)
            await work(peer_id, *args)

        return later

    @property
    def libp2p_host(self) -> Any:
        """For p2p.gossip only: the rest of the code never sees libp2p types."""
        return self._host

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self._host.run(self._listen):
            try:
                self.ready.set()
                task_status.started()
                await trio.sleep_forever()
            finally:
                # py-libp2p's run() stops the swarm's tasks but leaves listeners and
                # connections open: peers would see a dead node as connected, and
                # its port would keep accepting. Close them, shielded from the
                # cancellation that brought us here.
                # Listeners first: a peer that notices us going and re-dials must
                # not get a half-made connection that nobody on this side owns.
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    network: Any = self._host.get_network()
                    for listener in list(getattr(network, "listeners", {}).values()):
                        try:
                            await listener.close()
                        except Exception as exc:
                            log.debug("closing a listener: %s", exc)
                    try:
                        await network.close()
                    except Exception as exc:
                        log.debug("closing the swarm: %s", exc)

    async def dial_bootstrap(self) -> list[PeerId]:
        """Dial every bootstrap peer; an unreachable one is logged, not fatal."""
        return await dial_each(self.connect, self._bootstrap)

    def addrs(self) -> list[str]:
        """Listen addresses with the /p2p/ suffix, ready to hand to another peer."""
        return [str(a) for a in self._host.get_addrs()]

    async def connect(self, addr: str) -> PeerId:
        info = info_from_p2p_addr(parse_addr(addr)) if "/p2p/" in addr else None
        if info is None:
            raise AddressError(f"{addr!r} has no /p2p/<peer id> part")
        try:
            with trio.fail_after(self.config.dial_timeout):
                await self._host.connect(info)
        except trio.TooSlowError:
            raise DialError(f"dial {addr}: timed out after {self.config.dial_timeout} s") from None
        except Exception as exc:
            raise DialError(f"dial {addr}: {type(exc).__name__} {exc}") from None
        return PeerId(info.peer_id.to_base58())

    def add_addrs(self, peer: PeerId, addrs: Sequence[str]) -> None:
        store = self._host.get_peerstore()
        store.add_addrs(_libp2p_id(peer), [parse_addr(a) for a in addrs], 3600)

    async def disconnect(self, peer: PeerId) -> None:
        try:
            await self._host.disconnect(_libp2p_id(peer))
        except Exception:
            log.debug("disconnect %s failed", peer, exc_info=True)

    def connected_peers(self) -> list[PeerId]:
        return [PeerId(p.to_base58()) for p in self._host.get_network().connections]

    def is_connected(self, peer: PeerId) -> bool:
        return _libp2p_id(peer) in self._host.get_network().connections

    def peer_addrs(self, peer: PeerId) -> list[str]:
        try:
            return [str(a) for a in self._host.get_peerstore().addrs(_libp2p_id(peer))]
        except Exception:
            return []

    async def open_stream(
        self, peer: PeerId, protocols: Sequence[str], *, optimistic: bool = False
    ) -> Stream:
        """A new stream to ``peer`` speaking the first of ``protocols`` it accepts.

        ``optimistic``: propose only the first protocol and return at once, as
        go-libp2p's lazy negotiation does; what is written next travels with the
        proposal, which saves a round trip on a new stream. The listener's
        answer is checked by the stream's first read, so a refusal shows up
        there as StreamError. Use it when the peer is known to speak the protocol.
        """
        unsent: list[bytes] | None = [] if optimistic else None
        token = _optimistic.set(unsent)
        try:
            raw = await self._host.new_stream(_libp2p_id(peer), [TProtocol(p) for p in protocols])
        except Exception as exc:
            if isinstance(exc, trio.Cancelled):
                raise
            raise StreamError(f"open {protocols} to {peer}: {type(exc).__name__} {exc}") from None
        finally:
            _optimistic.reset(token)
        if not unsent:  # not optimistic, or the negotiation was not ours
            return _NetStream(raw)
        return _NetStream(raw, unconfirmed=str(raw.get_protocol()), proposal=b"".join(unsent))

    def set_handler(self, protocol: str, handler: StreamHandler) -> None:
        async def adapter(raw: Any) -> None:
            stream = _NetStream(raw)
            try:
                await handler(stream)
            except StreamError as exc:
                log.debug("%s stream from %s ended: %s", protocol, stream.remote_peer, exc)
                await stream.reset()

        self._host.set_stream_handler(TProtocol(protocol), adapter)

    def remove_handler(self, protocol: str) -> None:
        """Stop speaking ``protocol``: new streams proposing it are answered "na"."""
        self._host.remove_stream_handler(TProtocol(protocol))
