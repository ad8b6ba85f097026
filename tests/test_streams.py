"""Real hosts over 127.0.0.1: optimistic protocol selection, and Bitswap's path_to."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

import p2p.host
from node import Client, Node
from p2p.abc import Stream, StreamRefused
from p2p.host import INBOUND_WINDOW, DialError, Host, HostConfig, peer_id_of_key
from p2p.keys import NodeKey, PeerId
from protocols import bitswap_msg as msg
from protocols.bitswap import BitswapConfig, Fetch
from protocols.bitswap_msg import BitswapMessage
from protocols.cid import CID, DAG_PB, RAW
from protocols.unixfs import Block, FileImporter, decode_file_node
from simnet.local import start_nodes
from store.blockstore import BlockStore, StoreError
from tests.conftest import chunks

ECHO = "/coliving/test/echo/1.0.0"
WAIT = 20


async def echo(stream: Stream) -> None:
    while data := await stream.read(1 << 16):
        await stream.write(data)
    await stream.close()


class LateReader:
    """A handler that reads ``size`` bytes only once ``release`` is set, then
    answers b"k" (the writer's proof that everything arrived)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.release = trio.Event()
        self.received: list[bytes] = []

    async def handle(self, stream: Stream) -> None:
        await self.release.wait()
        data = b""
        while len(data) < self.size:
            data += await stream.read(1 << 20)
        self.received.append(data)
        await stream.write(b"k")


@asynccontextmanager
async def two_hosts() -> AsyncIterator[tuple[Host, Host, PeerId]]:
    async with trio.open_nursery() as nursery:
        a = Host(NodeKey.generate(), HostConfig(listen=("/ip4/127.0.0.1/tcp/0",)))
        b = Host(NodeKey.generate(), HostConfig(listen=("/ip4/127.0.0.1/tcp/0",)))
        await nursery.start(a.run)
        await nursery.start(b.run)
        b.set_handler(ECHO, echo)
        with trio.fail_after(WAIT):
            peer = await a.connect(b.addrs()[0])
        yield a, b, peer
        nursery.cancel_scope.cancel()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, bytes]]:
    """Every write of every libp2p stream from now on, with the stream written to."""
    noted: list[tuple[Any, bytes]] = []
    libp2p_stream: Any = p2p.host.NetStream  # what a host's streams write through
    write = libp2p_stream.write

    async def noting(self: Any, data: bytes) -> None:
        noted.append((self, bytes(data)))
        await write(self, data)

    monkeypatch.setattr(libp2p_stream, "write", noting)
    return noted


async def test_optimistic_open_carries_the_first_write_and_checks_the_answer(
    writes: list[tuple[Any, bytes]],
) -> None:
    async with two_hosts() as (a, _, peer):
        with trio.fail_after(WAIT):
            stream = await a.open_stream(peer, [ECHO], optimistic=True)
            ours = [w for s, w in writes if s is cast(Any, stream)._stream]
            assert ours == []  # the proposal waits for the first write
            await stream.write(b"hello")  # sent with the proposal, before any answer
            got = b""
            while len(got) < 5:
                got += await stream.read(5 - len(got))
        assert got == b"hello"
        # one write: the multistream header, the protocol, then the data
        ours = [w for s, w in writes if s is cast(Any, stream)._stream]
        assert len(ours) == 1 and ours[0].endswith(ECHO.encode() + b"\nhello")
        assert ours[0].startswith(b"\x13/multistream/1.0.0\n")


async def test_optimistic_open_of_a_protocol_the_peer_lacks_is_refused_on_read() -> None:
    async with two_hosts() as (a, _, peer):
        with trio.fail_after(WAIT):
            stream = await a.open_stream(peer, ["/coliving/test/absent/1.0.0"], optimistic=True)
            await stream.write(b"hello")
            with pytest.raises(StreamRefused):
                await stream.read(5)
            # the connection is fine: a negotiated stream still works
            again = await a.open_stream(peer, [ECHO])
            await again.write(b"x")
            assert await again.read(1) == b"x"


