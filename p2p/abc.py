"""What the rest of the code sees of the network: small interfaces, no libp2p types."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

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


if TYPE_CHECKING:
    # trio-typing (a py-libp2p dependency) shadows trio's own annotations with
    # stubs that lack trio.TaskStatus; its TaskStatus is the same thing.
    from trio_typing import TaskStatus as TaskStatus
else:
    TaskStatus = Any  # only ever used in annotations

StreamHandler = Callable[[Stream], Awaitable[None]]
