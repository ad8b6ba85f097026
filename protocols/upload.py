"""Upload: ``/coliving/upload/1.0.0``, a client streams a file to a node.

Wire (every message is a uvarint-length-prefixed frame)::

    client -> node   CBOR {"name": str, "size": int | null}     header, <= 4 KiB
    client -> node   raw file bytes, any number of frames of 1 B .. 1 MiB
    client -> node   an empty frame                              end of file
    node -> client   CBOR {"ok": true, "cid": str, "size": int}
                  or CBOR {"ok": false, "error": str}

The explicit end frame tells a finished upload from a truncated one: if the
stream ends or resets before it, nothing is pinned. The node builds the DAG
as bytes arrive (memory stays flat), stores blocks in batches under a store
session, and pins, then announces, only once the whole file is in.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import cbor2

from p2p.abc import Stream, StreamError
from p2p.keys import PeerId
from protocols.cid import CID
from protocols.errors import DecodingError, TruncatedError, UnsupportedError, is_offence
from protocols.unixfs import Block, FileImporter
from protocols.wire import FrameReader, cbor_exact, write_frame
from store.blockstore import BlockStore, StoreError

log = logging.getLogger(__name__)

PROTOCOL: Final = "/coliving/upload/1.0.0"
MAX_HEADER: Final = 4096
MAX_DATA_FRAME: Final = 1 << 20
MAX_NAME: Final = 255
STORE_BATCH_BYTES: Final = 8 << 20


class UploadError(Exception):
    """The node refused or failed the upload; the message says why."""


def decode_header(data: bytes) -> tuple[str, int | None]:
    if len(data) > MAX_HEADER:
        raise DecodingError(f"upload header over {MAX_HEADER} bytes")
    obj: Any = cbor_exact(data, "upload header")
    if not isinstance(obj, dict):
        raise DecodingError("upload header must be a map with keys name, size")
    if unknown := sorted(map(str, set(obj) - {"name", "size"})):
        raise UnsupportedError(f"unknown keys in the upload header: {unknown}")
    name, size = obj.get("name", ""), obj.get("size")
    if not isinstance(name, str) or len(name) > MAX_NAME:
        raise DecodingError(f"name must be a string of at most {MAX_NAME} characters")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise DecodingError("size must be a non-negative integer or null")
    return name, size


@dataclass(frozen=True)
class Uploaded:
    """The node's acknowledgement: the root, the size, and how many staked nodes
    hold the file now (None from a node that does not replicate)."""

    cid: CID
    size: int
    replicas: int | None = None


class UploadService:
    """Node side of the upload protocol."""

    def __init__(
        self,
        store: BlockStore,
        on_pinned: Callable[[CID], Awaitable[int | None]],
        *,
        on_malformed: Callable[[PeerId, str], None] | None = None,
    ) -> None:
        self.store = store
        self.on_pinned = on_pinned
        # told of an upload that broke the protocol (not of one cut short)
        self.on_malformed = on_malformed
        self.completed = 0
        self.failed = 0

    async def handle(self, stream: Stream) -> None:
        reader = FrameReader(stream)
        session: str | None = None
        written: list[CID] = []
        try:
            header = await reader.read_frame(MAX_HEADER)
            if header is None:
                raise TruncatedError("stream ended before the upload header")
            name, declared = decode_header(header)
            session = self.store.begin_session(f"upload {name!r} from {stream.remote_peer}")
            importer = FileImporter()
            pending: list[Block] = []
            pending_bytes = 0
            while True:
                chunk = await reader.read_frame(MAX_DATA_FRAME)
                if chunk is None:
                    raise TruncatedError("stream ended before the end-of-file frame")
                if not chunk:
                    break
                if declared is not None and importer.size + len(chunk) > declared:
                    raise DecodingError("more bytes than the header declared")
                for block in importer.feed(chunk):
                    pending.append(block)
                    pending_bytes += len(block.data)
                if pending_bytes >= STORE_BATCH_BYTES:
                    written += self.store.put_many(pending, session=session)
                    pending, pending_bytes = [], 0
            if declared is not None and importer.size != declared:
                raise DecodingError(f"got {importer.size} bytes, header declared {declared}")
            root, tail = importer.finish()
            written += self.store.put_many(pending + tail, session=session)
            self.store.pin(root, size=importer.size, name=name, session=session)
            session = None
            self.completed += 1
            replicas = await self.on_pinned(root)
            reply: dict[str, Any] = {"ok": True, "cid": str(root), "size": importer.size}
            if replicas is not None:
                reply["replicas"] = replicas
            await write_frame(stream, cbor2.dumps(reply))
            await stream.close()
        except (DecodingError, StoreError) as exc:
            self.failed += 1
            log.info("upload from %s refused: %s", stream.remote_peer, exc)
            malformed = isinstance(exc, DecodingError) and is_offence(exc)
            if malformed and self.on_malformed is not None:
                self.on_malformed(stream.remote_peer, f"malformed upload: {exc}")
            try:
                await write_frame(stream, cbor2.dumps({"ok": False, "error": str(exc)}))
                await stream.close()
            except StreamError:
                await stream.reset()
        except StreamError:
            self.failed += 1
            raise
        finally:
            if session is not None:
                # Drop what this partial upload added (blocks that were here
                # before it are left alone), then close the session.
                self.store.delete_blocks(written)
                self.store.end_session(session)


async def upload(
    stream: Stream,
    chunks: AsyncIterable[bytes],
    *,
    name: str = "",
    size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Uploaded:
    """Client side: send the file; the node's acknowledgement once it pinned it.

    With ``size``, the chunks must add up to it: a file that grew or shrank
    while it was read raises UploadError before the end-of-file frame (the
    caller resets the stream, and the node drops what it got)."""
    await write_frame(stream, cbor2.dumps({"name": name, "size": size}))
    sent = 0
    async for chunk in chunks:
        if size is not None and sent + len(chunk) > size:
            raise UploadError(f"the file grew while it was uploaded (past {size} bytes)")
        for start in range(0, len(chunk), MAX_DATA_FRAME):
            piece = chunk[start : start + MAX_DATA_FRAME]
            await write_frame(stream, piece)
            if progress is not None:
                progress(len(piece))
        sent += len(chunk)
    if size is not None and sent != size:
        raise UploadError(f"the file shrank while it was uploaded ({sent} of {size} bytes)")
    await write_frame(stream, b"")
    reply = await FrameReader(stream).read_frame(MAX_HEADER)
    if reply is None:
        raise UploadError("the node closed the stream without a reply")
    try:
        obj: Any = cbor_exact(reply, "reply")
        if obj.get("ok") is True:
            replicas = obj.get("replicas")
            return Uploaded(
                CID.parse(obj["cid"]),
                int(obj["size"]),
                replicas if isinstance(replicas, int) else None,
            )
        error = str(obj.get("error", "unknown error"))
    except Exception as exc:
        raise UploadError(f"malformed reply from the node: {exc}") from None
    raise UploadError(f"the node refused the upload: {error}")