async def test_fetch_from_a_node_without_bitswap_1_2_falls_back_to_negotiation(
    tmp_path: Path,
) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB: four leaves under a root
    async with trio.open_nursery() as nursery:
        (alice,) = await start_nodes(nursery, tmp_path, 1, names=["alice"])
        root = await alice.add(chunks(payload), name="old-bitswap")
        assert isinstance(alice.host, Host)
        alice.host.remove_handler(msg.PROTOCOL_120)  # it speaks 1.1.0 and 1.0.0 only
        client = Client()
        await nursery.start(client.run)
        with trio.fail_after(WAIT):
            peer = await client.connect(alice.host.addrs()[0])
            # the optimistic 1.2.0 stream is refused; the wants go again, negotiated
            got = await client.bitswap.fetch(root, [peer]).read_all()
        assert got == payload
        assert peer in client.bitswap._negotiate_with
        nursery.cancel_scope.cancel()


async def test_a_write_beyond_the_send_window_waits_for_the_update_not_a_poll() -> None:
    # 1 MiB on a new stream: four times Yamux's initial window, so the writer
    # must wait for the reader's window updates (py-libp2p would poll each 10 ms)
    payload = os.urandom(1 << 20)
    late = LateReader(len(payload))  # reads once the writer has used up its window

    async with two_hosts() as (a, b, peer):
        b.set_handler("/coliving/test/sink/1.0.0", late.handle)
        with trio.fail_after(WAIT):
            stream = await a.open_stream(peer, ["/coliving/test/sink/1.0.0"])
            muxed = cast(Any, stream)._stream.muxed_stream
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.write, payload)
                await trio.testing.wait_all_tasks_blocked()
                # the writer has used up its window and waits on an event for more
                assert muxed.send_window <= 0
                assert not muxed._coliving_window_waiter.is_set()
                late.release.set()
            assert await stream.read(1) == b"k"
        assert late.received == [payload]
        assert muxed._zero_window_waits == 0  # py-libp2p's polling wait never ran


async def test_a_stream_opened_to_us_gets_its_whole_window_at_once() -> None:
    # what a peer may send before we read anything: INBOUND_WINDOW, not Yamux's
    # 256 KiB (less the negotiation's few bytes, which count against it too)
    payload = os.urandom(INBOUND_WINDOW - 4096)
    late = LateReader(len(payload))

    async with two_hosts() as (a, b, peer):
        b.set_handler("/coliving/test/late-reader/1.0.0", late.handle)
        with trio.fail_after(WAIT):
            stream = await a.open_stream(peer, ["/coliving/test/late-reader/1.0.0"])
            await stream.write(payload)  # done while the reader has read nothing
            late.release.set()
            assert await stream.read(1) == b"k"
        assert late.received == [payload]


# -- Bitswap's path_to: the first byte (or a seek) in one round trip -------------

DEEP = bytes(i % 251 for i in range(64 * 1024))  # 64 leaves of 1 KiB, 4 links a node


def deep_dag() -> tuple[CID, list[Block]]:
    """A four-level DAG (root, two levels of inner nodes, leaves) of DEEP."""
    importer = FileImporter(chunk_size=1024, max_links=4)
    blocks = importer.feed(DEEP)
    root, last = importer.finish()
    return root, blocks + last


def root_path() -> tuple[CID, list[Block]]:
    """deep_dag's root and the path from it to the first leaf."""
    root, blocks = deep_dag()
    by_cid = {b.cid: b for b in blocks}
    path = [by_cid[root]]
    while path[-1].cid.codec == DAG_PB:
        path.append(by_cid[decode_file_node(path[-1].data).links[0].cid])
    return root, path


async def deep_dag_at_alice(nursery: trio.Nursery, tmp_path: Path) -> tuple[Node, Client, CID]:
    """A node, alice, holding deep_dag pinned, and a running client."""
    root, blocks = deep_dag()
    (alice,) = await start_nodes(nursery, tmp_path, 1, names=["alice"])
    alice.store.put_many(blocks)
    alice.store.pin(root, size=len(DEEP), name="deep")
    client = Client()
    await nursery.start(client.run)
    return alice, client, root


