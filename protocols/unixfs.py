"""UnixFS files as IPFS's reference importer builds them.

Layout: fixed 256 KiB chunks stored as raw leaves (CIDv1, codec raw), gathered
into a balanced tree of dag-pb nodes with at most 174 links each. A file of a
single chunk is that raw leaf itself. With these rules a file gets the same CID
as ``ipfs-unixfs-importer`` with ``{cidVersion: 1, rawLeaves: true}``; the
vectors in tests/vectors were made by that importer, not by this code.

dag-pb canonical encoding: PBNode is Links (field 2) then Data (field 1); each
PBLink is Hash (1), Name (2, present and empty), Tsize (3). The UnixFS Data
message of a file node is Type (1) = File, filesize (3), then one blocksizes
(4) entry per child (proto2, unpacked).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from protocols import pb
from protocols.cid import CID, DAG_PB, RAW
from protocols.errors import DecodingError

CHUNK_SIZE: Final = 262_144
MAX_LINKS: Final = 174
MAX_BLOCK_SIZE: Final = 2 * 1024 * 1024  # what we accept from the wire; IPFS's limit
UNIXFS_FILE: Final = 2
UNIXFS_RAW: Final = 0
_UNIXFS_TYPES: Final = {0, 1, 2, 3, 4, 5}


@dataclass(frozen=True, slots=True)
class Block:
    """Bytes and the CID they hash to."""

    cid: CID
    data: bytes

    def __eq__(self, other: object) -> bool:
        # a HashedBlock is the same block: only how it was made differs
        if not isinstance(other, Block):
            return NotImplemented
        return self.cid == other.cid and self.data == other.data

    @staticmethod
    def hashed(codec: int, data: bytes) -> HashedBlock:
        """A block whose CID is computed here from its bytes (see HashedBlock)."""
        return HashedBlock(CID.for_block(codec, data), data)


@dataclass(frozen=True, slots=True, eq=False)
class HashedBlock(Block):
    """A block whose CID was computed from its (immutable) bytes in this process.

    Made by :meth:`Block.hashed` (the importer, the Bitswap decoder): the
    blockstore does not hash such a block a second time before writing it;
    every other Block it checks.
    """

    def __post_init__(self) -> None:
        if type(self.data) is not bytes:  # a mutable buffer could change after hashing
            raise TypeError("a HashedBlock holds bytes")


@dataclass(frozen=True, slots=True)
class Link:
    cid: CID
    tsize: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class FileNode:
    """A decoded dag-pb UnixFS file node."""

    links: tuple[Link, ...]
    blocksizes: tuple[int, ...]
    filesize: int
    data: bytes = b""


# -- dag-pb ---------------------------------------------------------------


def encode_dag_pb(links: Iterable[Link], data: bytes | None) -> bytes:
    out = bytearray()
    for link in links:
        body = (
            pb.field_bytes(1, link.cid.to_bytes())
            + pb.field_bytes(2, link.name.encode())
            + pb.field_varint(3, link.tsize)
        )
        out += pb.field_bytes(2, body)
    if data is not None:
        out += pb.field_bytes(1, data)
    return bytes(out)


def encode_unixfs_file(filesize: int, blocksizes: Iterable[int], data: bytes = b"") -> bytes:
    out = pb.field_varint(1, UNIXFS_FILE)
    if data:
        out += pb.field_bytes(2, data)
    out += pb.field_varint(3, filesize)
    for size in blocksizes:
        out += pb.field_varint(4, size)
    return out


def decode_file_node(block: bytes | memoryview) -> FileNode:
    """Decode a dag-pb block that must be a UnixFS file (or raw) node.

    The layout every IPFS importer writes (each link: Hash of a 36-byte CIDv1,
    empty Name, Tsize; then Data: Type, filesize, unpacked blocksizes) is read
    by a straight scan of the bytes, about 6x faster than field by field: a
    174-link node is on the first-byte path of every large file. Anything
    else goes to the field-by-field decoder, which accepts every valid
    encoding and is the one that explains a malformed block.
    """
    if len(block) > MAX_BLOCK_SIZE:
        raise DecodingError(f"dag-pb block of {len(block)} bytes exceeds {MAX_BLOCK_SIZE}")
    buf = bytes(block)
    node = _decode_canonical(buf)
    return node if node is not None else _decode_file_node_generic(buf)


# One canonical link: PBLink field 1 (LEN 36: a CIDv1, raw or dag-pb, sha2-256),
# field 2 empty (Name), field 3 (Tsize, a minimal uvarint); the byte after the
# link's tag is its length. One blocksize: UnixFS field 4 (VARINT), minimal.
_UVARINT: Final = rb"((?:[\x80-\xff]{1,8}[\x01-\x7f])|[\x00-\x7f])"  # minimal, at most 9 bytes
_LINK_BODY: Final = rb"\x0a\x24\x01([\x55\x70])\x12\x20(.{32})\x12\x00\x18"
_LINK: Final = re.compile(rb"\x12[\x2a-\x32]" + _LINK_BODY + _UVARINT, re.DOTALL)
# A run of links, checked in one match: each link's length byte is 0x29 + n for
# a Tsize of n bytes, so a link can only end where its length byte says.
_LINK_RUN: Final = re.compile(
    rb"(?:\x12(?:"
    + rb"|".join(
        re.escape(bytes((0x29 + n,)))
        + _LINK_BODY.replace(b"(", b"(?:")
        + rb"[\x80-\xff]" * (n - 1)
        + tail
        for n, tail in [(1, rb"[\x00-\x7f]")] + [(n, rb"[\x01-\x7f]") for n in range(2, 10)]
    )
    + rb"))*",
    re.DOTALL,
)
_BLOCKSIZE: Final = re.compile(rb"\x20" + _UVARINT)
_BLOCKSIZE_RUN: Final = re.compile(rb"(?:\x20(?:[\x80-\xff]{1,8}[\x01-\x7f]|[\x00-\x7f]))*")
_HEAD: Final = re.compile(rb"\x08([\x00-\x7f])\x18" + _UVARINT)
_LENGTH: Final = re.compile(_UVARINT)


@functools.lru_cache(maxsize=4096)
def _varint(raw: bytes) -> int:
    """A uvarint the patterns above have already bounded (at most 9 bytes, minimal).

    Cached: a file's links repeat one leaf size (and one Tsize) almost throughout."""
    value = 0
    for shift, byte in enumerate(raw):
        value |= (byte & 0x7F) << (7 * shift)
    return value


