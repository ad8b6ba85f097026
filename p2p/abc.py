"""What the rest of the code sees of the network: small interfaces, no libp2p types."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from p2p.keys import PeerId


class StreamError(Exception):
    """The stream or its connection failed (reset, closed, EOF mid-message)."""


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


StreamHandler = Callable[[Stream], Awaitable[None]]
