"""Property tests of every wire decoder in protocols/.

For each codec: (a) encode then decode gives back the input; (b) arbitrary
bytes, truncations and mutations of valid encodings either decode or raise
the module's documented error (DecodingError, ProtocolError), never another
exception and never a hang; (c) oversized inputs are rejected with that error.

Stream-level parsers (FrameReader, the upload handler, query serve/ask) run
over :class:`ScriptedStream`, an in-memory p2p.abc.Stream that hands out the
bytes in the slices Hypothesis chose, then ends cleanly or with a reset.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import cbor2
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chain.oracle import AllowlistOracle
from p2p.abc import StreamError
from p2p.host import _multistream_line as multistream_line
from p2p.keys import PeerId
from protocols import announce, pb, query, upload, wire
from protocols import bitswap_msg as msg
from protocols.bitswap_msg import BitswapMessage, Presence, WantEntry, WantType
from protocols.cid import (
    CID,
    DAG_PB,
    MAX_CID_BYTES,
    RAW,
    decode_uvarint,
    encode_uvarint,
)
from protocols.errors import DecodingError, ProtocolError
from protocols.unixfs import (
    MAX_BLOCK_SIZE,
    Block,
    FileImporter,
    FileNode,
    Link,
    _decode_canonical,
    _decode_file_node_generic,
    child_at,
    decode_file_node,
    encode_dag_pb,
    encode_unixfs_file,
    file_size_of,
)
from store.blockstore import BlockStore

T = TypeVar("T")

PROPS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW_PROPS = settings(PROPS, max_examples=60)
PEER = PeerId("12D3KooWTestPeerForScriptedStreams")
HANG_GUARD = 10  # seconds: an in-memory parse that takes this long is a hang

# -- strategies -------------------------------------------------------------

digests = st.binary(min_size=32, max_size=32)
cids = st.builds(CID, st.sampled_from([RAW, DAG_PB]), digests)
int32s = st.integers(-(2**31), 2**31 - 1)


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid encoding, then truncated, with bytes flipped, inserted or dropped."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "append"]))
        pos = draw(st.integers(0, len(data)))
        if op == "truncate":
            del data[pos:]
        elif op == "flip" and pos < len(data):
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and pos < len(data):
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def decodes_or_raises(
    fn: Callable[[Any], T], data: Any, errors: tuple[type[BaseException], ...] = (DecodingError,)
) -> T | None:
    """Run a decoder: its result, or None when it raised one of ``errors``."""
    try:
        return fn(data)
    except errors:
        return None


# Anything CBOR can carry, including the awkward parts: bignums, NaN, tags.
cbor_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**64, max_value=2**1100),
    st.integers(min_value=-(2**1100), max_value=-(2**64)),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=40),
)
cbor_values = st.recursive(
    cbor_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers()), inner, max_size=4),
        st.builds(cbor2.CBORTag, st.integers(0, 300), inner),
    ),
    max_leaves=12,
)


# -- a scripted in-memory stream ---------------------------------------------


class ScriptedStream:
    """A p2p.abc.Stream whose reads come from ``chunks``, then EOF or a reset."""

    def __init__(
        self,
        chunks: Sequence[bytes] = (),
        *,
        reset_at_end: bool = False,
        respond: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self._chunks = [c for c in chunks if c]
        self._reset_at_end = reset_at_end
        self._respond = respond
        self.written = bytearray()
        self.closed = False
        self.was_reset = False

    @property
    def remote_peer(self) -> PeerId:
        return PEER

    async def read(self, max_bytes: int) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.was_reset:
            raise StreamError("read after reset")
        if self._respond is not None:  # answer what was written so far, once
            self._chunks.append(self._respond(bytes(self.written)))
            self._respond = None
        if not self._chunks:
            if self._reset_at_end:
                raise StreamError("stream reset by peer")
            return b""
        head = self._chunks[0]
        out, rest = head[:max_bytes], head[max_bytes:]
        if rest:
            self._chunks[0] = rest
        else:
            self._chunks.pop(0)
        return out

    async def write(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed or self.was_reset:
            raise StreamError("write after close")
        self.written += data

    async def close_write(self) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()
        self.closed = True

    async def reset(self) -> None:
        await trio.lowlevel.checkpoint()
        self.was_reset = True


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut into slices at points Hypothesis picks."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def run_bounded(fn: Callable[[], Awaitable[T]]) -> T:
    async def guarded() -> T:
        with trio.fail_after(HANG_GUARD):
            return await fn()

    return trio.run(guarded)


def replies(written: bytes, max_size: int) -> list[Any]:
    """Decode the frames a handler wrote back."""

    async def read_all() -> list[Any]:
        reader = wire.FrameReader(ScriptedStream([written]))
        out = []
        while (payload := await reader.read_frame(max_size)) is not None:
            out.append(cbor2.loads(payload))
        return out

    return trio.run(read_all)


# -- cid.py: uvarint ----------------------------------------------------------


@PROPS
@given(st.integers(0, 2**63 - 1), st.binary(max_size=8), st.binary(max_size=8))
def test_uvarint_roundtrip(value: int, before: bytes, after: bytes) -> None:
    encoded = encode_uvarint(value)
    assert decode_uvarint(before + encoded + after, len(before)) == (
        value,
        len(before) + len(encoded),
    )


@PROPS
@given(st.binary(max_size=16), st.integers(0, 16), st.integers(1, 10))
def test_uvarint_garbage_is_canonical_or_refused(data: bytes, offset: int, max_bytes: int) -> None:
    try:
        value, end = decode_uvarint(data, offset, max_bytes=max_bytes)
    except DecodingError:
        return
    # Only minimal encodings are accepted, so decoding is the inverse of encoding.
    assert encode_uvarint(value) == data[offset:end]
    assert end - offset <= max_bytes


@PROPS
@given(st.integers(2**63, 2**200))
def test_uvarint_oversized_is_refused(value: int) -> None:
    with pytest.raises(DecodingError):
        decode_uvarint(encode_uvarint(value))


def test_uvarint_negative_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        encode_uvarint(-1)


# -- cid.py: CIDs --------------------------------------------------------------

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58encode(raw: bytes) -> str:
    num = int.from_bytes(raw, "big")
    out = ""
    while num:
        num, rem = divmod(num, 58)
        out = _B58[rem] + out
    return "1" * (len(raw) - len(raw.lstrip(b"\0"))) + out


@PROPS
@given(cids)
def test_cid_roundtrip(cid: CID) -> None:
    assert CID.from_bytes(cid.to_bytes()) == cid
    assert CID.parse(str(cid)) == cid
    assert CID.parse(" B" + str(cid)[1:].upper() + "\n") == cid
    assert CID.from_prefix(cid.prefix(), b"x") == CID.for_block(cid.codec, b"x")


@PROPS
@given(digests)
def test_cidv0_roundtrip(digest: bytes) -> None:
    cid = CID(DAG_PB, digest)
    assert CID.from_bytes(cid.multihash) == cid
    text = b58encode(cid.multihash)
    assert text.startswith("Qm") and len(text) == 46
    assert CID.parse(text) == cid
    v0_prefix = b"\x00" + encode_uvarint(DAG_PB) + b"\x12\x20"
    assert CID.from_prefix(v0_prefix, b"y") == CID.for_block(DAG_PB, b"y")


@PROPS
@given(st.one_of(st.binary(max_size=80), mutated(cids.map(CID.to_bytes))))
def test_cid_from_bytes_garbage(data: bytes) -> None:
    cid = decodes_or_raises(CID.from_bytes, data)
    if cid is not None:
        assert cid.codec in (RAW, DAG_PB) and len(cid.digest) == 32


@PROPS
@given(
    st.one_of(
        st.text(max_size=140),
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567=QmB1 ", max_size=70),
        cids.map(str).flatmap(
            lambda s: st.integers(0, len(s)).map(lambda i: s[:i] + "\x00" + s[i + 1 :])
        ),
        digests.map(lambda d: b58encode(b"\x12\x20" + d)[:45] + "0"),
    )
)
def test_cid_parse_garbage(text: str) -> None:
    decodes_or_raises(CID.parse, text)


@PROPS
@given(st.binary(max_size=24), st.binary(max_size=16))
def test_cid_from_prefix_garbage(prefix: bytes, data: bytes) -> None:
    cid = decodes_or_raises(lambda p: CID.from_prefix(p, data), prefix)
    if cid is not None:
        assert cid.matches(data)


@PROPS
@given(st.binary(min_size=MAX_CID_BYTES + 1, max_size=4 * MAX_CID_BYTES))
def test_cid_oversized_is_refused(data: bytes) -> None:
    with pytest.raises(DecodingError):
        CID.from_bytes(data)
    with pytest.raises(DecodingError):
        CID.parse("b" + "a" * (128 + len(data)))


def test_cid_codec_and_hash_are_checked() -> None:
    with pytest.raises(DecodingError):
        CID(0x71, bytes(32))  # dag-cbor: not a codec we verify
    with pytest.raises(DecodingError):
        CID(RAW, bytes(31))
    sha512 = b"\x01" + encode_uvarint(RAW) + b"\x13\x40" + bytes(64)
    with pytest.raises(DecodingError):
        CID.from_bytes(sha512)


# -- pb.py -------------------------------------------------------------------------

field_numbers = st.integers(1, 2**29 - 1)
pb_fields = st.one_of(
    st.tuples(field_numbers, st.just(pb.VARINT), st.integers(0, 2**64 - 1)),
    st.tuples(field_numbers, st.just(pb.LEN), st.binary(max_size=40)),
    st.tuples(field_numbers, st.just(pb.I64), st.integers(0, 2**64 - 1)),
    st.tuples(field_numbers, st.just(pb.I32), st.integers(0, 2**32 - 1)),
)


def encode_fields(fields: Sequence[tuple[int, int, int | bytes]]) -> bytes:
    out = bytearray()
    for num, wire_type, value in fields:
        if wire_type == pb.VARINT:
            assert isinstance(value, int)
            out += pb.field_varint(num, value)
        elif wire_type == pb.LEN:
            assert isinstance(value, bytes)
            out += pb.field_bytes(num, value)
        else:
            assert isinstance(value, int)
            width = 8 if wire_type == pb.I64 else 4
            out += pb.key(num, wire_type) + value.to_bytes(width, "little")
    return bytes(out)


def read_fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    return [
        (num, wt, bytes(v) if isinstance(v, memoryview) else v)
        for num, wt, v in pb.iter_fields(data)
    ]


@PROPS
@given(st.lists(pb_fields, max_size=8))
def test_pb_roundtrip(fields: list[tuple[int, int, int | bytes]]) -> None:
    assert read_fields(encode_fields(fields)) == fields


@PROPS
@given(
    st.one_of(st.binary(max_size=64), mutated(st.lists(pb_fields, max_size=6).map(encode_fields)))
)
def test_pb_garbage(data: bytes) -> None:
    fields = decodes_or_raises(read_fields, data)
    if fields is not None:
        # What decodes re-encodes to the same bytes (the reader accepts only minimal varints).
        assert encode_fields(fields) == data


@PROPS
@given(field_numbers, st.integers(1, 2**32), st.binary(max_size=16))
def test_pb_oversized_length_is_refused(num: int, extra: int, body: bytes) -> None:
    data = pb.key(num, pb.LEN) + encode_uvarint(len(body) + extra) + body
    with pytest.raises(DecodingError):
        read_fields(data)


def test_pb_bounds() -> None:
    with pytest.raises(DecodingError):  # a tag longer than 5 bytes
        read_fields(b"\x88\x80\x80\x80\x80\x01")
    with pytest.raises(DecodingError):  # a varint value longer than 10 bytes
        read_fields(b"\x08" + b"\xff" * 10 + b"\x01")
    with pytest.raises(DecodingError):  # groups
        read_fields(pb.key(1, 3))
    with pytest.raises(DecodingError):
        read_fields(b"\x00")  # field number 0
    with pytest.raises(DecodingError):
        pb.expect_len(pb.VARINT, 5, "x")
    with pytest.raises(DecodingError):
        pb.expect_varint(pb.LEN, memoryview(b""), "x")


# -- unixfs.py (dag-pb) ----------------------------------------------------------

links = st.builds(Link, cids, st.integers(0, 2**63), st.text(max_size=12))


@st.composite
def file_nodes(draw: st.DrawFn) -> FileNode:
    node_links = draw(st.lists(links, max_size=6))
    sizes = draw(
        st.lists(st.integers(0, 2**40), min_size=len(node_links), max_size=len(node_links))
    )
    inline = draw(st.binary(max_size=32))
    return FileNode(tuple(node_links), tuple(sizes), len(inline) + sum(sizes), inline)


def encode_file_node(node: FileNode) -> bytes:
    return encode_dag_pb(node.links, encode_unixfs_file(node.filesize, node.blocksizes, node.data))


@PROPS
@given(file_nodes())
def test_dag_pb_roundtrip(node: FileNode) -> None:
    assert decode_file_node(encode_file_node(node)) == node


@SLOW_PROPS
@given(st.binary(max_size=3000), st.integers(1, 64), st.integers(2, 5))
def test_imported_tree_decodes(data: bytes, chunk_size: int, max_links: int) -> None:
    importer = FileImporter(chunk_size=chunk_size, max_links=max_links)
    blocks = importer.feed(data)
    root, tail = importer.finish()
    by_cid = {b.cid: b.data for b in blocks + tail}
    for cid, block in by_cid.items():
        assert cid.matches(block)
        if cid.codec == DAG_PB:
            node = decode_file_node(block)
            assert all(link.cid in by_cid for link in node.links)
    assert file_size_of(root, by_cid[root]) == len(data)


@PROPS
@given(st.one_of(st.binary(max_size=200), mutated(file_nodes().map(encode_file_node))))
def test_dag_pb_garbage(data: bytes) -> None:
    node = decodes_or_raises(decode_file_node, data)
    if node is not None:
        assert len(node.links) == len(node.blocksizes)
        assert node.filesize == len(node.data) + sum(node.blocksizes)


@st.composite
def canonical_nodes(draw: st.DrawFn) -> bytes:
    """The importer's layout (empty names, no inline data): the fast decoder's input."""
    sizes = draw(st.lists(st.integers(0, 2**40), max_size=8))
    node_links = [Link(draw(cids), draw(st.integers(0, 2**63))) for _ in sizes]
    return encode_dag_pb(node_links, encode_unixfs_file(sum(sizes), sizes))


@PROPS
@given(
    st.one_of(
        canonical_nodes(), mutated(canonical_nodes()), mutated(file_nodes().map(encode_file_node))
    )
)
def test_dag_pb_fast_path_agrees_with_field_by_field(data: bytes) -> None:
    # decode_file_node reads the importer's layout by a straight scan; on any
    # input it must give what the field-by-field decoder gives, or fail as it does
    try:
        expected: FileNode | None = _decode_file_node_generic(data)
    except DecodingError:
        expected = None
    if expected is None:
        with pytest.raises(DecodingError):
            decode_file_node(data)
    else:
        assert decode_file_node(data) == expected


@PROPS
@given(
    st.one_of(
        canonical_nodes(), mutated(canonical_nodes()), mutated(file_nodes().map(encode_file_node))
    ),
    st.integers(0, 2**41),
)
def test_child_at_agrees_with_the_decoded_node(data: bytes, offset: int) -> None:
    # a provider finds the child under a byte without decoding the other links;
    # it must name the child the full decoder would, or fail as it does
    try:
        node = _decode_file_node_generic(data)
    except DecodingError:
        with pytest.raises(DecodingError):
            child_at(data, offset)
        return
    expected = None
    rest = offset - len(node.data)
    for link, size in zip(node.links, node.blocksizes, strict=True):
        if 0 <= rest < size:
            expected = (link.cid, rest)
            break
        rest -= size
    assert child_at(data, offset) == expected


def test_dag_pb_fast_path_is_taken_for_importer_nodes() -> None:
    importer = FileImporter(chunk_size=16, max_links=4)
    blocks = importer.feed(bytes(range(256)) * 4)
    blocks += importer.finish()[1]
    inner = [b for b in blocks if b.cid.codec == DAG_PB]
    assert inner
    for block in inner:
        assert _decode_canonical(block.data) == decode_file_node(block.data)


@PROPS
@given(st.lists(st.integers(0, 2**40), max_size=8), st.binary(max_size=16))
def test_unixfs_packed_blocksizes_and_bad_fields(sizes: list[int], junk: bytes) -> None:
    # Other writers pack blocksizes; a truncated packed list is a DecodingError.
    packed = b"".join(encode_uvarint(s) for s in sizes)
    node_links = [Link(CID(RAW, bytes(32)), s) for s in sizes]
    data = pb.field_varint(1, 2) + pb.field_varint(3, sum(sizes)) + pb.field_bytes(4, packed)
    assert decode_file_node(encode_dag_pb(node_links, data)).blocksizes == tuple(sizes)
    if packed:
        bad = pb.field_varint(1, 2) + pb.field_bytes(4, packed[:-1] + b"\x80")
        with pytest.raises(DecodingError):
            decode_file_node(encode_dag_pb(node_links, bad))
    decodes_or_raises(decode_file_node, encode_dag_pb(node_links, data + junk))


def test_dag_pb_oversized_block_is_refused() -> None:
    inline = bytes(MAX_BLOCK_SIZE)
    block = encode_dag_pb([], encode_unixfs_file(len(inline), [], inline))
    with pytest.raises(DecodingError):
        decode_file_node(block)


def test_dag_pb_structural_errors() -> None:
    good_data = encode_unixfs_file(0, [])
    for bad in [
        b"",  # no Data
        encode_dag_pb([], encode_unixfs_file(5, [])),  # filesize lies
        encode_dag_pb([Link(CID(RAW, bytes(32)), 1)], encode_unixfs_file(0, [])),  # no sizes
        encode_dag_pb([], pb.field_varint(1, 1)),  # a directory
        encode_dag_pb([], good_data) + pb.field_bytes(1, good_data),  # Data twice
        pb.field_bytes(2, pb.field_bytes(2, b"\xff")) + pb.field_bytes(1, good_data),
        pb.field_bytes(2, pb.field_varint(3, 1)) + pb.field_bytes(1, good_data),  # no Hash
        pb.field_bytes(7, b"") + pb.field_bytes(1, good_data),  # unknown PBNode field
    ]:
        with pytest.raises(DecodingError):
            decode_file_node(bad)


# -- bitswap_msg.py ------------------------------------------------------------------

small_blocks = st.builds(
    lambda codec, data: Block(CID.for_block(codec, data), data),
    st.sampled_from([RAW, DAG_PB]),
    st.binary(max_size=64),
)
want_entries = st.builds(
    WantEntry,
    cids,
    st.sampled_from(WantType),
    int32s,
    st.booleans(),
    st.booleans(),
    st.none() | st.integers(0, 2**64 - 1),  # path_to
)
messages = st.builds(
    BitswapMessage,
    st.lists(want_entries, max_size=5).map(tuple),
    st.booleans(),
    st.lists(small_blocks, max_size=3).map(tuple),
    st.lists(st.tuples(cids, st.sampled_from(Presence)), max_size=4).map(tuple),
    int32s,
)


@PROPS
@given(messages)
def test_bitswap_roundtrip(message: BitswapMessage) -> None:
    assert msg.decode(msg.encode(message)) == message


@PROPS
@given(st.one_of(st.binary(max_size=300), mutated(messages.map(msg.encode))))
def test_bitswap_garbage(data: bytes) -> None:
    decoded = decodes_or_raises(msg.decode, data)
    if decoded is not None:
        # However it was framed, a decoded block is filed under the CID it hashes to.
        assert all(b.cid.matches(b.data) for b in decoded.blocks)
        assert len(decoded.wants) <= msg.MAX_WANTS


def test_bitswap_oversized_is_refused() -> None:
    with pytest.raises(DecodingError):
        msg.decode(bytes(msg.MAX_MESSAGE + 1))
    big = bytes(MAX_BLOCK_SIZE + 1)
    payload = pb.field_bytes(1, CID(RAW, bytes(32)).prefix()) + pb.field_bytes(2, big)
    with pytest.raises(DecodingError):
        msg.decode(pb.field_bytes(3, payload))
    with pytest.raises(DecodingError):
        msg.decode(pb.field_bytes(2, big))
    want = WantEntry(CID(RAW, bytes(32)))
    with pytest.raises(DecodingError):
        msg.decode(msg.encode(BitswapMessage(wants=(want,) * (msg.MAX_WANTS + 1))))
    presence = (CID(RAW, bytes(32)), Presence.HAVE)
    with pytest.raises(DecodingError):
        msg.decode(msg.encode(BitswapMessage(presences=(presence,) * (msg.MAX_PRESENCES + 1))))


def _want_message(*fields: bytes) -> bytes:
    entry = pb.field_bytes(1, CID(RAW, bytes(32)).to_bytes()) + b"".join(fields)
    return pb.field_bytes(1, pb.field_bytes(1, entry))


@PROPS
@given(st.integers(2, 2**64 - 1))
def test_bitswap_unknown_enums_are_refused(value: int) -> None:
    with pytest.raises(DecodingError):
        msg.decode(_want_message(pb.field_varint(4, value)))
    presence = pb.field_bytes(1, CID(RAW, bytes(32)).to_bytes()) + pb.field_varint(2, value)
    with pytest.raises(DecodingError):
        msg.decode(pb.field_bytes(4, presence))


@PROPS
@given(st.integers(2**31, 2**64 - 1))
def test_bitswap_int32_range(value: int) -> None:
    # Negative int32s arrive sign-extended to 64 bits; anything else past 2**31 is refused.
    fits = value >= 2**64 - 2**31
    for data in (_want_message(pb.field_varint(2, value)), pb.field_varint(5, value)):
        assert (decodes_or_raises(msg.decode, data) is not None) == fits
    with pytest.raises(DecodingError):  # a wrong wire type
        msg.decode(pb.field_bytes(5, b"\x01"))


# -- announce.py ------------------------------------------------------------------------

announcements = st.builds(
    announce.Announcement,
    st.floats(allow_nan=False),
    st.integers(announce.MIN_TTL, announce.MAX_TTL),
    st.lists(st.text(min_size=1, max_size=announce.MAX_ADDR_LEN), max_size=announce.MAX_ADDRS).map(
        tuple
    ),
    st.lists(cids, min_size=1, max_size=40).map(tuple),
)
announce_shaped = st.fixed_dictionaries(
    {
        "v": st.one_of(st.just(1), cbor_values),
        "t": st.one_of(st.floats(), cbor_values),
        "ttl": st.one_of(st.integers(0, 100_000), cbor_values),
        "addrs": st.one_of(st.lists(st.text(max_size=300), max_size=10), cbor_values),
        "roots": st.one_of(
            st.lists(st.one_of(cids.map(CID.to_bytes), cbor_values), max_size=8), cbor_values
        ),
    }
).map(cbor2.dumps)


@PROPS
@given(announcements)
def test_announce_roundtrip(ann: announce.Announcement) -> None:
    assert announce.decode(announce.encode(ann)) == ann


@PROPS
@given(
    st.one_of(
        st.binary(max_size=200),
        cbor_values.map(cbor2.dumps),
        announce_shaped,
        mutated(announcements.map(announce.encode)),
    )
)
def test_announce_garbage(data: bytes) -> None:
    ann = decodes_or_raises(announce.decode, data)
    if ann is not None:
        assert not math.isnan(ann.timestamp)
        assert announce.MIN_TTL <= ann.ttl <= announce.MAX_TTL
        assert 0 < len(ann.roots) <= announce.MAX_ROOTS


@SLOW_PROPS
@given(st.one_of(st.binary(max_size=200), announce_shaped))
def test_announce_validator_never_raises(data: bytes) -> None:
    validator = announce.AnnounceValidator(AllowlistOracle(allow_all=True))
    accepted = trio.run(lambda: validator(PEER, PEER, data))
    assert accepted == (validator.accepted == 1)
    assert accepted or sum(validator.rejected.values()) == 1


@PROPS
@given(st.one_of(st.integers(2**53 + 1, 2**2000), st.integers(-(2**2000), -(2**53) - 1)))
def test_announce_bignum_time_is_refused(t: int) -> None:
    # float(t) of a CBOR bignum overflowed: an OverflowError escaped the decoder.
    raw = cbor2.dumps(
        {"v": 1, "t": t, "ttl": 60, "addrs": [], "roots": [CID(RAW, bytes(32)).to_bytes()]}
    )
    with pytest.raises(DecodingError):
        announce.decode(raw)


def test_announce_oversized_is_refused() -> None:
    with pytest.raises(DecodingError):
        announce.decode(bytes(announce.MAX_BYTES + 1))
    too_many = announce.Announcement(0.0, 60, (), (CID(RAW, bytes(32)),) * (announce.MAX_ROOTS + 1))
    raw = cbor2.dumps(
        {"v": 1, "t": 0.0, "ttl": 60, "addrs": [], "roots": [c.to_bytes() for c in too_many.roots]}
    )
    with pytest.raises(DecodingError):
        announce.decode(raw)
    with pytest.raises(ValueError):
        announce.encode(
            announce.Announcement(0.0, 60, (), (CID(RAW, bytes(32)),) * 2000)
        )  # the encoder refuses to build what every decoder would refuse
    long_addr = cbor2.dumps(
        {"v": 1, "t": 0.0, "ttl": 60, "addrs": ["x" * 257], "roots": [bytes(34)]}
    )
    with pytest.raises(DecodingError):
        announce.decode(long_addr)


# -- upload.py ----------------------------------------------------------------------------

header_names = st.text(max_size=upload.MAX_NAME)
header_sizes = st.one_of(st.none(), st.integers(0, 2**64))


@PROPS
@given(header_names, header_sizes)
def test_upload_header_roundtrip(name: str, size: int | None) -> None:
    assert upload.decode_header(cbor2.dumps({"name": name, "size": size})) == (name, size)


@PROPS
@given(
    st.one_of(
        st.binary(max_size=100),
        cbor_values.map(cbor2.dumps),
        st.fixed_dictionaries({"name": cbor_values, "size": cbor_values}).map(cbor2.dumps),
    )
)
def test_upload_header_garbage(data: bytes) -> None:
    decodes_or_raises(upload.decode_header, data)


def test_upload_header_oversized_is_refused() -> None:
    with pytest.raises(DecodingError):
        upload.decode_header(cbor2.dumps({"name": "x" * (upload.MAX_NAME + 1), "size": 1}))
    with pytest.raises(DecodingError):
        upload.decode_header(cbor2.dumps({"name": "", "size": 2**40000}))


@st.composite
def upload_wire(draw: st.DrawFn) -> tuple[bytes, bytes, bool]:
    """(file bytes, what a client sends, whether the send is a complete valid upload)."""
    payload = draw(st.binary(max_size=1200))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    bounds = [0, *cuts, len(payload)]
    pieces = [payload[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    size = draw(st.sampled_from([None, len(payload), len(payload) + 1, max(len(payload) - 1, 0)]))
    header = cbor2.dumps({"name": draw(st.text(max_size=8)), "size": size})
    sent = wire.frame(header) + b"".join(wire.frame(p) for p in pieces) + wire.frame(b"")
    valid = size is None or size == len(payload)
    how = draw(st.sampled_from(["as is", "mutate", "garbage", "oversized"]))
    if how == "mutate":
        mangled = draw(mutated(st.just(sent)))
        return payload, mangled, valid and mangled == sent
    if how == "garbage":
        return payload, draw(st.binary(max_size=64)), False
    if how == "oversized":
        limit = draw(st.sampled_from([upload.MAX_HEADER, upload.MAX_DATA_FRAME]))
        prefix = encode_uvarint(limit + draw(st.integers(1, 2**40)))
        body = wire.frame(header) + prefix if limit == upload.MAX_DATA_FRAME else prefix
        return payload, body + draw(st.binary(max_size=32)), False
    return payload, sent, valid


async def _pinned(cid: CID) -> None:
    await trio.lowlevel.checkpoint()


def test_upload_handler_takes_whole_uploads_and_nothing_else(tmp_path: Path) -> None:
    from protocols.unixfs import import_bytes

    with BlockStore.open(tmp_path / "store") as store:
        service = upload.UploadService(store, _pinned)

        @SLOW_PROPS
        @given(upload_wire(), st.data())
        def check(case: tuple[bytes, bytes, bool], data: st.DataObject) -> None:
            payload, sent, valid = case
            reset = data.draw(st.booleans())
            stream = ScriptedStream(data.draw(split(sent)), reset_at_end=reset)
            before_blocks, before_pins = store.stats().blocks, {p.cid for p in store.pins()}
            try:
                run_bounded(lambda: service.handle(stream))
            except StreamError:
                assert reset  # only a broken stream may surface, and only as StreamError
            got = replies(bytes(stream.written), upload.MAX_HEADER)
            assert store.open_sessions() == []
            assert len(got) <= 1
            if got and got[0]["ok"]:
                root = CID.parse(got[0]["cid"])
                assert store.is_pinned(root) and store.missing_blocks(root) == []
                if valid:
                    assert got[0] == {
                        "ok": True,
                        "cid": str(import_bytes(payload)[0]),
                        "size": len(payload),
                    }
            else:
                assert not valid  # a whole, honest upload is always taken
                # A refused or broken upload pins nothing and leaves no block behind.
                assert {p.cid for p in store.pins()} == before_pins
                assert store.stats().blocks == before_blocks

        check()


# -- query.py -----------------------------------------------------------------------------


@st.composite
def query_requests(draw: st.DrawFn) -> tuple[int, str, dict[str, Any]]:
    msg_id = draw(st.integers(0, 2**63 - 1))
    op = draw(st.sampled_from(query.OPS))
    args: dict[str, Any] = {"cid": draw(cids)} if op in ("providers", "replicate") else {}
    return msg_id, op, args


def encode_request(req: tuple[int, str, dict[str, Any]]) -> bytes:
    msg_id, op, args = req
    obj: dict[str, Any] = {"id": msg_id, "op": op}
    if "cid" in args:
        obj["cid"] = args["cid"].to_bytes()
    return cbor2.dumps(obj)


@PROPS
@given(query_requests())
def test_query_request_roundtrip(req: tuple[int, str, dict[str, Any]]) -> None:
    assert query.decode_request(encode_request(req)) == req


@PROPS
@given(
    st.one_of(
        st.binary(max_size=100),
        cbor_values.map(cbor2.dumps),
        st.fixed_dictionaries(
            {"id": cbor_values, "op": st.one_of(st.sampled_from(query.OPS), cbor_values)},
            optional={"cid": cbor_values, "x": cbor_values},
        ).map(cbor2.dumps),
        mutated(query_requests().map(encode_request)),
    )
)
def test_query_request_garbage(data: bytes) -> None:
    req = decodes_or_raises(query.decode_request, data)
    if req is not None:
        assert req[1] in query.OPS


Decoder = Callable[[bytes], object]


@PROPS
@given(
    st.one_of(
        announcements.map(lambda a: (announce.decode, announce.encode(a))),
        query_requests().map(lambda r: (query.decode_request, encode_request(r))),
        st.tuples(header_names, header_sizes).map(
            lambda h: (upload.decode_header, cbor2.dumps({"name": h[0], "size": h[1]}))
        ),
    ),
    st.binary(min_size=1, max_size=16),
)
def test_a_cbor_message_with_bytes_after_it_is_refused(
    case: tuple[Decoder, bytes], junk: bytes
) -> None:
    # one message, one encoding: a decoder that stopped after the item would
    # take two different byte strings (say, two gossip message IDs) as one
    decode, data = case
    decode(data)
    with pytest.raises(DecodingError):
        decode(data + junk)


def test_query_request_oversized_is_refused() -> None:
    with pytest.raises(DecodingError):
        query.decode_request(cbor2.dumps({"id": 1, "op": "peers"}) + bytes(query.MAX_REQUEST))
    with pytest.raises(DecodingError):
        query.decode_request(cbor2.dumps({"id": 2**64, "op": "peers"}))


async def _answer(op: str, args: dict[str, Any]) -> dict[str, Any]:
    await trio.lowlevel.checkpoint()
    if op == "info":
        raise RuntimeError("boom")  # an answer that fails becomes an error reply
    return {"op": op}


@SLOW_PROPS
@given(
    st.one_of(
        query_requests().map(encode_request).map(wire.frame),
        mutated(query_requests().map(encode_request).map(wire.frame)),
        st.binary(max_size=64),
        st.integers(query.MAX_REQUEST + 1, 2**62).map(encode_uvarint),
    ),
    st.data(),
)
def test_query_serve_on_any_bytes(sent: bytes, data: st.DataObject) -> None:
    stream = ScriptedStream(data.draw(split(sent)), reset_at_end=data.draw(st.booleans()))
    try:
        run_bounded(lambda: query.serve(stream, _answer))
    except (DecodingError, StreamError):
        assert stream.written == b""
        return
    if sent == b"":  # the stream ended before any query (a liveness probe): no reply
        assert stream.written == b""
        return
    (reply,) = replies(bytes(stream.written), query.MAX_RESPONSE)
    assert isinstance(reply["id"], int)
    assert set(reply) in ({"id", "op"}, {"id", "error"})


@SLOW_PROPS
@given(
    st.one_of(
        st.builds(lambda d: cbor2.dumps(d), st.dictionaries(st.text(max_size=5), cbor_values)),
        cbor_values.map(cbor2.dumps),
        st.binary(max_size=64),
    ),
    st.booleans(),
    st.data(),
)
def test_query_ask_on_any_reply(body: bytes, framed: bool, data: st.DataObject) -> None:
    reply_bytes = wire.frame(body) if framed else body
    stream = ScriptedStream(data.draw(split(reply_bytes)), reset_at_end=data.draw(st.booleans()))
    try:
        reply = run_bounded(lambda: query.ask(stream, "peers"))
    except (DecodingError, ProtocolError, StreamError):
        return
    assert isinstance(reply, dict) and "error" not in reply


def _echo(extra: dict[str, Any], id_shift: int = 0) -> Callable[[bytes], bytes]:
    """A responder that answers the request it was sent, with its id moved by ``id_shift``."""

    def respond(written: bytes) -> bytes:
        request = cbor2.loads(written[1:])  # requests are under 128 bytes: 1-byte prefix
        return wire.frame(cbor2.dumps({"id": request["id"] + id_shift, **extra}))

    return respond


@PROPS
@given(st.integers(-(2**40), 2**40), st.sampled_from(list(query.OPS)))
def test_query_ask_matches_ids(id_shift: int, op: str) -> None:
    async def go() -> None:
        args = {"cid": CID(RAW, bytes(32))} if op in ("providers", "replicate") else {}
        good = ScriptedStream(respond=_echo({"ok": 1}))
        assert (await query.ask(good, op, **args))["ok"] == 1
        refused = ScriptedStream(respond=_echo({"error": "no"}))
        with pytest.raises(ProtocolError):
            await query.ask(refused, op, **args)
        wrong = ScriptedStream(respond=_echo({"ok": 1}, id_shift or 1))
        with pytest.raises(DecodingError):
            await query.ask(wrong, op, **args)
        silent = ScriptedStream()
        with pytest.raises(ProtocolError):
            await query.ask(silent, op, **args)

    run_bounded(go)


# -- wire.py: FrameReader ----------------------------------------------------------------


async def read_frames(stream: ScriptedStream, max_size: int) -> list[bytes]:
    reader = wire.FrameReader(stream)
    out = []
    while (payload := await reader.read_frame(max_size)) is not None:
        out.append(payload)
    return out


@PROPS
@given(st.lists(st.binary(max_size=300), max_size=6), st.data())
def test_frames_roundtrip(frames: list[bytes], data: st.DataObject) -> None:
    sent = b"".join(wire.frame(f) for f in frames)
    stream = ScriptedStream(data.draw(split(sent)))
    assert run_bounded(lambda: read_frames(stream, 300)) == frames


@PROPS
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=4), st.data())
def test_truncated_frames(frames: list[bytes], data: st.DataObject) -> None:
    sent = b"".join(wire.frame(f) for f in frames)
    boundaries = {0}
    for f in frames:
        boundaries.add(max(boundaries) + len(wire.frame(f)))
    cut = data.draw(st.integers(0, len(sent)))
    stream = ScriptedStream(data.draw(split(sent[:cut])))
    try:
        got = run_bounded(lambda: read_frames(stream, 300))
    except DecodingError:
        assert cut not in boundaries
        return
    assert cut in boundaries and got == frames[: len(got)]


@PROPS
@given(st.binary(max_size=200), st.integers(0, 1000), st.data())
def test_frame_reader_on_garbage(sent: bytes, max_size: int, data: st.DataObject) -> None:
    reset = data.draw(st.booleans())
    stream = ScriptedStream(data.draw(split(sent)), reset_at_end=reset)
    try:
        frames = run_bounded(lambda: read_frames(stream, max_size))
    except DecodingError:
        return
    except StreamError:
        assert reset
        return
    assert all(len(f) <= max_size for f in frames)
    assert sum(len(wire.frame(f)) for f in frames) <= len(sent)


@PROPS
@given(st.integers(0, 2**20), st.integers(1, 2**62), st.binary(max_size=64))
def test_oversized_frame_is_refused(max_size: int, extra: int, tail: bytes) -> None:
    stream = ScriptedStream([encode_uvarint(max_size + extra) + tail])
    with pytest.raises(DecodingError):
        run_bounded(lambda: wire.FrameReader(stream).read_frame(max_size))


def test_frame_length_prefix_bounds() -> None:
    too_long = ScriptedStream([b"\x80" * 10 + b"\x01"])
    with pytest.raises(DecodingError):
        run_bounded(lambda: wire.FrameReader(too_long).read_frame(2**80))
    short = ScriptedStream([b"abc"])
    with pytest.raises(DecodingError):
        run_bounded(lambda: wire.FrameReader(short).read_exact(4))


# -- multistream lines (p2p.host: an optimistic stream reads the answer itself) ----------


def _line(text: str) -> bytes:
    body = text.encode() + b"\n"
    return encode_uvarint(len(body)) + body


@PROPS
@given(st.text(max_size=200).filter(lambda t: "\n" not in t), st.binary(max_size=64))
def test_multistream_line_roundtrip(text: str, after: bytes) -> None:
    data = _line(text) + after
    assert multistream_line(data) == (text, after)
    for cut in range(len(data) - len(after)):
        assert multistream_line(data[:cut]) is None  # incomplete: read more


@PROPS
@given(st.binary(max_size=100))
def test_multistream_line_garbage(data: bytes) -> None:
    try:
        taken = multistream_line(data)
    except ValueError:
        return
    if taken is not None:
        text, rest = taken
        assert _line(text) + rest == data


def test_multistream_line_bounds() -> None:
    with pytest.raises(ValueError):
        multistream_line(b"\xff\xff\x01")  # a length over two bytes
    with pytest.raises(ValueError):
        multistream_line(encode_uvarint(2000) + bytes(2000))  # over 1 KiB
    with pytest.raises(ValueError):
        multistream_line(b"\x02ab")  # no newline
    with pytest.raises(ValueError):
        multistream_line(b"\x82\x00ab")  # a length not minimally encoded
