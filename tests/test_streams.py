"""Stream opening on real hosts over 127.0.0.1: optimistic protocol selection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from node import Client
from p2p.abc import Stream, StreamRefused
from p2p.host import Host, HostConfig
from p2p.keys import NodeKey, PeerId
from protocols import bitswap_msg as msg
from simnet.local import start_nodes
from tests.conftest import chunks

ECHO = "/coliving/test/echo/1.0.0"
WAIT = 20


async def echo(stream: Stream) -> None:
    while data := await stream.read(1 << 16):
        await stream.write(data)
    await stream.close()


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


async def test_optimistic_open_carries_the_first_write_and_checks_the_answer() -> None:
    async with two_hosts() as (a, _, peer):
        with trio.fail_after(WAIT):
            stream = await a.open_stream(peer, [ECHO], optimistic=True)
            await stream.write(b"hello")  # sent with the proposal, before any answer
            got = b""
            while len(got) < 5:
                got += await stream.read(5 - len(got))
        assert got == b"hello"


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
