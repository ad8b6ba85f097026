"""Misbehaving Bitswap peers for tests and scenarios: real hosts, real wire, bad answers.

A :class:`ByzantineProvider` speaks Bitswap 1.2.0 with its own small loop (not
our engine, which would never lie) and answers every want in one of these ways:

``corrupt``    the block with its bytes altered (its CID no longer matches)
``substitute`` a different, valid block (right prefix, wrong content)
``stall``      nothing at all
``dont_have``  DONT_HAVE for everything (claims in gossip, lies in Bitswap)
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Literal

import trio

from p2p.abc import HostLike, Stream, StreamError, TaskStatus
from p2p.host import Host, HostConfig
from p2p.keys import NodeKey, PeerId
from protocols import bitswap_msg as msg
from protocols.bitswap_msg import BitswapMessage, Presence, WantType
from protocols.cid import CID, RAW
from protocols.errors import DecodingError
from protocols.unixfs import Block
from protocols.wire import FrameReader, frame

Mode = Literal["corrupt", "substitute", "stall", "dont_have"]


class ByzantineProvider:
    """A peer that claims to hold everything and answers wants badly."""

    def __init__(
        self,
        mode: Mode,
        *,
        blocks: dict[CID, bytes] | None = None,
        host: HostLike | None = None,
        engine: Callable[[PeerId, BitswapMessage], Awaitable[None]] | None = None,
    ) -> None:
        self.mode = mode
        self.blocks = blocks or {}
        self.host: HostLike = host or Host(NodeKey.generate(), HostConfig())
        self.peer_id = self.host.peer_id
        # blocks and presences (answers to our own wants) go to ``engine`` when given:
        # a byzantine *node* still fetches honestly, it only serves lies
        self.engine = engine
        self.wants_seen = 0
        self.replies_sent = 0

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.take_over()
        await self.host.run(task_status=task_status)

    def take_over(self) -> None:
        """Answer Bitswap on ``self.host`` from now on (the simnet turns a running,
        staked node byzantine this way: its gossip stays honest, its blocks do not)."""
        for proto in msg.PROTOCOLS:
            self.host.set_handler(proto, self._handle)

    async def _handle(self, stream: Stream) -> None:
        reader = FrameReader(stream)
        reply_stream: Stream | None = None
        try:
            while (payload := await reader.read_frame(msg.MAX_MESSAGE)) is not None:
                message = msg.decode(payload)
                if self.engine is not None and (message.blocks or message.presences):
                    await self.engine(stream.remote_peer, replace(message, wants=(), full=False))
                wants = [w for w in message.wants if not w.cancel]
                self.wants_seen += len(wants)
                reply = self._reply(wants)
                if reply is None:
                    continue
                if reply_stream is None:
                    reply_stream = await self.host.open_stream(stream.remote_peer, msg.PROTOCOLS)
                await reply_stream.write(frame(msg.encode(reply)))
                self.replies_sent += 1
        except (DecodingError, StreamError):
            await stream.reset()

    def _reply(self, wants: list[msg.WantEntry]) -> BitswapMessage | None:
        if self.mode == "stall" or not wants:
            return None
        if self.mode == "dont_have":
            return BitswapMessage(presences=tuple((w.cid, Presence.DONT_HAVE) for w in wants))
        blocks = []
        for want in wants:
            if want.want_type != WantType.BLOCK:
                continue
            real = self.blocks.get(want.cid, b"")
            if self.mode == "corrupt":
                data = bytes([real[0] ^ 0xFF]) + real[1:] if real else b"\x00"
                # Sent under the wanted CID's prefix; the receiver hashes it to another CID.
                blocks.append(Block(want.cid, data))
            else:
                junk = os.urandom(max(1, len(real)))
                blocks.append(Block(CID.for_block(RAW, junk), junk))
        return BitswapMessage(blocks=tuple(blocks))
