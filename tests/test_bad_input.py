"""Bad input against real nodes on 127.0.0.1: every protocol, then the data directory.

Mallory is a bare libp2p host (no Coliving engine) that opens raw streams to
alice and writes whatever it likes. Each case checks that alice ends the
stream or answers with an error, records the misbehaviour where she keeps
such a record, stores nothing unverified, pins nothing partial, and still
serves an honest client afterwards.

Every wait is on an event inside ``trio.fail_after``: handlers are wrapped
(:class:`HandlerWatch`) so the test knows when alice is done with a stream.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import cbor2
import pytest
import trio

from chain.oracle import AllowlistOracle
from gateway.health import health_body
from gateway.metrics import NodeCollector
from node import Client, Node
from p2p.abc import GossipMessage, Stream, StreamError, StreamHandler
from p2p.gossip import Gossip
from p2p.host import DialError, Host, HostConfig, peer_id_of_key
from p2p.keys import NodeKey
from protocols import announce, query, upload
from protocols import bitswap_msg as msg
from protocols.bitswap_msg import BitswapMessage, WantEntry
from protocols.cid import CID, RAW, decode_uvarint, encode_uvarint
from protocols.conduct import MALFORMED
from protocols.errors import ProtocolError
from protocols.unixfs import Block, import_bytes
from protocols.wire import FrameReader, frame
from simnet.local import start_nodes
from store.blockstore import BlockStore
from tests.conftest import chunks
from tests.test_crash import start_node_process

WAIT = 20  # seconds: a generous deadline for any one network step on a loaded machine
PAYLOAD = os.urandom(3 * 262_144 + 4321)


class HandlerWatch:
    """Wraps a stream handler: counts finished streams, keeps what they raised."""

    def __init__(self) -> None:
        self.finished = 0
        self.raised: list[BaseException] = []
        self._changed = trio.Event()

    def wrap(self, handler: StreamHandler) -> StreamHandler:
        async def watched(stream: Stream) -> None:
            try:
                await handler(stream)
            except BaseException as exc:
                self.raised.append(exc)
                raise
            finally:
                self.finished += 1
                self._changed.set()
                self._changed = trio.Event()

        return watched

    async def wait_finished(self, n: int) -> None:
        while self.finished < n:
            await self._changed.wait()

    def only_stream_errors(self) -> bool:
        # The host adapter turns a StreamError into a reset; anything else would
        # escape into libp2p's handler machinery: a bug.
        return all(isinstance(e, StreamError) for e in self.raised)


@dataclass
class Scene:
    alice: Node
    mallory: Host
    root: CID
    blocks: list[Block]
    bitswap: HandlerWatch = field(default_factory=HandlerWatch)
    uploads: HandlerWatch = field(default_factory=HandlerWatch)
    queries: HandlerWatch = field(default_factory=HandlerWatch)
    gossip: Gossip | None = None

    async def open(self, protocol: str) -> Stream:
        return await self.mallory.open_stream(self.alice.peer_id, [protocol])


@contextlib.asynccontextmanager
async def scene(tmp_path: Path, *, gossip: bool = False) -> AsyncIterator[Scene]:
    """Alice (a node holding PAYLOAD) and Mallory (a bare host connected to her).

    With ``gossip`` Mallory also runs gossipsub, started before she dials so
    that both sides see the connection as a pubsub peer.
    """
    async with trio.open_nursery() as nursery:
        (alice,) = await start_nodes(nursery, tmp_path, 1, names=["alice"])
        root = await alice.add(chunks(PAYLOAD), name="track")
        mallory = Host(NodeKey.generate(), HostConfig())
        await nursery.start(mallory.run)
        s = Scene(alice, mallory, root, import_bytes(PAYLOAD)[1])
        if gossip:
            s.gossip = Gossip(mallory)
            await nursery.start(s.gossip.run)
        for proto in msg.PROTOCOLS:
            handler = functools.partial(alice.bitswap._handle_stream, proto)
            alice.host.set_handler(proto, s.bitswap.wrap(handler))
        alice.host.set_handler(upload.PROTOCOL, s.uploads.wrap(alice._gated(alice.uploads.handle)))
        alice.host.set_handler(query.PROTOCOL, s.queries.wrap(alice._gated(alice._serve_query)))
        with trio.fail_after(WAIT):
            await mallory.connect(alice.host.addrs()[0])
        yield s
        nursery.cancel_scope.cancel()


async def drain(stream: Stream) -> bytes:
    """Read until the peer closes (b"") or resets (StreamError); what came back."""
    got = bytearray()
    with contextlib.suppress(StreamError):
        while chunk := await stream.read(1 << 16):
            got += chunk
    return bytes(got)


async def send_quietly(stream: Stream, data: bytes, end: str) -> None:
    """Write ``data``, then end the stream: "half" (close_write), "close", or "open".

    Random garbage is sent "half": a random length prefix may announce a frame
    longer than what follows, and alice rightly waits for the rest until EOF.
    """
    with contextlib.suppress(StreamError):
        await stream.write(data)
        if end == "half":
            await stream.close_write()
        elif end == "close":
            await stream.close()


async def assert_still_serves(alice: Node, root: CID) -> None:
    """An honest client fetches the file from alice after the attack."""
    async with trio.open_nursery() as nursery:
        client = Client()
        await nursery.start(client.run)
        with trio.fail_after(WAIT):
            peer = await client.connect(alice.host.addrs()[0])
            fetch = await client.fetch(root, [peer])
            assert await fetch.read_all() == PAYLOAD
        nursery.cancel_scope.cancel()


def _set_if(condition: bool, event: trio.Event) -> None:
    if condition:
        event.set()


async def assert_refused(s: Scene, asks: dict[str, bytes]) -> None:
    """Mallory, banned, comes back. Alice closes her connection as it opens;
    and with that gate off, she resets Mallory's streams on every protocol."""
    addr = s.alice.host.addrs()[0]
    alice_saw, mallory_saw = trio.Event(), trio.Event()
    s.alice.host.on_disconnect.append(lambda p: _set_if(p == s.mallory.peer_id, alice_saw))
    s.mallory.on_disconnect.append(lambda p: _set_if(p == s.alice.peer_id, mallory_saw))
    with trio.fail_after(WAIT):
        try:
            await s.mallory.connect(addr)
        except DialError:
            pass  # closed before her side of the dial completed: she never saw it open
        else:
            await mallory_saw.wait()
        await alice_saw.wait()
    assert not s.alice.host.is_connected(s.mallory.peer_id)
    assert isinstance(s.alice.host, Host)
    s.alice.host.refuse = lambda peer: False  # the streams' gate alone
    with trio.fail_after(WAIT):
        await s.mallory.connect(addr)
    for protocol, ask in asks.items():
        with trio.fail_after(WAIT), contextlib.suppress(StreamError):
            # (the reset can cut the protocol's negotiation short: a StreamError)
            again = await s.open(protocol)
            await send_quietly(again, ask, "open")
            assert await drain(again) == b""
    assert s.alice.host.is_connected(s.mallory.peer_id)  # only her streams were refused