@pytest.mark.parametrize("start", [0, 40_000])
async def test_first_byte_from_any_offset_takes_one_want_message(
    tmp_path: Path, start: int
) -> None:
    async with trio.open_nursery() as nursery:
        alice, client, root = await deep_dag_at_alice(nursery, tmp_path)
        sent: list[BitswapMessage] = []
        send = client.bitswap.send

        async def counting(peer: PeerId, message: BitswapMessage) -> None:
            sent.append(message)
            await send(peer, message)

        client.bitswap.send = counting  # type: ignore[method-assign]
        peer = await client.connect(alice.host.addrs()[0])
        # twice: the second time the path's blocks are ones alice sent before
        # (they were taken for duplicates, and the fetch walked level by level)
        for _ in range(2):
            sent.clear()
            with trio.fail_after(WAIT):
                fetch = client.bitswap.fetch(root, [peer], start=start)
                leaves = cast(AsyncGenerator[bytes, None], fetch.leaves())
                first = await leaves.__anext__()
                wanted = [m for m in sent if m.wants]
                await leaves.aclose()
            client.store.gc()  # (the fetch pinned nothing)
            leaf_end = (start // 1024 + 1) * 1024
            assert first == DEEP[start:leaf_end]
            # root, two inner nodes and the leaf came back for one want (the root's)
            assert len(wanted) == 1 and [w.cid for w in wanted[0].wants] == [root]
            assert wanted[0].wants[0].path_to == start
        assert alice.bitswap.stats.blocks_served == 8
        nursery.cancel_scope.cancel()


async def test_path_blocks_must_descend_from_the_root_within_the_budget(
    tmp_path: Path,
) -> None:
    root, blocks = deep_dag()
    by_cid = {b.cid: b for b in blocks}
    path = [by_cid[root]]  # root, its first child, that child's first child, a leaf
    while path[-1].cid.codec == DAG_PB:
        path.append(by_cid[decode_file_node(path[-1].data).links[0].cid])
    assert len(path) == 4
    client = Client(data_dir=tmp_path / "client")
    peer = PeerId("12D3KooWPathBudgetTestPeer")
    fetch = client.bitswap.fetch(root, [peer])
    assert not fetch.take_path_block(peer, path[1])  # no path was asked of it
    fetch._path_budget[peer] = 2  # as after a want of the root whose budget is two
    assert not fetch.take_path_block(peer, path[1])  # the root has not come yet
    fetch.on_block(peer, path[0])
    other = by_cid[decode_file_node(path[0].data).links[1].cid]
    assert not fetch.take_path_block(peer, path[2])  # not a link of the root
    assert fetch.take_path_block(peer, path[1])
    assert not fetch.take_path_block(peer, other)  # a link of the root, not of path[1]
    assert fetch.take_path_block(peer, path[2])
    assert not fetch.take_path_block(peer, path[3])  # on the path, but over the budget


async def test_a_path_answered_twice_is_a_duplicate_not_an_offence(tmp_path: Path) -> None:
    """Two fetches of one root (a repair and a replicate request, say) both want
    it, with its path, from one peer before the first answer comes; the peer
    answers each want with the root and the same path. The second path is a
    duplicate: the peer is not banned (it was, and every fetch from it failed)."""
    root, path = root_path()
    client = Client(data_dir=tmp_path / "client")
    bitswap = client.bitswap
    provider = PeerId("12D3KooWTwoFetchesOneRootPeer")
    sent: list[BitswapMessage] = []

    async def record(peer: PeerId, message: BitswapMessage) -> None:
        sent.append(message)

    bitswap.send = record  # type: ignore[method-assign]
    fetches = [bitswap.fetch(root, [provider]) for _ in range(2)]
    for fetch in fetches:
        bitswap._fetches.add(fetch)
        await fetch._request_more()
    assert [[(w.cid, w.path_to) for w in m.wants] for m in sent] == [[(root, 0)]] * 2
    for _ in sent:  # the peer answers each want
        await bitswap._on_message(provider, BitswapMessage(blocks=tuple(path)))
    assert provider not in bitswap.banned and bitswap.stats.bad_blocks == 0
    assert bitswap.stats.late_blocks == len(path)
    for fetch in fetches:
        assert fetch.blocks_from[provider] == len(path)


async def test_a_path_that_comes_after_its_fetch_ended_is_late_not_an_offence(
    tmp_path: Path,
) -> None:
    """A fetch ends (a player seeks again, a reader goes away) before the answer
    to its root's want, with the path below it, comes: the root crossed our
    cancel, and so did the path; the provider is not banned (it was: every
    block of the path counted as unasked) and nothing is stored."""
    root, path = root_path()
    client = Client(data_dir=tmp_path / "client")
    bitswap = client.bitswap
    provider = PeerId("12D3KooWFetchEndedPathPeer")
    sent: list[BitswapMessage] = []
    asked = trio.Event()

    async def record(peer: PeerId, message: BitswapMessage) -> None:
        sent.append(message)
        asked.set()

    async def read(fetch: Fetch) -> None:
        async for _ in fetch.leaves():
            pass

    bitswap.send = record  # type: ignore[method-assign]
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, bitswap.fetch(root, [provider]))
            await asked.wait()
            nursery.cancel_scope.cancel()  # the reader goes away
    assert [[(w.cid, w.cancel) for w in m.wants] for m in sent] == [
        [(root, False)],
        [(root, True)],
    ]
    await bitswap._on_message(provider, BitswapMessage(blocks=tuple(path)))
    assert provider not in bitswap.banned and bitswap.stats.bad_blocks == 0
    assert bitswap.stats.late_blocks == len(path)
    assert not any(client.store.has(b.cid) for b in path)
    # below the path, or beyond its budget, a block is unasked as before
    other = next(b for b in deep_dag()[1] if b not in path)
    await bitswap._on_message(provider, BitswapMessage(blocks=(other,)))
    assert provider in bitswap.banned


