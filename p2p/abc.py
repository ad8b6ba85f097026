"""What the rest of the code sees of the network: small interfaces, no libp2p types."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from p2p.keys import PeerId


class StreamError(Exception):
    """The stream or its connection failed (reset, closed, EOF mid-message)."""


class StreamRefused(StreamError):
    """The peer answered an optimistic open with "na": it does not speak the protocol."""


class Stream(Protocol):
    """A bidirectional byte stream to one peer, for one protocol."""

    @property
    def remote_peer(self) -> PeerId: ...

    async def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes``; ``b""`` at end of stream. Raises StreamError on reset."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def close_write(self) -> None:
        """Half-close: the peer reads EOF, we can still read."""
        ...

    async def close(self) -> None: ...

    async def reset(self) -> None: ...


if TYPE_CHECKING:
    # trio-typing (a py-libp2p dependency) shadows trio's own annotations with
    # stubs that lack trio.TaskStatus; its TaskStatus is the same thing.
    from trio_typing import TaskStatus as TaskStatus
else:
    TaskStatus = Any  # only ever used in annotations

StreamHandler = Callable[[Stream], Awaitable[None]]


# (origin, forwarder, data) -> accept?
Validator = Callable[[PeerId, PeerId, bytes], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class GossipMessage:
    """A validated message as a subscriber sees it; ``origin`` is authenticated."""

    topic: str
    origin: PeerId
    data: bytes


class HostLike(Protocol):
    """What a Node uses of its host: p2p.host.Host (libp2p) and p2p.memory.MemoryHost
    (the virtual-time model) both satisfy it."""

    @property
    def peer_id(self) -> PeerId: ...

    async def run(self, *, task_status: TaskStatus[None] = ...) -> None: ...

    async def dial_bootstrap(self) -> list[PeerId]: ...

    def addrs(self) -> list[str]: ...

    async def connect(self, addr: str) -> PeerId: ...

    def add_addrs(self, peer: PeerId, addrs: Sequence[str]) -> None: ...

    async def disconnect(self, peer: PeerId) -> None: ...

    # called with a peer whose last connection closed
    on_disconnect: list[Callable[[PeerId], None]]

    def connected_peers(self) -> list[PeerId]: ...

    def is_connected(self, peer: PeerId) -> bool: ...

    def peer_addrs(self, peer: PeerId) -> list[str]: ...

    async def open_stream(
        self, peer: PeerId, protocols: Sequence[str], *, optimistic: bool = False
    ) -> Stream: ...

    def set_handler(self, protocol: str, handler: StreamHandler) -> None: ...


class GossipLike(Protocol):
    """What a Node uses of publish/subscribe: p2p.gossip.Gossip (gossipsub) and
    p2p.memory.MemoryGossip (the model) both satisfy it."""

    async def run(self, *, task_status: TaskStatus[None] = ...) -> None: ...

    def set_validator(self, topic: str, validator: Validator) -> None: ...

    async def subscribe(self, topic: str) -> AsyncIterator[GossipMessage]: ...

    async def publish(self, topic: str, data: bytes) -> None: ...

    async def wait_for_subscriber(self, peer: PeerId, topic: str) -> None: ...

    def mesh_peers(self, topic: str) -> list[PeerId]: ...

    def topic_peers(self, topic: str) -> list[PeerId]: ...