def store_snapshot(store: BlockStore) -> tuple[int, set[CID], list[str]]:
    return store.stats().blocks, {p.cid for p in store.pins()}, store.open_sessions()


# -- bitswap ---------------------------------------------------------------------


def _want_frame(root: CID) -> bytes:
    return frame(msg.encode(BitswapMessage(wants=(WantEntry(root),))))


# Garbage starts with a length prefix too long to be one, so that it is always
# malformed: random bytes could announce a frame longer than what follows, and
# a frame the stream ends inside is no offence (the peer may have crashed).
GARBAGE = b"\xff" * 11

BITSWAP_CASES: dict[str, tuple[Callable[[CID], bytes], str, bool]] = {
    # name: (bytes, how the stream ends, whether it is an offence)
    "garbage": (lambda root: GARBAGE + os.urandom(64), "half", True),
    "garbage in a frame": (lambda root: frame(b"\x0a\x05\xff\xff\xff\xff\xff"), "open", True),
    "truncated frame": (lambda root: _want_frame(root)[:-7], "half", False),
    "oversized length prefix": (
        lambda root: encode_uvarint(msg.MAX_MESSAGE + 1) + os.urandom(100),
        "open",
        True,
    ),
    "valid frame then garbage": (lambda root: _want_frame(root) + frame(b"\xff" * 9), "open", True),
    "closed mid-frame": (lambda root: _want_frame(root)[:5], "close", False),
}