async def test_the_path_a_provider_sends_stops_within_its_byte_budget(tmp_path: Path) -> None:
    root, blocks = deep_dag()
    by_cid = {b.cid: b for b in blocks}
    async with trio.open_nursery() as nursery:
        (alice,) = await start_nodes(nursery, tmp_path, 1, names=["alice"])
        alice.store.put_many(blocks)
        whole = alice.bitswap._path_below(by_cid[root].data, 40_000, 1 << 20)
        assert [b.cid.codec for b in whole] == [DAG_PB, DAG_PB, RAW]  # down to the leaf
        first = len(whole[0].data)
        cut = alice.bitswap._path_below(by_cid[root].data, 40_000, first + 1)
        assert cut == whole[:1]  # the next block would not fit
        nursery.cancel_scope.cancel()


# -- wants go in batches, even while the consumer lags ---------------------------

LONG = bytes(i % 253 for i in range(256 * 1024))  # 256 leaves of 1 KiB


async def holder_and_client(
    nursery: trio.Nursery, tmp_path: Path, data: bytes, importer: FileImporter
) -> tuple[Node, Client, CID]:
    """A node holding ``data`` (as ``importer`` cuts it), and a running client
    whose fetches keep 16 wants in flight and top them up by 4."""
    blocks = importer.feed(data)
    root, last = importer.finish()
    (alice,) = await start_nodes(nursery, tmp_path, 1, names=["alice"])
    alice.store.put_many(blocks + last)
    client = Client()
    client.bitswap.config = BitswapConfig(window=16, per_peer_window=16)
    await nursery.start(client.run)
    return alice, client, root


class Arrivals:
    """Notes each message a client's Bitswap handles, so a test can lag its reader."""

    def __init__(self, client: Client) -> None:
        self._on_message = client.bitswap._on_message
        self._arrived = trio.Event()
        client.bitswap._on_message = self._noting  # type: ignore[method-assign]

    async def _noting(self, peer: PeerId, message: BitswapMessage) -> None:
        await self._on_message(peer, message)
        self._arrived.set()

    async def read_lagging(
        self, fetch: Fetch, after_each: Callable[[], Awaitable[None]] | None = None
    ) -> bytes:
        """Read ``fetch``, taking the next leaf only once every block asked for
        is here (and ``after_each`` returned): the lookahead is always full."""
        got = bytearray()
        async for leaf in fetch.leaves():
            got += leaf
            while fetch._inflight:
                await self._arrived.wait()
                self._arrived = trio.Event()
            if after_each is not None:
                await after_each()
        return bytes(got)


