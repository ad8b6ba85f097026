"""Bytes of a file by CID for the gateway: from the store, or fetched over Bitswap.

A file pinned here is read straight from the store, walking the DAG by its
``blocksizes`` so that a range touches only the blocks it covers. Anything
else is fetched from the network.

``Node.fetch(cid, start=, end=)`` fetches only the DAG nodes covering a byte
range, from whichever holders the node knows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import trio

from gateway.content import SNIFF_BYTES, content_type
from protocols.bitswap import Fetch
from protocols.cid import CID, RAW
from protocols.errors import DecodingError, NotFoundError
from protocols.unixfs import decode_file_node, file_size_of

if TYPE_CHECKING:
    from node import Node


class ContentError(Exception):
    """The file cannot be served; ``status`` is the HTTP answer."""

    status = 502


class NoProvider(ContentError):
    """Nobody we know of holds it (404)."""

    status = 404


class FetchFailed(ContentError):
    """Holders were found but none delivered verified blocks (502)."""

    status = 502


@dataclass(frozen=True, slots=True)
class FileInfo:
    cid: CID
    size: int
    content_type: str
    name: str


class Source:
    """Reads byte ranges of UnixFS files for one node; caches what each CID is."""

    def __init__(self, node: Node, *, cache: int = 1024) -> None:
        self.node = node
        self._cache: OrderedDict[CID, FileInfo] = OrderedDict()
        self._cache_max = cache

    async def info(self, cid: CID) -> FileInfo:
        """Size and type of ``cid``; fetches its root and first leaf when not held."""
        cached = self._cache.get(cid)
        if cached is not None:
            self._cache.move_to_end(cid)
            return cached
        name = self._pin_name(cid)
        if name is not None:
            info = await self._local_info(cid, name)
        else:
            info = await self._remote_info(cid)
        self._cache[cid] = info
        while len(self._cache) > self._cache_max:
            self._cache.popitem(last=False)
        return info

    async def _local_info(self, cid: CID, name: str) -> FileInfo:
        root = self.node.store.get(cid)
        if root is None:
            raise FetchFailed(f"{cid} is pinned but its root block is missing")
        try:
            size = file_size_of(cid, root)
        except DecodingError as exc:
            raise FetchFailed(f"{cid} is not a UnixFS file: {exc}") from None
        head = b"".join([c async for c in self._read_local(cid, 0, min(size, SNIFF_BYTES))])
        return FileInfo(cid, size, content_type(head, name), name)

    async def _remote_info(self, cid: CID) -> FileInfo:
        head = b""
        fetch = await self._open(cid, 0, SNIFF_BYTES)
        async for chunk in self._chunks(fetch, 0, SNIFF_BYTES, whole_root=True):
            head += chunk
        size = fetch.filesize
        if size is None:  # a raw-leaf root is its own size once read
            raise FetchFailed(f"{cid}: the file size is unknown after reading its root")
        return FileInfo(cid, size, content_type(head[:SNIFF_BYTES]), "")

    async def read(self, cid: CID, start: int, end: int) -> AsyncGenerator[bytes, None]:
        """Bytes ``[start, end)`` of ``cid``, in order; ``end`` within the file."""
        if start >= end:
            return
        if self.node.store.is_pinned(cid):
            async for chunk in self._read_local(cid, start, end):
                yield chunk
            return
        fetch = await self._open(cid, start, end)
        async for chunk in self._chunks(fetch, start, end):
            yield chunk

    def _pin_name(self, cid: CID) -> str | None:
        """The pin's name when ``cid`` is pinned here, else None."""
        if not self.node.store.is_pinned(cid):
            return None
        for pin in self.node.store.pins():
            if pin.cid == cid:
                return pin.name
        return None

    async def _read_local(self, cid: CID, start: int, end: int) -> AsyncIterator[bytes]:
        """``[start, end)`` of a file held here, reading only the blocks that cover it."""
        store = self.node.store
        stack = [(cid, 0)]  # (block, offset of its first byte in the file)
        while stack:
            block, offset = stack.pop()
            data = store.get(block)  # verified against its CID
            if data is None:
                raise FetchFailed(f"block {block} of pinned {cid} is missing here")
            if block.codec == RAW:
                lo, hi = max(start - offset, 0), min(end - offset, len(data))
                if lo < hi:
                    yield data[lo:hi]
                await trio.lowlevel.checkpoint()
                continue
            try:
                node = decode_file_node(data)
            except DecodingError as exc:
                raise FetchFailed(f"block {block} of {cid}: {exc}") from None
            pos = offset
            if node.data:
                lo, hi = max(start - pos, 0), min(end - pos, len(node.data))
                if lo < hi:
                    yield node.data[lo:hi]
                pos += len(node.data)
            children = []
            for link, size in zip(node.links, node.blocksizes, strict=True):
                if pos < end and pos + size > start:
                    children.append((link.cid, pos))
                pos += size
            stack.extend(reversed(children))

    async def _open(self, cid: CID, start: int, end: int) -> Fetch:
        try:
            return await self.node.fetch(cid, pin=False, start=start, end=end)
        except NotFoundError as exc:
            raise NoProvider(str(exc)) from None

    async def _chunks(
        self, fetch: Fetch, start: int, end: int, *, whole_root: bool = False
    ) -> AsyncIterator[bytes]:
        """Slice ``fetch``'s leaves to ``[start, end)``; end clamped to the file size.

        ``whole_root``: keep reading past ``end`` until the file size is known
        (a raw-leaf root has no size field: it is known once the leaf is read).
        """
        pos = start
        try:
            async with aclosing(cast(AsyncGenerator[bytes, None], fetch.leaves())) as leaves:
                async for chunk in leaves:
                    lo, hi = max(start - pos, 0), min(end - pos, len(chunk))
                    pos += len(chunk)
                    if lo < hi:
                        yield chunk[lo:hi]
                    if pos >= end and not (whole_root and fetch.filesize is None):
                        return
        except (NotFoundError, DecodingError) as exc:
            if not fetch.providers and not fetch.dropped:
                raise NoProvider(str(exc)) from None
            raise FetchFailed(str(exc)) from None
        size = fetch.filesize if fetch.filesize is not None else pos
        if pos < min(end, size):
            raise FetchFailed(f"{fetch.root}: the DAG holds fewer bytes than its root says")