@pytest.mark.parametrize("case", list(BITSWAP_CASES))
async def test_bitswap_bad_input(tmp_path: Path, case: str) -> None:
    make, end, offence = BITSWAP_CASES[case]
    async with scene(tmp_path) as s:
        before = store_snapshot(s.alice.store)
        stream = await s.open(msg.PROTOCOL_120)
        with trio.fail_after(WAIT):
            await send_quietly(stream, make(s.root), end)
            if end != "close":
                await drain(stream)  # alice resets it
            await s.bitswap.wait_finished(1)
        assert s.bitswap.only_stream_errors()
        # Malformed Bitswap is a ban at once; a message cut short is nothing.
        assert (s.mallory.peer_id in s.alice.misbehaviour) == offence
        assert (s.mallory.peer_id in s.alice.bitswap.banned) == offence
        assert (s.mallory.peer_id in s.alice.conduct) == offence
        assert s.alice.conduct.offences["bitswap"] == offence
        assert store_snapshot(s.alice.store) == before
        await assert_still_serves(s.alice, s.root)


async def test_a_provider_that_vanishes_mid_message_is_not_banned(tmp_path: Path) -> None:
    """A provider whose connection is lost inside a message (it crashed, its
    network went) ends the stream just as one that stops writing: alice drops
    the message and holds nothing against it. She banned such a peer before."""
    async with scene(tmp_path) as s:
        stream = await s.open(msg.PROTOCOL_120)
        with trio.fail_after(WAIT):
            await send_quietly(stream, _want_frame(s.root)[:-7], "open")
            await s.mallory.disconnect(s.alice.peer_id)
            await s.bitswap.wait_finished(1)
        assert s.mallory.peer_id not in s.alice.conduct
        assert s.alice.conduct.points(s.mallory.peer_id) == 0
        assert not s.alice.misbehaviour
        with trio.fail_after(WAIT):  # and she takes it back at once
            await s.mallory.connect(s.alice.host.addrs()[0])
            again = await s.open(query.PROTOCOL)
            await send_quietly(again, PEERS_QUERY, "half")
            (reply,) = parse_frames(await drain(again))
        assert cbor2.loads(reply)["id"] == 7


async def test_bitswap_unsolicited_block_is_not_stored(tmp_path: Path) -> None:
    junk = os.urandom(1000)
    block = Block(CID.for_block(RAW, junk), junk)
    async with scene(tmp_path) as s:
        stream = await s.open(msg.PROTOCOL_120)
        with trio.fail_after(WAIT):
            await send_quietly(stream, frame(msg.encode(BitswapMessage(blocks=(block,)))), "half")
            await drain(stream)
            await s.bitswap.wait_finished(1)
        assert s.bitswap.only_stream_errors()
        assert "nobody asked" in s.alice.misbehaviour[s.mallory.peer_id]
        assert not s.alice.store.has(block.cid)
        # A banned peer's next stream is reset at once, on every protocol.
        await assert_refused(
            s, {msg.PROTOCOL_120: _want_frame(s.root), query.PROTOCOL: PEERS_QUERY}
        )
        await assert_still_serves(s.alice, s.root)


# -- upload ---------------------------------------------------------------------------