async def test_a_lagging_consumer_still_gets_its_wants_sent_in_batches(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        alice, client, root = await holder_and_client(
            nursery, tmp_path, LONG, FileImporter(chunk_size=1024)
        )
        sent: list[BitswapMessage] = []
        send = client.bitswap.send

        async def counting(peer: PeerId, message: BitswapMessage) -> None:
            sent.append(message)
            await send(peer, message)

        client.bitswap.send = counting  # type: ignore[method-assign]
        arrivals = Arrivals(client)
        with trio.fail_after(WAIT):
            peer = await client.connect(alice.host.addrs()[0])
            got = await arrivals.read_lagging(client.bitswap.fetch(root, [peer]))
        assert got == LONG
        wants = [len(m.wants) for m in sent if m.wants]
        # a quarter of the window (4) a message; one by one it would be ~220
        assert len(wants) <= 256 // 4 + 4, wants
        nursery.cancel_scope.cancel()


def leaf_bytes_in_memory(fetch: Fetch) -> int:
    """Bytes of the leaves a fetch holds: unread, or waiting to be stored."""
    held = {c: len(d) for c, d in fetch._arrived.items()}
    for blocks in (fetch._pending_store, fetch._storing):
        held.update({c: len(b.data) for c, b in blocks.items()})
    return sum(n for c, n in held.items() if c.codec == RAW)


async def test_a_reader_that_lags_keeps_only_its_buffer_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushed = trio.Event()
    flush = Fetch._flush_as_they_arrive

    async def noting(self: Fetch) -> None:
        await flush(self)
        flushed.set()

    monkeypatch.setattr(Fetch, "_flush_as_they_arrive", noting)
    async with trio.open_nursery() as nursery:
        alice, client, root = await holder_and_client(
            nursery, tmp_path, LONG, FileImporter(chunk_size=1024)
        )
        # 4 leaves in memory ahead of the reader; the lookahead is 32
        config = BitswapConfig(window=16, per_peer_window=16, store_batch=4, buffer_bytes=4096)
        client.bitswap.config = config
        held: list[int] = []

        async def stored() -> None:  # every batch begun is written
            nonlocal flushed
            while fetch._flushing:
                await flushed.wait()
                flushed = trio.Event()
            held.append(leaf_bytes_in_memory(fetch))

        with trio.fail_after(WAIT):
            peer = await client.connect(alice.host.addrs()[0])
            fetch = client.bitswap.fetch(root, [peer])
            got = await Arrivals(client).read_lagging(fetch, stored)
        assert got == LONG  # most leaves were read back from the store
        # the buffer, and less than a store batch waiting for the next flush
        assert max(held) <= config.buffer_bytes + (config.store_batch - 1) * 1024, held
        assert max(held) >= config.buffer_bytes  # (the reader did lag)
        nursery.cancel_scope.cancel()


async def test_a_store_that_fills_up_fails_the_fetch_not_the_peer(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        alice, client, root = await holder_and_client(
            nursery, tmp_path, LONG, FileImporter(chunk_size=1024)
        )
        good = client.bitswap.store
        full = BlockStore.open(tmp_path / "small", map_size=64 * 1024)  # real LMDB, a small map
        client.bitswap.store = full
        with trio.fail_after(WAIT):
            peer = await client.connect(alice.host.addrs()[0])
            with pytest.raises(StoreError, match="cannot write blocks"):
                await client.bitswap.fetch(root, [peer]).read_all()
            # the failed write (in a flush begun as blocks arrived) ended that
            # fetch only: the client's Bitswap still runs, and fetches again
            client.bitswap.store = good
            assert await client.bitswap.fetch(root, [peer]).read_all() == LONG
        full.close()
        nursery.cancel_scope.cancel()


# -- a dial proposes Noise and Yamux without waiting for the answers -------------

PROPOSAL_HEADER = b"\x13/multistream/1.0.0\n"
PROPOSAL = PROPOSAL_HEADER + b"\x07/noise\n"


async def test_a_dial_sends_the_noise_handshake_with_its_proposal_and_a_refusal_fails_it() -> None:
    heard = bytearray()

    async def refusing_peer(stream: trio.SocketStream) -> None:
        # only an answer would let a waiting dialer go on: read the handshake's
        # first message (2-byte length, 32-byte key) before giving any
        while len(heard) < len(PROPOSAL) + 34:
            heard.extend(await stream.receive_some(1024))
        await stream.send_all(b"\x13/multistream/1.0.0\n\x03na\n")
        await stream.receive_some(1024)

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, refusing_peer, listeners)
        port = listeners[0].socket.getsockname()[1]
        a = Host(NodeKey.generate(), HostConfig(listen=("/ip4/127.0.0.1/tcp/0",)))
        await nursery.start(a.run)
        addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id_of_key(NodeKey.generate())}"
        with trio.fail_after(WAIT), pytest.raises(DialError):
            await a.connect(addr)
        assert heard.startswith(PROPOSAL) and heard[len(PROPOSAL) :][:2] == b"\x00\x20"
        nursery.cancel_scope.cancel()