def _decode_canonical(buf: bytes) -> FileNode | None:
    """The canonical layout, or None for the generic decoder to handle."""
    parts = _canonical_parts(buf)
    if parts is None:
        return None
    links_end, kind, filesize, blocksizes = parts
    links = [
        Link(CID(codec[0], digest), _varint(tsize))
        for codec, digest, tsize in _LINK.findall(buf, 0, links_end)
    ]
    return _file_node(links, kind, filesize, blocksizes, b"")


def _canonical_parts(buf: bytes) -> tuple[int, int, int, list[int]] | None:
    """A canonical node's end of links, Type, filesize and blocksizes; or None.

    Each run (the links, the blocksizes) is checked by one anchored match, so
    its parts are contiguous: a match inside a digest can never stand in for a
    link. The links are read later, by the caller, from that checked run.
    """
    pos = _LINK_RUN.match(buf).end()  # type: ignore[union-attr]  # (* matches empty)
    end = len(buf)
    # Data: 0x0a, length, UnixFS message, and nothing after it
    if pos >= end or buf[pos] != 0x0A:
        return None
    length = _LENGTH.match(buf, pos + 1)
    if length is None:
        return None
    start = length.end()
    if start + _varint(length[1]) != end:
        return None
    # UnixFS: Type (0x08), filesize (0x18), blocksizes (0x20 each); nothing else
    head = _HEAD.match(buf, start)
    if head is None:
        return None
    run = _BLOCKSIZE_RUN.match(buf, head.end())
    if run is None or run.end() != end:
        return None
    blocksizes = [_varint(raw) for raw in _BLOCKSIZE.findall(buf, head.end(), end)]
    return pos, head[1][0], _varint(head[2]), blocksizes