HEADER = frame(cbor2.dumps({"name": "evil", "size": None}))
BIG = os.urandom(9 << 20)  # over upload.STORE_BATCH_BYTES: blocks reach the store mid-upload


def _big_frames() -> bytes:
    return b"".join(frame(BIG[i : i + (1 << 20)]) for i in range(0, len(BIG), 1 << 20))


UPLOAD_CASES: dict[str, tuple[Callable[[], bytes], str, bool]] = {
    # name: (bytes, how the stream ends, whether it is an offence)
    "garbage": (lambda: GARBAGE + os.urandom(40), "half", True),
    "garbage header": (lambda: frame(b"\xa1\x61x\xff not a header"), "open", True),
    # a newer client's header: refused with a word, and no offence
    "unknown header key": (
        lambda: frame(cbor2.dumps({"name": "", "size": 1, "mime": "audio/wav"})) + frame(b"y"),
        "open",
        False,
    ),
    "truncated frame": (lambda: HEADER + frame(b"x" * 5000)[:-100], "half", False),
    "no end-of-file frame": (lambda: HEADER + frame(b"x" * 5000), "half", False),
    "oversized header prefix": (lambda: encode_uvarint(upload.MAX_HEADER + 1), "open", True),
    "oversized data prefix": (
        lambda: HEADER + encode_uvarint(upload.MAX_DATA_FRAME + 1),
        "open",
        True,
    ),
    "valid frames then garbage": (lambda: HEADER + _big_frames() + GARBAGE, "open", True),
    "more than declared": (
        lambda: frame(cbor2.dumps({"name": "", "size": 10})) + frame(b"y" * 11) + frame(b""),
        "open",
        True,
    ),
    "closed mid-frame": (lambda: HEADER + _big_frames() + frame(b"z" * 5000)[:99], "close", False),
}


@pytest.mark.parametrize("case", list(UPLOAD_CASES))
async def test_upload_bad_input(tmp_path: Path, case: str) -> None:
    make, end, offence = UPLOAD_CASES[case]
    async with scene(tmp_path) as s:
        before = store_snapshot(s.alice.store)
        stream = await s.open(upload.PROTOCOL)
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                # Write concurrently: alice may refuse before she has read it all.
                nursery.start_soon(send_quietly, stream, make(), end)
                replies = [] if end == "close" else await read_replies(stream)
            await s.uploads.wait_finished(1)
        assert s.uploads.only_stream_errors()
        assert all(r.get("ok") is False and r.get("error") for r in replies)
        assert len(replies) <= 1
        # Nothing pinned, nothing left behind, no session left open.
        assert store_snapshot(s.alice.store) == before
        assert s.alice.uploads.completed == 0 and s.alice.uploads.failed == 1
        # one malformed upload is part of a ban; one cut short is nothing
        assert s.alice.conduct.points(s.mallory.peer_id) == pytest.approx(
            MALFORMED if offence else 0, rel=0.01
        )
        assert s.mallory.peer_id not in s.alice.conduct
        await assert_still_serves(s.alice, s.root)


async def read_replies(stream: Stream) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    reader = FrameReader(stream)
    with contextlib.suppress(StreamError):
        while (payload := await reader.read_frame(upload.MAX_HEADER)) is not None:
            out.append(cbor2.loads(payload))
    return out


# -- query ----------------------------------------------------------------------------

PEERS_QUERY = frame(cbor2.dumps({"id": 7, "op": "peers"}))
QUERY_CASES: dict[str, tuple[bytes, str, bool, bool]] = {
    # name: (bytes, how the stream ends, whether a reply to id 7 comes back,
    #        whether it is an offence)
    "garbage": (GARBAGE + os.urandom(30), "half", False, True),
    "garbage in a frame": (frame(b"\xff\x00 not cbor"), "open", False, True),
    "unknown op": (frame(cbor2.dumps({"id": 7, "op": "rm -rf"})), "open", True, False),
    "truncated frame": (PEERS_QUERY[:-3], "half", False, False),
    "oversized length prefix": (
        encode_uvarint(query.MAX_REQUEST + 1) + b"x" * 64,
        "open",
        False,
        True,
    ),
    "valid frame then garbage": (PEERS_QUERY + os.urandom(200), "open", True, False),
    "unknown key": (frame(cbor2.dumps({"id": 7, "op": "peers", "since": 3})), "open", True, False),
    "closed mid-frame": (PEERS_QUERY[:4], "close", False, False),
}