# -- the listener's side of multistream-select ----------------------------------


async def test_the_listener_answers_a_pipelined_proposal_in_one_write(
    writes: list[tuple[Any, bytes]],
) -> None:
    async with two_hosts() as (a, _, peer):
        writes.clear()  # (the connection's own, Identify's)
        with trio.fail_after(WAIT):
            stream = await a.open_stream(peer, [ECHO], optimistic=True)
            await stream.write(b"hello")  # with the proposal: it must reach the handler
            assert await stream.read(5) == b"hello"
        ours = cast(Any, stream)._stream
        sid = ours.muxed_stream.stream_id
        theirs = [w for s, w in writes if s is not ours and s.muxed_stream.stream_id == sid]
        # the header and the answer together, then the echo
        assert theirs == [PROPOSAL_HEADER + b"\x1a" + ECHO.encode() + b"\n", b"hello"]


async def test_the_listener_answers_a_dialer_that_waits_for_its_header() -> None:
    async with two_hosts() as (a, _, peer):
        # py-libp2p's own client: the header, then (once echoed) the protocol
        a.libp2p_host.multiselect_client = p2p.host.MultiselectClient()
        with trio.fail_after(WAIT):
            stream = await a.open_stream(peer, [ECHO])
            await stream.write(b"hello")
            assert await stream.read(5) == b"hello"


async def test_the_listener_refuses_an_unknown_protocol_then_takes_the_next() -> None:
    async with two_hosts() as (a, _, peer):
        with trio.fail_after(WAIT):
            stream = await a.open_stream(peer, ["/coliving/test/none/1.0.0", ECHO])
            await stream.write(b"hello")
            assert await stream.read(5) == b"hello"


async def test_a_fetch_in_full_flow_gets_full_replies_not_one_block_ones(tmp_path: Path) -> None:
    data = os.urandom(64 * 256 * 1024)  # 64 leaves of 256 KiB
    async with trio.open_nursery() as nursery:
        alice, client, root = await holder_and_client(nursery, tmp_path, data, FileImporter())
        replies: list[int] = []
        on_message = client.bitswap._on_message

        async def noting(peer: PeerId, message: BitswapMessage) -> None:
            if message.blocks:
                replies.append(len(message.blocks))
            await on_message(peer, message)

        client.bitswap._on_message = noting  # type: ignore[method-assign]
        with trio.fail_after(WAIT):
            peer = await client.connect(alice.host.addrs()[0])
            got = await client.bitswap.fetch(root, [peer]).read_all()
        assert got == data
        # the provider's one-block first reply is for a fetch that starts, not
        # for every batch of wants (one each, about 15, when it was)
        assert replies.count(1) <= 3, replies
        nursery.cancel_scope.cancel()


async def test_the_listener_lists_its_protocols_for_a_pipelined_ls() -> None:
    async with two_hosts() as (a, _, peer):
        with trio.fail_after(WAIT):
            network: Any = a.libp2p_host.get_network()
            raw = await network.new_stream(p2p.host._libp2p_id(peer))  # not negotiated
            await raw.write(PROPOSAL_HEADER + b"\x03ls\n")
            got = b""
            while ECHO.encode() not in got:
                got += await raw.read(4096)
        assert got.startswith(PROPOSAL_HEADER)  # then the list, as one message