def child_at(block: bytes, offset: int) -> tuple[CID, int] | None:
    """The link of a UnixFS file node under byte ``offset`` of its file, and that
    byte's offset within the child; None past the end (or for a leaf's data).

    A provider answering a want's path_to asks this of a 174-link node for one
    child: the importer's layout is read without building the other 173."""
    buf = bytes(block)
    parts = _canonical_parts(buf)
    if parts is None:  # any other layout: the full decoder reads it, or says why not
        node = decode_file_node(buf)
        found = _index_under(node.blocksizes, offset - len(node.data))
        return None if found is None else (node.links[found[0]].cid, found[1])
    links_end, kind, filesize, blocksizes = parts
    links = _LINK.findall(buf, 0, links_end)  # (tuples of bytes: no CIDs built)
    _checked_filesize(kind, filesize, blocksizes, len(links), 0)
    found = _index_under(blocksizes, offset)
    if found is None:
        return None
    codec, digest, _ = links[found[0]]
    return CID(codec[0], digest), found[1]


def _index_under(blocksizes: Sequence[int], offset: int) -> tuple[int, int] | None:
    """The index of the part holding byte ``offset``, and the byte's offset in it."""
    if offset < 0:
        return None
    for index, size in enumerate(blocksizes):
        if offset < size:
            return index, offset
        offset -= size
    return None


def _decode_file_node_generic(block: bytes | memoryview) -> FileNode:
    """Any valid encoding, field by field (the reference for the fast path)."""
    links: list[Link] = []
    data: memoryview | None = None
    for num, wire, value in pb.iter_fields(block):
        if num == 2:
            links.append(_decode_link(pb.expect_len(wire, value, "PBNode.Links")))
        elif num == 1:
            if data is not None:
                raise DecodingError("PBNode.Data twice")
            data = pb.expect_len(wire, value, "PBNode.Data")
        else:
            raise DecodingError(f"unknown PBNode field {num}")
    if data is None:
        raise DecodingError("dag-pb node has no UnixFS data")
    kind = None
    filesize: int | None = None
    blocksizes: list[int] = []
    inline = b""
    for num, wire, value in pb.iter_fields(data):
        if num == 1:
            kind = pb.expect_varint(wire, value, "UnixFS.Type")
        elif num == 2:
            inline = bytes(pb.expect_len(wire, value, "UnixFS.Data"))
        elif num == 3:
            filesize = pb.expect_varint(wire, value, "UnixFS.filesize")
        elif num == 4:
            if wire == pb.LEN:  # tolerate packed encoding from other writers
                packed = pb.expect_len(wire, value, "UnixFS.blocksizes")
                pos = 0
                while pos < len(packed):
                    size, pos = _uvarint(packed, pos)
                    blocksizes.append(size)
            else:
                blocksizes.append(pb.expect_varint(wire, value, "UnixFS.blocksizes"))
        elif num in (5, 6, 7, 8):
            continue  # hashType, fanout, mode, mtime: not needed to read a file
        else:
            raise DecodingError(f"unknown UnixFS field {num}")
    return _file_node(links, kind, filesize, blocksizes, inline)


def _file_node(
    links: list[Link], kind: int | None, filesize: int | None, blocksizes: list[int], inline: bytes
) -> FileNode:
    filesize = _checked_filesize(kind, filesize, blocksizes, len(links), len(inline))
    return FileNode(tuple(links), tuple(blocksizes), filesize, inline)


def _checked_filesize(
    kind: int | None, filesize: int | None, blocksizes: Sequence[int], links: int, inline: int
) -> int:
    """A file node's size, once its parts agree (else DecodingError)."""
    if kind not in (UNIXFS_FILE, UNIXFS_RAW):
        raise DecodingError(f"UnixFS node of type {kind} is not a file")
    if len(blocksizes) != links:
        raise DecodingError("UnixFS blocksizes do not match the links")
    total = inline + sum(blocksizes)
    if filesize is None:
        filesize = total
    if filesize != total:
        raise DecodingError("UnixFS filesize does not match its parts")
    return filesize


def _uvarint(data: memoryview, pos: int) -> tuple[int, int]:
    from protocols.cid import decode_uvarint

    return decode_uvarint(data, pos, max_bytes=10)