@pytest.mark.parametrize("case", list(QUERY_CASES))
async def test_query_bad_input(tmp_path: Path, case: str) -> None:
    data, end, answered, offence = QUERY_CASES[case]
    async with scene(tmp_path) as s:
        stream = await s.open(query.PROTOCOL)
        with trio.fail_after(WAIT):
            await send_quietly(stream, data, end)
            reply = b"" if end == "close" else await drain(stream)
            await s.queries.wait_finished(1)
        assert s.queries.only_stream_errors()
        if answered:
            (payload,) = parse_frames(reply)
            assert cbor2.loads(payload)["id"] == 7
        else:
            assert reply == b""  # reset without a word
        assert s.alice.conduct.points(s.mallory.peer_id) == pytest.approx(
            MALFORMED if offence else 0, rel=0.01
        )
        await assert_still_serves(s.alice, s.root)


async def test_an_unknown_query_op_gets_an_error_naming_the_ops(tmp_path: Path) -> None:
    """A client newer than the node asks for an op it lacks: a clear error, not a reset."""
    async with scene(tmp_path) as s:
        stream = await s.open(query.PROTOCOL)
        with trio.fail_after(WAIT), pytest.raises(ProtocolError) as refused:
            await query.ask(stream, "rm -rf")
        assert "unknown query op 'rm -rf'" in str(refused.value)
        assert "providers, peers, info, replicate" in str(refused.value)


async def test_a_file_that_changes_while_it_uploads_is_the_clients_error(
    tmp_path: Path,
) -> None:
    """The client checks the size it declared: a file that grew or shrank is its
    own clear error, and the node holds nothing against it (it would count a
    size that does not add up as malformed)."""
    async with scene(tmp_path) as s:
        client = Client()
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            with trio.fail_after(WAIT):
                alice = await client.connect(s.alice.host.addrs()[0])
                for size, says in ((10, "grew"), (12, "shrank")):
                    with pytest.raises(upload.UploadError, match=says):
                        await client.upload(alice, chunks(b"x" * 11), size=size)
                await s.uploads.wait_finished(2)
            nursery.cancel_scope.cancel()
        assert s.alice.uploads.completed == 0 and s.alice.uploads.failed == 2
        assert s.alice.conduct.points(client.host.peer_id) == 0
        assert store_snapshot(s.alice.store)[1] == {s.root}


async def test_malformed_queries_add_up_to_a_ban_on_every_protocol(tmp_path: Path) -> None:
    """Three malformed queries are forgiven (each is reset); the fourth bans
    Mallory: alice drops her connection, closes the next one she makes, and
    resets her streams on every protocol; /metrics counts it."""
    async with scene(tmp_path) as s:
        gone = trio.Event()
        s.alice.host.on_disconnect.append(lambda peer: gone.set())
        for n in range(1, 5):
            stream = await s.open(query.PROTOCOL)
            with trio.fail_after(WAIT):
                await send_quietly(stream, frame(b"\xff\x00 not cbor"), "open")
                assert await drain(stream) == b""
                await s.queries.wait_finished(n)
            if n < 4:
                assert s.mallory.peer_id not in s.alice.conduct
                assert s.alice.conduct.points(s.mallory.peer_id) == pytest.approx(
                    n * MALFORMED, rel=0.01
                )
        assert s.mallory.peer_id in s.alice.conduct
        assert "malformed query" in s.alice.misbehaviour[s.mallory.peer_id]
        with trio.fail_after(WAIT):
            await gone.wait()
        (ban,) = (await health_body(s.alice))["banned"]
        assert ban["peer"] == s.mallory.peer_id and "malformed query" in ban["reason"]
        assert 0 < ban["seconds_left"] <= s.alice.conduct.bans.first
        metrics = {m.name: m for m in NodeCollector(s.alice).collect()}
        assert metrics["coliving_peers_banned"].samples[0].value == 1
        (offences,) = metrics["coliving_peer_offences"].samples
        assert offences.labels == {"protocol": "query"} and offences.value == 4
        await assert_refused(s, {query.PROTOCOL: PEERS_QUERY, upload.PROTOCOL: HEADER})
        assert s.alice.uploads.completed == s.alice.uploads.failed == 0
        await assert_still_serves(s.alice, s.root)