async def test_a_node_forgets_a_client_that_went_away(tmp_path: Path) -> None:
    """A node serves many light clients, each once: when a client's connection
    closes, what Bitswap kept for it (its ledger and the task serving it, our
    stream to it, its send lock) goes. Before, all of it stayed for good."""
    async with trio.open_nursery() as nursery:
        alice, client, root = await deep_dag_at_alice(nursery, tmp_path)
        gone = trio.Event()
        alice.host.on_disconnect.append(lambda peer: gone.set())
        with trio.fail_after(WAIT):
            peer = await client.connect(alice.host.addrs()[0])
            fetch = client.bitswap.fetch(root, [peer])
            assert await fetch.read_all() == DEEP
            me = client.host.peer_id
            ledger = alice.bitswap._ledgers[me]
            assert me in alice.bitswap._outbound and me in alice.bitswap._send_locks
            await client.host.disconnect(peer)
            await gone.wait()
        assert ledger.gone and me not in alice.bitswap._ledgers
        assert me not in alice.bitswap._outbound and me not in alice.bitswap._send_locks
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def echoed_through(node: Host) -> AsyncIterator[tuple[Host, PeerId]]:
    """A new client host, running, that has had "hi" echoed by ``node``; it
    stops when the block ends."""
    client = Host(NodeKey.generate(), HostConfig(listen=("/ip4/127.0.0.1/tcp/0",)))
    async with trio.open_nursery() as inner:
        await inner.start(client.run)
        peer = await client.connect(node.addrs()[0])
        stream = await client.open_stream(peer, [ECHO])
        await stream.write(b"hi")
        assert await stream.read(2) == b"hi"
        yield client, peer
        inner.cancel_scope.cancel()


async def test_a_host_takes_more_connections_in_its_life_than_it_has_inbound_slots() -> None:
    """py-libp2p kept the task that accepted a connection, and with it one of
    the swarm's inbound slots, until the host stopped: a node that had taken
    max_connections - min_connections connections (292), all gone, refused
    every new one. Here the node has 2 slots and 6 clients come and go."""
    async with trio.open_nursery() as nursery:
        node = Host(NodeKey.generate(), HostConfig(listen=("/ip4/127.0.0.1/tcp/0",)))
        await nursery.start(node.run)
        node.set_handler(ECHO, echo)
        slots = node._host.get_network()._inbound_limiter  # py-libp2p's, as it counts them
        slots.total_tokens = 2
        gone = trio.Event()
        node.on_disconnect.append(lambda peer: gone.set())
        for _ in range(6):
            with trio.fail_after(WAIT):
                async with echoed_through(node) as (client, peer):
                    await client.disconnect(peer)
                    await gone.wait()
                    gone = trio.Event()
            await trio.testing.wait_all_tasks_blocked()  # the accepting task has ended
            assert slots.borrowed_tokens == 0
        nursery.cancel_scope.cancel()


async def test_a_host_that_stops_closes_its_connections() -> None:
    """A host stopping (its task cancelled, in this process) closes its
    sockets, so its peers see it go at once. py-libp2p marked a connection
    closed, then had its close cancelled before the socket closed, and the
    swarm's own close found it marked: the peer kept it open until its
    liveness probe (30 s)."""
    async with trio.open_nursery() as nursery:
        node = Host(NodeKey.generate(), HostConfig(listen=("/ip4/127.0.0.1/tcp/0",)))
        await nursery.start(node.run)
        node.set_handler(ECHO, echo)
        gone = trio.Event()
        node.on_disconnect.append(lambda peer: gone.set())
        for _ in range(3):
            with trio.fail_after(WAIT):
                async with echoed_through(node):
                    pass  # the client stops, its connection and stream open
                await gone.wait()
            gone = trio.Event()
            assert node.connected_peers() == []
        nursery.cancel_scope.cancel()


async def test_a_fetch_moves_to_its_other_providers_when_one_disconnects(
    tmp_path: Path,
) -> None:
    """A provider's connection closes mid-fetch: the fetch drops it at once and
    asks the other provider for what it had asked of it (it waited for the
    stall timeout, 10 s, since the provider forgot those wants)."""
    root, blocks = deep_dag()
    async with trio.open_nursery() as nursery:
        alice, bob = await start_nodes(nursery, tmp_path, 2, names=["alice", "bob"])
        for node in (alice, bob):
            node.store.put_many(blocks)
            node.store.pin(root, size=len(DEEP), name="deep")
        client = Client()
        await nursery.start(client.run)
        gone = trio.Event()
        client.host.on_disconnect.append(lambda peer: gone.set())
        with trio.fail_after(WAIT):
            providers = [await client.connect(n.host.addrs()[0]) for n in (alice, bob)]
            fetch = client.bitswap.fetch(root, providers)
            leaves = cast(AsyncGenerator[bytes, None], fetch.leaves())
            got = [await leaves.__anext__()]
            await client.host.disconnect(providers[0])
            await gone.wait()
            got += [leaf async for leaf in leaves]
        assert b"".join(got) == DEEP
        assert fetch.dropped == {providers[0]: "disconnected"}
        nursery.cancel_scope.cancel()