def _decode_link(body: memoryview) -> Link:
    cid: CID | None = None
    name = ""
    tsize = 0
    for num, wire, value in pb.iter_fields(body):
        if num == 1:
            cid = CID.from_bytes(pb.expect_len(wire, value, "PBLink.Hash"))
        elif num == 2:
            try:
                name = bytes(pb.expect_len(wire, value, "PBLink.Name")).decode()
            except UnicodeDecodeError:
                raise DecodingError("PBLink.Name is not UTF-8") from None
        elif num == 3:
            tsize = pb.expect_varint(wire, value, "PBLink.Tsize")
        else:
            raise DecodingError(f"unknown PBLink field {num}")
    if cid is None:
        raise DecodingError("PBLink without Hash")
    return Link(cid, tsize, name)


# -- importer -------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    cid: CID
    size: int  # file bytes under this entry
    tsize: int  # bytes of all blocks under this entry, itself included


@dataclass
class FileImporter:
    """Streaming importer: feed bytes, collect blocks, memory bounded.

    Holds at most one partial chunk and one partial group of links per tree
    level, so a 1 GiB file costs the same memory as a 1 MiB one.
    """

    chunk_size: int = CHUNK_SIZE
    max_links: int = MAX_LINKS
    _buffer: bytearray = field(default_factory=bytearray)
    _levels: list[list[_Entry]] = field(default_factory=lambda: [[]])
    _chunks: int = 0
    size: int = 0

    def feed(self, data: bytes | memoryview) -> list[Block]:
        """Add bytes; return the blocks completed by them (leaves and parents)."""
        self.size += len(data)
        self._buffer += data
        out: list[Block] = []
        while len(self._buffer) >= self.chunk_size:
            chunk = bytes(self._buffer[: self.chunk_size])
            del self._buffer[: self.chunk_size]
            self._add_leaf(chunk, out)
        return out

    def finish(self) -> tuple[CID, list[Block]]:
        """Flush: return the root CID and the last blocks."""
        out: list[Block] = []
        if self._buffer or self._chunks == 0:
            self._add_leaf(bytes(self._buffer), out)
            self._buffer.clear()
        if self._chunks == 1 and len(self._levels) == 1:
            return self._levels[0][0].cid, out  # single chunk: the raw leaf is the file
        level = 0
        while True:
            entries = self._levels[level]
            higher_pending = any(self._levels[level + 1 :])
            if len(entries) == 1 and not higher_pending and level > 0:
                return entries[0].cid, out
            if entries:
                self._reduce(level, out)
            level += 1

    def _add_leaf(self, chunk: bytes, out: list[Block]) -> None:
        block = Block.hashed(RAW, chunk)
        out.append(block)
        self._chunks += 1
        self._push(0, _Entry(block.cid, len(chunk), len(chunk)), out)

    def _push(self, level: int, entry: _Entry, out: list[Block]) -> None:
        self._levels[level].append(entry)
        if len(self._levels[level]) == self.max_links:
            self._reduce(level, out)

    def _reduce(self, level: int, out: list[Block]) -> None:
        entries = self._levels[level]
        self._levels[level] = []
        if len(self._levels) == level + 1:
            self._levels.append([])
        data = encode_unixfs_file(sum(e.size for e in entries), (e.size for e in entries))
        node = encode_dag_pb((Link(e.cid, e.tsize) for e in entries), data)
        block = Block.hashed(DAG_PB, node)
        cid = block.cid
        out.append(block)
        tsize = len(node) + sum(e.tsize for e in entries)
        self._push(level + 1, _Entry(cid, sum(e.size for e in entries), tsize), out)


def import_bytes(data: bytes) -> tuple[CID, list[Block]]:
    """Import a whole in-memory file (tests, small files)."""
    importer = FileImporter()
    blocks = importer.feed(data)
    root, tail = importer.finish()
    return root, blocks + tail


def file_size_of(cid: CID, block: bytes) -> int:
    """The file length a root block describes."""
    if cid.codec == RAW:
        return len(block)
    return decode_file_node(block).filesize