async def test_a_query_stream_ended_before_asking_is_no_offence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node's liveness probe opens a query stream and resets it: no answer,
    and no "bad query" line (there was one per probe: each connected member, every 30 s)."""
    async with scene(tmp_path) as s:
        with caplog.at_level(logging.INFO, logger="coliving.node"):
            stream = await s.open(query.PROTOCOL)
            with trio.fail_after(WAIT):
                await stream.reset()  # as Node's probe does
                await s.queries.wait_finished(1)
        assert s.queries.only_stream_errors()
        assert not [r for r in caplog.records if "bad query" in r.message]
        await assert_still_serves(s.alice, s.root)


def parse_frames(data: bytes) -> list[bytes]:
    out = []
    pos = 0
    while pos < len(data):
        length, pos = decode_uvarint(data, pos, max_bytes=10)
        out.append(data[pos : pos + length])
        pos += length
    return out


# -- gossip ---------------------------------------------------------------------------


def rejections(validator: announce.AnnounceValidator) -> int:
    # Counted, not all decisions: alice's own announcements pass her validator too.
    return sum(validator.rejected.values())


async def test_garbage_announcements_are_rejected(tmp_path: Path) -> None:
    async with scene(tmp_path, gossip=True) as s:
        validator, gossip = s.alice.validator, s.gossip
        assert gossip is not None
        # Mallory does not subscribe: she publishes to the topic's fanout, which is
        # alice as soon as mallory has heard her subscription (a mesh would need a
        # heartbeat first, and a publish to an empty mesh is silently lost).
        with trio.fail_after(WAIT):
            await gossip.wait_for_subscriber(s.alice.peer_id, announce.TOPIC)
        fake_root = import_bytes(b"mallory claims this")[0]
        well_formed = announce.encode(announce.Announcement(time.time(), 3600, (), (fake_root,)))
        attacks = [
            well_formed,  # well formed, but mallory is not staked: no offence
            os.urandom(100),
            cbor2.dumps({"v": 1, "t": 2**2000, "ttl": 60, "addrs": [], "roots": [b"x"]}),
            cbor2.dumps({"v": 1, "t": 0.0, "ttl": 60, "addrs": [], "roots": [b"\x01" * 40]}),
            bytes(announce.MAX_BYTES + 1),  # the fourth malformed: she is banned
        ]
        for attack in attacks:
            seen = rejections(validator)
            await gossip.publish(announce.TOPIC, attack)
            with trio.fail_after(WAIT):
                while rejections(validator) == seen:
                    await validator.verdict.wait()
        assert validator.rejected == {"malformed": 4, "unstaked": 1}
        # she signed each of them (gossipsub checked): they count against her
        assert s.alice.conduct.offences == {"announce": 4}
        assert "malformed announcement" in s.alice.misbehaviour[s.mallory.peer_id]
        assert s.alice.announcements_received == 0
        assert s.alice.store.providers(fake_root) == []
        await assert_still_serves(s.alice, s.root)


# -- the data directory and unreachable nodes ---------------------------------------------

COLIVING = [sys.executable, "-m", "node"]


def coliving(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*COLIVING, *args], capture_output=True, timeout=120, check=False)


async def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.to_thread.run_sync(lambda: coliving(*args))


def _corrupt_file(data_dir: Path) -> None:
    (data_dir / "store").mkdir(parents=True)
    (data_dir / "store" / "data.mdb").write_bytes(os.urandom(256 * 1024))


def _corrupt_pin(data_dir: Path) -> None:
    with BlockStore.open(data_dir / "store") as store:
        root, blocks = import_bytes(b"a pinned file")
        store.put_many(blocks)
        store.pin(root, size=13)
        with store._env.begin(write=True) as txn:
            txn.put(root.to_bytes(), cbor2.dumps(["not", "a", "pin"]), db=store._pins)
        store.begin_session("the process died here")


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [(_corrupt_file, b"cannot open the store"), (_corrupt_pin, b"is corrupt")],
)
async def test_corrupt_data_dir_is_a_clear_error(
    tmp_path: Path, corrupt: Callable[[Path], None], message: bytes
) -> None:
    corrupt(tmp_path)
    proc = await run_cli("node", "run", "--data-dir", str(tmp_path))
    assert proc.returncode == 1
    assert b"Traceback" not in proc.stderr
    assert message in proc.stderr


async def test_data_dir_in_use_is_a_clear_error(tmp_path: Path) -> None:
    first, _ = await start_node_process(tmp_path)
    try:
        proc = await run_cli("node", "run", "--data-dir", str(tmp_path))
    finally:
        first.kill()
        await first.wait()
    assert proc.returncode == 1
    assert b"Traceback" not in proc.stderr
    assert b"in use by another coliving process" in proc.stderr


def _closed_port_addr() -> str:
    # Port 9 (discard) is closed on loopback; the peer ID is well formed.
    return f"/ip4/127.0.0.1/tcp/9/p2p/{peer_id_of_key(NodeKey.generate())}"


async def test_fetch_from_unreachable_node_is_a_clear_error(tmp_path: Path) -> None:
    cid = str(import_bytes(PAYLOAD)[0])
    out = tmp_path / "out.bin"
    proc = await run_cli("get", cid, "-o", str(out), "--node", _closed_port_addr())
    assert proc.returncode == 1
    assert b"Traceback" not in proc.stderr
    assert b"dial" in proc.stderr
    assert not out.exists() and not (tmp_path / "out.bin.part").exists()

    async with trio.open_nursery() as nursery:
        client = Client()
        await nursery.start(client.run)
        with trio.fail_after(WAIT), pytest.raises(DialError):
            await client.connect(_closed_port_addr())
        nursery.cancel_scope.cancel()


async def test_a_banned_peers_announcements_are_ignored_until_its_ban_ends(
    tmp_path: Path,
) -> None:
    """Its ban drops a provider's records; its next announcements (forwarded by
    others, as gossip is) must not bring them back while the ban lasts."""
    async with scene(tmp_path) as s:
        oracle = s.alice.oracle
        assert isinstance(oracle, AllowlistOracle)
        oracle.allow(s.mallory.peer_id)  # staked: her announcements are taken
        first, second = (import_bytes(text)[0] for text in (b"first", b"second"))

        async def announces(*roots: CID) -> None:
            data = announce.encode(announce.Announcement(time.time(), 3600, (), roots))
            await s.alice._consume_announcements(
                _one(GossipMessage(announce.TOPIC, s.mallory.peer_id, data))
            )

        await announces(first)
        assert s.alice.store.providers(first) != []
        s.alice.bitswap.report_bad_peer(s.mallory.peer_id, "a block nobody asked for")
        assert s.alice.store.providers(first) == []
        await announces(first, second)
        assert s.alice.store.providers(first) == s.alice.store.providers(second) == []
        s.alice.conduct.bans._until[s.mallory.peer_id] = 0.0  # the ban ends
        await announces(second)
        assert s.alice.store.providers(second) != []


async def _one(message: GossipMessage) -> AsyncIterator[GossipMessage]:
    yield message
