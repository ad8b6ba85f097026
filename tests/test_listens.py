"""Listens: the signed text, the batch wire format, the counting rule, and
three staked discovery nodes sharing plays over real gossipsub.

The network tests run real libp2p hosts on 127.0.0.1, each node with its own
SQLite index filled identically, and the stake oracle of an embedded chain
(py-evm) on which the three are registered as discovery nodes.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from random import Random

import cbor2
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.listen import listen_message, recover_listen, sign_listen
from chain.local import LocalChain, open_chain
from chain.oracle import CONTENT_NODE, DISCOVERY_NODE
from discovery.listens import (
    Expiring,
    ListenConfig,
    ListenRejected,
    ListenService,
    ListenStats,
    PlayCounter,
    RateLimited,
    TokenBuckets,
    listen_id,
)
from node import Node, NodeConfig
from p2p.keys import NodeKey, PeerId
from protocols import listens as wire
from protocols.conduct import MALFORMED
from protocols.errors import DecodingError, UnsupportedError
from protocols.listens import AnonymousListen, ListenBatch, SignedListen
from simnet.local import wait_for_mesh
from store.index import IndexStore

WAIT = 30  # seconds: a generous bound on one network wait (a loaded 2-core CI box)

# -- the signed text --------------------------------------------------------------------


def test_listen_text_is_pinned_and_the_signature_recovers_the_wallet() -> None:
    text = listen_message(chain_id=31337, user_id=7, track_id=42, timestamp=1_700_000_000)
    assert text == (
        b"coliving-listen/1\nchain_id:31337\nuser_id:7\ntrack_id:42\ntimestamp:1700000000"
    )
    wallet = NodeKey.generate()
    fields = {"chain_id": 31337, "user_id": 7, "track_id": 42, "timestamp": 1_700_000_000}
    signature = sign_listen(wallet.secret, **fields)
    assert len(signature) == 65
    assert recover_listen(signature, **fields) == wallet.eth_address.lower()
    # each field is signed: changing any one recovers someone else
    for name in fields:
        changed = {**fields, name: fields[name] + 1}
        assert recover_listen(signature, **changed) != wallet.eth_address.lower()
    assert recover_listen(bytes(65), **fields) is None
    assert recover_listen(signature[:64], **fields) is None
    with pytest.raises(ValueError, match="user_id"):
        listen_message(chain_id=1, user_id=-1, track_id=1, timestamp=1)


# -- the wire format ----------------------------------------------------------------------

ints = st.integers(min_value=0, max_value=wire.MAX_INT)
signed_listens = st.builds(SignedListen, ints, ints, ints, st.binary(min_size=65, max_size=65))
anonymous_listens = st.builds(AnonymousListen, st.binary(min_size=16, max_size=16), ints, ints)
batches = st.builds(
    ListenBatch,
    st.lists(signed_listens | anonymous_listens, min_size=1, max_size=wire.MAX_LISTENS).map(tuple),
)


@given(batches)
@settings(max_examples=60, deadline=None)
def test_batch_round_trip(batch: ListenBatch) -> None:
    assert wire.decode(wire.encode(batch)) == batch


@given(st.binary(max_size=2048))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_decode_or_raise_decoding_error(data: bytes) -> None:
    with contextlib.suppress(DecodingError):
        wire.decode(data)


@given(batches, st.data())
@settings(max_examples=100, deadline=None)
def test_mutated_batches_decode_or_raise_decoding_error(
    batch: ListenBatch, data: st.DataObject
) -> None:
    encoded = bytearray(wire.encode(batch))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(encoded) - 1))
        encoded[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    for candidate in (bytes(encoded), bytes(encoded[:cut])):
        with contextlib.suppress(DecodingError):
            wire.decode(candidate)


def test_batch_bytes_are_pinned() -> None:
    batch = ListenBatch(
        (
            SignedListen(7, 42, 1_700_000_000, bytes(range(65))),
            AnonymousListen(bytes(16), 42, 1_700_000_001),
        )
    )
    encoded = wire.encode(batch)
    assert encoded == cbor2.dumps(
        {
            "v": 1,
            "listens": [
                {"user": 7, "track": 42, "ts": 1_700_000_000, "sig": bytes(range(65))},
                {"id": bytes(16), "track": 42, "ts": 1_700_000_001},
            ],
        }
    )
    # the bytes themselves: a change of the encoder is a change of the protocol
    assert encoded.hex() == (
        "a2617601676c697374656e7382a464757365720765747261636b182a6274731a"
        "6553f100637369675841000102030405060708090a0b0c0d0e0f101112131415"
        "161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435"
        "363738393a3b3c3d3e3f40a36269645000000000000000000000000000000000"
        "65747261636b182a6274731a6553f101"
    )


def test_a_full_batch_of_the_largest_listens_fits() -> None:
    big = SignedListen(wire.MAX_INT, wire.MAX_INT, wire.MAX_INT, bytes(65))
    assert len(wire.encode(ListenBatch((big,) * wire.MAX_LISTENS))) <= wire.MAX_BYTES


def _listen(**over: object) -> dict[str, object]:
    return {"user": 1, "track": 2, "ts": 3, "sig": bytes(65), **over}


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {"v": 1},
        {"v": 1, "listens": []},
        {"v": 1, "listens": [_listen()], "extra": 0},
        {"v": True, "listens": [_listen()]},
        {"v": 1, "listens": [_listen()] * (wire.MAX_LISTENS + 1)},
        {"v": 1, "listens": [_listen(sig=bytes(64))]},
        {"v": 1, "listens": [_listen(user=-1)]},
        {"v": 1, "listens": [_listen(track=2**63)]},
        {"v": 1, "listens": [_listen(ts=True)]},
        {"v": 1, "listens": [_listen(ts=1.5)]},
        {"v": 1, "listens": [{"id": bytes(15), "track": 1, "ts": 1}]},
        {"v": 1, "listens": [{"id": bytes(16), "track": 1, "ts": 1, "user": 1}]},
        {"v": 1, "listens": ["listen"]},
    ],
)
def test_malformed_batches_are_decoding_errors(obj: object) -> None:
    with pytest.raises(DecodingError):
        wire.decode(cbor2.dumps(obj))


def test_bounds_of_the_bytes() -> None:
    good = wire.encode(ListenBatch((SignedListen(1, 2, 3, bytes(65)),)))
    with pytest.raises(DecodingError, match="after its CBOR item"):
        wire.decode(good + b"\x00")
    with pytest.raises(DecodingError, match="over"):
        wire.decode(bytes(wire.MAX_BYTES + 1))
    # a newer version is no offence (UnsupportedError), but still refused
    with pytest.raises(UnsupportedError):
        wire.decode(cbor2.dumps({"v": 2, "listens": []}))
    with pytest.raises(ValueError, match="1 to"):
        wire.encode(ListenBatch(()))
    with pytest.raises(ValueError, match="sig"):
        wire.encode(ListenBatch((SignedListen(1, 2, 3, b"short"),)))


# -- the bounded parts ------------------------------------------------------------------


def test_token_buckets_refill_at_their_rate_and_are_bounded() -> None:
    now = [0.0]
    buckets = TokenBuckets[str](2.0, 3, max_keys=2, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token in half a second
    now[0] = 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("b") == 0.0  # another client has its own bucket
    buckets.take("c")  # a third: the least recent (a) is forgotten
    assert len(buckets) == 2
    assert buckets.take("a") == 0.0  # a forgotten client starts full


def test_expiring_set_forgets_at_expiry_and_the_soonest_first() -> None:
    seen = Expiring[str](max_size=3)
    seen.add("late", 30.0)
    seen.add("soon", 10.0)
    seen.add("mid", 20.0)
    seen.add("later", 40.0)  # over the bound: the one that expires soonest goes
    assert "soon" not in seen and len(seen) == 3 and seen.evicted == 1
    seen.prune(25.0)
    assert "mid" not in seen and "late" in seen and "later" in seen
    seen.discard("late")
    seen.add("late", 50.0)  # re-added after a discard: the stale heap entry is skipped
    seen.prune(45.0)
    assert "late" in seen and "later" not in seen


@given(
    st.lists(st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(0, 2000)), max_size=40),
    st.randoms(use_true_random=False),
)
@settings(max_examples=200, deadline=None)
def test_the_count_does_not_depend_on_arrival_order(
    listens: list[tuple[int, int, int]], rng: Random
) -> None:
    """Whatever the order (and the copies), a node counts one play per (user,
    track, window): the same at every node that accepted the same listens."""
    window = 180
    arrivals = [SignedListen(u, t, ts, b"") for u, t, ts in listens]
    arrivals += rng.sample(arrivals, len(arrivals) // 2)  # some arrive twice
    rng.shuffle(arrivals)
    counter = PlayCounter(max_age=86_400, max_remembered=1000)
    counted = sum(counter.admit(x, listen_id(x, 1), window, now=2000).counts for x in arrivals)
    assert counted == len({(u, t, ts // window) for u, t, ts in listens})


def test_the_counter_forgets_what_can_no_longer_recur() -> None:
    counter = PlayCounter(max_age=100, max_remembered=1000)
    first = SignedListen(1, 1, 1000, b"")
    assert counter.admit(first, listen_id(first, 1), 60, now=1000).counts
    assert len(counter) == 2  # its id and its window (960..1019)
    # 100 s after the window's last second nothing of it can be accepted: forgotten
    later = SignedListen(1, 1, 1200, b"")
    assert counter.admit(later, listen_id(later, 1), 60, now=1121).counts
    assert len(counter) == 2
    # a play that could not be stored is forgotten, so that it can count again
    admitted = counter.admit(SignedListen(2, 1, 1200, b""), b"x", 60, now=1200)
    counter.forget(admitted)
    assert counter.admit(SignedListen(2, 1, 1200, b""), b"x", 60, now=1200).counts


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        ListenConfig(max_batch=wire.MAX_LISTENS + 1)
    with pytest.raises(ValueError, match="positive"):
        ListenConfig(batch_interval=0)
    with pytest.raises(ValueError, match="whole"):
        ListenConfig(anonymous_burst=2.5)  # type: ignore[arg-type]


# -- three discovery nodes ----------------------------------------------------------------

LISTENER = NodeKey.generate()  # the user's wallet
USER_ID = 1
TRACK_ID = 10  # 180 s long: its counting windows are 180 s
DELETED_TRACK_ID = 11
DURATION = 180
FAST = ListenConfig(batch_interval=0.05, anonymous_burst=3, anonymous_rate=1e-6)


def populate(index: IndexStore) -> None:
    """One user (LISTENER's wallet) and two tracks, one deleted: the same at every node."""
    with index.block(1, b"\x01" * 32, bytes(32), 1_700_000_000) as w:
        w.put(
            "users",
            (USER_ID,),
            {
                "user_id": USER_ID,
                "wallet": LISTENER.eth_address.lower(),
                "handle": "listener",
                "handle_lc": "listener",
                "name": "Listener",
                "bio": None,
                "location": None,
                "profile_picture": None,
                "cover_photo": None,
                "created_block": 1,
                "created_at": 1_700_000_000,
                "updated_block": 1,
            },
        )
        for track_id, deleted in ((TRACK_ID, False), (DELETED_TRACK_ID, True)):
            w.put(
                "tracks",
                (track_id,),
                {
                    "track_id": track_id,
                    "owner_id": USER_ID,
                    "title": f"Song {track_id}",
                    "genre": "Electronic",
                    "mood": None,
                    "tags": [],
                    "description": None,
                    "release_date": None,
                    "duration": float(DURATION),
                    "stream_cid": "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
                    "original_cid": None,
                    "preview_cid": None,
                    "artwork": None,
                    "deleted": deleted,
                    "created_block": 1,
                    "created_at": 1_700_000_000,
                    "updated_block": 1,
                },
            )


@dataclass
class Net:
    chain: LocalChain
    nodes: list[Node]  # alice, bob, carol: staked discovery nodes, in a line
    services: list[ListenService]
    indexes: list[IndexStore]
    extra: dict[str, Node]  # started without a ListenService, bootstrapped from bob

    @property
    def chain_id(self) -> int:
        return self.chain.deployment.chain_id


@contextlib.asynccontextmanager
async def network(
    tmp_path: Path, *, config: ListenConfig = FAST, extra: dict[str, str | None] | None = None
) -> AsyncIterator[Net]:
    """alice - bob - carol, each with its own index and ListenService, and
    ``extra`` nodes (name -> service type they are registered as, or None)."""
    from store.sqlite_index import SqliteIndex

    chain = await open_chain()
    names = ["alice", "bob", "carol"]
    keys = {name: NodeKey.load_or_create(tmp_path / name) for name in [*names, *(extra or {})]}
    for name in names:
        await chain.register(keys[name], service_type=DISCOVERY_NODE)
    for name, service_type in (extra or {}).items():
        if service_type is not None:
            await chain.register(keys[name], service_type=service_type)
    indexes: list[IndexStore] = []
    try:
        async with trio.open_nursery() as nursery:
            nodes: list[Node] = []
            services: list[ListenService] = []
            for name in names:
                bootstrap = (nodes[-1].host.addrs()[0],) if nodes else ()
                cfg = NodeConfig.load(tmp_path / name, bootstrap=bootstrap)
                node = Node(cfg, key=keys[name], oracle=chain.oracle(poll_interval=0.1))
                await nursery.start(node.run)
                nodes.append(node)
                index = SqliteIndex(tmp_path / name / "index.sqlite")
                indexes.append(index)
                populate(index)
                service = ListenService(
                    index,
                    node.gossip,
                    node.oracle,
                    chain_id=chain.deployment.chain_id,
                    config=config,
                    on_malformed=offender(node),
                )
                await nursery.start(service.run)
                services.append(service)
            others: dict[str, Node] = {}
            for name in extra or {}:
                cfg = NodeConfig.load(tmp_path / name, bootstrap=(nodes[1].host.addrs()[0],))
                other = Node(cfg, key=keys[name], oracle=chain.oracle(poll_interval=0.1))
                await nursery.start(other.run)
                others[name] = other
            with trio.fail_after(WAIT):
                await wait_for_mesh(nodes, wire.TOPIC)
            yield Net(chain, nodes, services, indexes, others)
            nursery.cancel_scope.cancel()
    finally:
        for opened in indexes:
            opened.close()


def offender(node: Node) -> Callable[[PeerId, str], None]:
    """What the node does with a malformed batch's origin (as for announcements)."""

    def offend(peer: PeerId, reason: str) -> None:
        node.conduct.offend(peer, "listens", reason, MALFORMED)

    return offend


async def until(service: ListenService, check: Callable[[ListenStats], bool]) -> ListenStats:
    """Until ``check`` holds of the service's statistics (each change sets an event)."""
    with trio.fail_after(WAIT):
        while not check(stats := service.statistics()):
            await service.changed.wait()
    return stats


def plays(index: IndexStore, track_id: int = TRACK_ID) -> int:
    track = index.track(track_id)
    assert track is not None
    return int(track["play_count"])


def signed(
    net: Net, timestamp: int, *, key: NodeKey = LISTENER, **over: object
) -> dict[str, object]:
    fields = {"user_id": USER_ID, "track_id": TRACK_ID, "timestamp": timestamp}
    fields.update(over)  # type: ignore[arg-type]
    signature = sign_listen(
        key.secret,
        chain_id=net.chain_id,
        user_id=int(fields["user_id"]),
        track_id=int(fields["track_id"]),
        timestamp=int(fields["timestamp"]),
    )
    return {**fields, "signature": "0x" + signature.hex()}


def window_start() -> int:
    """The start of a 180 s window of TRACK_ID, half an hour ago (well inside max_age)."""
    return (int(time.time()) // DURATION - 10) * DURATION


async def test_a_listen_reported_at_one_node_is_counted_once_at_all_three(
    tmp_path: Path,
) -> None:
    async with network(tmp_path) as net:
        alice, bob, carol = net.services
        start = window_start()

        first = signed(net, start + 5)
        answer = await alice.report(first, "10.0.0.1")
        expected_id = listen_id(SignedListen(USER_ID, TRACK_ID, start + 5, b""), net.chain_id)
        assert answer == {"accepted": True, "id": expected_id.hex()}
        for service in net.services:
            await until(service, lambda s: s.counted == 1)
        assert [plays(i) for i in net.indexes] == [1, 1, 1]
        assert bob.statistics().batches_received == 1  # alice's, through gossipsub

        # the same listen again, at alice and at bob: the same id, no new play
        assert await alice.report(first, "10.0.0.1") == answer
        assert await bob.report(first, "10.0.0.2") == answer
        assert alice.statistics().duplicate == 1 and bob.statistics().duplicate == 1
        # another listen in the same window (within the track's length), at carol
        await carol.report(signed(net, start + 100), "10.0.0.3")
        assert carol.statistics().repeated == 1
        assert alice.statistics().batches_sent == 1  # neither was shared again

        # two listens of one window reported at two nodes at once: each node
        # counts the one it hears first, and one play in all
        before = [s.statistics().accepted for s in net.services]
        await alice.report(signed(net, start + DURATION + 1), "10.0.0.1")
        await carol.report(signed(net, start + DURATION + 170), "10.0.0.3")
        for service, accepted in zip(net.services, before, strict=True):
            await until(service, lambda s, n=accepted: s.accepted == n + 2)  # type: ignore[misc]
        assert [plays(i) for i in net.indexes] == [2, 2, 2]

        # an anonymous listen at bob counts everywhere too
        anonymous = await bob.report({"track_id": TRACK_ID}, "10.0.0.2")
        assert anonymous["accepted"] and len(bytes.fromhex(anonymous["id"])) == 16
        for service in net.services:
            await until(service, lambda s: s.counted == 3)
        assert [plays(i) for i in net.indexes] == [3, 3, 3]
        assert all(s.statistics().rejected == 0 for s in net.services)


async def test_forged_and_unfit_listens_are_refused_at_the_node_and_in_batches(
    tmp_path: Path,
) -> None:
    async with network(tmp_path) as net:
        alice, bob, carol = net.services
        start = window_start()
        mallory_wallet = NodeKey.generate()
        refused = {
            "signature is not the user's wallet": signed(net, start, key=mallory_wallet),
            "unknown user": signed(net, start, user_id=2),
            "unknown track": signed(net, start, track_id=99),
            "track is deleted": signed(net, start, track_id=DELETED_TRACK_ID),
            "in the future": signed(net, int(time.time()) + 3600),
            "too old": signed(net, int(time.time()) - 2 * 86_400),
            "keys": {"track_id": TRACK_ID, "user_id": USER_ID},
            "track_id must be an integer": {"track_id": "10"},
            "signature must be 65 bytes": {**signed(net, start), "signature": "0xabcd"},
        }
        for reason, body in refused.items():
            with pytest.raises(ListenRejected, match=reason):
                await alice.report(body, "10.0.0.1")
        # a signature for another chain is not one for this chain
        other_chain = sign_listen(
            LISTENER.secret,
            chain_id=net.chain_id + 1,
            user_id=USER_ID,
            track_id=TRACK_ID,
            timestamp=start,
        )
        with pytest.raises(ListenRejected, match="wallet"):
            await alice.report({**signed(net, start), "signature": other_chain.hex()}, "10.0.0.1")
        assert alice.statistics().rejected == len(refused) + 1

        # a staked node that publishes a forged listen: each receiver checks it again
        forged = SignedListen(
            USER_ID,
            TRACK_ID,
            start,
            sign_listen(
                mallory_wallet.secret,
                chain_id=net.chain_id,
                user_id=USER_ID,
                track_id=TRACK_ID,
                timestamp=start,
            ),
        )
        await net.nodes[0].gossip.publish(wire.TOPIC, wire.encode(ListenBatch((forged,))))
        for service in (bob, carol):
            stats = await until(service, lambda s: s.rejected == 1)
            assert stats.batches_received == 1 and stats.counted == 0
        assert [plays(i) for i in net.indexes] == [0, 0, 0]


async def test_batches_from_an_unstaked_peer_or_a_content_node_count_nothing(
    tmp_path: Path,
) -> None:
    async with network(tmp_path, extra={"mallory": None, "dave": CONTENT_NODE}) as net:
        alice, bob, carol = net.services
        mallory, dave = net.extra["mallory"], net.extra["dave"]
        bob_peer = net.nodes[1].peer_id
        # anonymous listens: what a staked origin would be trusted for
        batch = wire.encode(
            ListenBatch(
                tuple(AnonymousListen(os.urandom(16), TRACK_ID, int(time.time())) for _ in range(5))
            )
        )
        for sender, refusals in ((mallory, 1), (dave, 2)):
            # they publish without subscribing: to the topic's fanout, bob
            with trio.fail_after(WAIT):
                await sender.gossip.wait_for_subscriber(bob_peer, wire.TOPIC)
            await sender.gossip.publish(wire.TOPIC, batch)
            await until(bob, lambda s, n=refusals: s.batches_refused == n)  # type: ignore[misc]
        assert bob.refused == {"not a staked discovery node": 2}
        assert net.nodes[1].conduct.offences == {}  # well formed: no offence

        # a malformed batch counts against its origin, as a malformed announcement does
        await mallory.gossip.publish(wire.TOPIC, b"\xa1av\x02not cbor listens")
        await until(bob, lambda s: s.batches_refused == 3)
        assert bob.refused["malformed"] == 1
        assert net.nodes[1].conduct.points(mallory.peer_id) == pytest.approx(MALFORMED, rel=0.01)

        # an honest listen still goes through, and is the only play anywhere
        await alice.report({"track_id": TRACK_ID}, "10.0.0.1")
        for service in net.services:
            await until(service, lambda s: s.counted == 1)
        assert [plays(i) for i in net.indexes] == [1, 1, 1]
        assert carol.statistics().batches_refused == 0  # bob forwarded none of theirs
        assert all(s.statistics().batches_received <= 1 for s in net.services)


async def test_anonymous_listens_are_rate_limited_per_client(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        alice = net.services[0]
        for _ in range(FAST.anonymous_burst):
            await alice.report({"track_id": TRACK_ID}, "10.0.0.1")
        with pytest.raises(RateLimited) as limited:
            await alice.report({"track_id": TRACK_ID}, "10.0.0.1")
        assert limited.value.retry_after > 0
        # another client has its own bucket; a signed listen is not limited by it
        await alice.report({"track_id": TRACK_ID}, "10.0.0.2")
        await alice.report(signed(net, window_start()), "10.0.0.1")
        stats = alice.statistics()
        assert stats.rate_limited == 1
        expected = FAST.anonymous_burst + 2
        for service in net.services:
            await until(service, lambda s: s.counted == expected)
        assert [plays(i) for i in net.indexes] == [expected] * 3
