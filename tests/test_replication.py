"""Placement, replication on upload, repair and rebalance: real nodes on a real chain."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from hypothesis import given
from hypothesis import strategies as st

from chain.local import LocalChain, open_chain
from node import Client, Node, NodeConfig
from p2p.abc import Stream, TaskStatus
from p2p.host import peer_id_bytes
from p2p.keys import NodeKey
from protocols import placement, query
from protocols.cid import CID, RAW
from protocols.errors import ProtocolError
from protocols.replication import ReplicationConfig, Replicator
from protocols.unixfs import import_bytes
from simnet.local import start_nodes
from tests.conftest import chunks

R = 3


# -- placement: pure logic -----------------------------------------------------

peers_st = st.lists(st.binary(min_size=4, max_size=40), min_size=1, max_size=30, unique=True)
cid_st = st.binary(max_size=64).map(lambda b: CID.for_block(RAW, b))


@given(peers_st, cid_st, st.integers(1, 5))
def test_owners_are_the_top_of_one_ranking(peers: list[bytes], cid: CID, r: int) -> None:
    owners = placement.owners(cid, peers, r)
    assert owners == placement.ranking(cid, list(reversed(peers)))[: min(r, len(peers))]
    assert len(set(owners)) == len(owners)


@given(peers_st, cid_st, st.binary(min_size=4, max_size=40))
def test_a_joining_node_displaces_at_most_one_owner(
    peers: list[bytes], cid: CID, newcomer: bytes
) -> None:
    before = placement.owners(cid, peers, R)
    after = placement.owners(cid, [*peers, newcomer], R)
    assert len(set(before) - set(after)) <= 1
    assert set(after) - set(before) <= {newcomer}


@given(peers_st, cid_st, st.data())
def test_dead_owners_are_replaced_by_the_next_in_the_ranking(
    peers: list[bytes], cid: CID, data: st.DataObject
) -> None:
    dead = set(data.draw(st.lists(st.sampled_from(peers), unique=True)))
    owners = placement.owners(cid, peers, R, live=lambda p: p not in dead)
    assert owners == [p for p in placement.ranking(cid, peers) if p not in dead][:R]


# -- whom a replicator dials: pure logic over a recording host -----------------


class DialLog:
    """A ReplicaHost for Replicator.view: members are byte strings, nobody is
    connected at first, ``dead`` never answers; every reach() is recorded."""

    def __init__(
        self, members: list[bytes], me: bytes, pinned: set[CID], dead: frozenset[bytes]
    ) -> None:
        self.peer_id = me.hex()
        self.members = members
        self.pinned = pinned
        self.dead = dead
        self.reached: list[set[bytes]] = []
        self.store = self  # is_pinned
        self.oracle = self  # content_nodes

    def is_pinned(self, cid: CID) -> bool:
        return cid in self.pinned

    async def content_nodes(self) -> list[str]:
        return [m.hex() for m in self.members]

    def peer_bytes(self, peer: str) -> bytes:
        return bytes.fromhex(peer)

    def peer_of_bytes(self, raw: bytes) -> str:
        return raw.hex()

    async def reach(self, peers: Sequence[str]) -> set[str]:
        self.reached.append({bytes.fromhex(p) for p in peers})
        return {p for p in peers if bytes.fromhex(p) not in self.dead}


MEMBERS = [i.to_bytes(4, "big") for i in range(200)]
A_CID = CID.for_block(RAW, b"a track")
RANKED = placement.ranking(A_CID, MEMBERS)


async def _view(
    me: bytes, *, pinned: bool, dead: frozenset[bytes] = frozenset()
) -> tuple[DialLog, set[bytes], bool]:
    host = DialLog(MEMBERS, me, {A_CID} if pinned else set(), dead)
    replicator = Replicator(host, ReplicationConfig(replicas=R))  # type: ignore[arg-type]
    _, live, rankings = await replicator.view([A_CID])
    return host, live, A_CID in rankings


async def test_a_node_ranked_low_for_a_cid_it_does_not_hold_dials_nobody() -> None:
    host, _, decided = await _view(RANKED[150], pinned=False)
    assert host.reached == [] and not decided


async def test_a_candidate_owner_checks_only_the_members_ranked_above_it() -> None:
    host, live, decided = await _view(RANKED[4], pinned=False)
    assert decided and host.reached == [set(RANKED[:3])]
    assert placement.first_live(RANKED, R, live=live.__contains__) == RANKED[:3]
    host, live, _ = await _view(RANKED[4], pinned=False, dead=frozenset({RANKED[0], RANKED[2]}))
    assert host.reached == [set(RANKED[:3]), {RANKED[3]}]
    assert placement.first_live(RANKED, R, live=live.__contains__) == [
        RANKED[1],
        RANKED[3],
        RANKED[4],
    ]


async def test_a_holder_dials_about_r_members_and_replaces_only_the_dead() -> None:
    host, live, _ = await _view(RANKED[120], pinned=True, dead=frozenset({RANKED[1]}))
    assert host.reached == [set(RANKED[:3]), {RANKED[3]}]
    assert placement.first_live(RANKED, R, live=live.__contains__) == [
        RANKED[0],
        RANKED[2],
        RANKED[3],
    ]


# -- real nodes ------------------------------------------------------------------


class Net:
    """Nodes on one chain, each in its own cancel scope so a test can kill one."""

    def __init__(self, nursery: trio.Nursery, base: Path, chain: LocalChain) -> None:
        self.nursery, self.base, self.chain = nursery, base, chain
        self.nodes: list[Node] = []
        self.scopes: dict[Node, trio.CancelScope] = {}
        self.staked: set[Node] = set()

    async def add(self, name: str, *, register: bool = True) -> Node:
        key = NodeKey.load_or_create(self.base / name)
        if register:
            await self.chain.register(key)
        bootstrap = tuple(n.host.addrs()[0] for n in self.live()[:1])
        config = NodeConfig.load(
            self.base / name,
            bootstrap=bootstrap,
            repair_interval=0.3,
            chain_poll_interval=0.1,
            liveness_interval=1.0,
        )
        node = Node(config, key=key, oracle=self.chain.oracle())

        async def host(*, task_status: TaskStatus[trio.CancelScope]) -> None:
            async with trio.open_nursery() as inner:
                await inner.start(node.run)
                task_status.started(inner.cancel_scope)

        self.scopes[node] = await self.nursery.start(host)
        if register:
            await self.chain.update_multiaddrs(key, node.host.addrs())
            self.staked.add(node)
        self.nodes.append(node)
        return node

    def kill(self, node: Node) -> None:
        self.scopes[node].cancel()
        self.nodes.remove(node)

    def live(self) -> list[Node]:
        return list(self.nodes)


def expected_owners(cid: CID, members: Sequence[Node]) -> set[Node]:
    ranked = placement.owners(cid, [peer_id_bytes(n.peer_id) for n in members], R)
    return {n for n in members if peer_id_bytes(n.peer_id) in ranked}


async def until(nodes: Sequence[Node], condition: Callable[[], bool]) -> None:
    """Wait, round by round of a node's repair loop, until ``condition()`` holds."""
    while not condition():
        await nodes[0].replicator.round_done.wait()


def holders(cid: CID, nodes: Sequence[Node]) -> set[Node]:
    return {n for n in nodes if n.store.is_pinned(cid)}


async def members_known(net: Net) -> None:
    """Until every live node's repair round has seen every live staked node (each
    reads the registry on its own poll: a node that just registered may not be a
    member yet for the others, and owners are ranked among members)."""
    for node in net.live():
        while node.replicator.members_seen < len(net.staked & set(net.live())):
            await node.replicator.round_done.wait()


async def upload(net: Net, to: Node, payload: bytes) -> tuple[CID, int | None]:
    await members_known(net)
    client = Client()
    await net.nursery.start(client.run)
    peer = await client.connect(to.host.addrs()[0])
    done = await client.upload(peer, chunks(payload), name="track.bin")
    return done.cid, done.replicas


@asynccontextmanager
async def staked_nodes(tmp_path: Path, count: int) -> AsyncIterator[Net]:
    """``count`` staked nodes on an embedded chain, stopped when the block ends."""
    chain = await open_chain()
    async with trio.open_nursery() as nursery:
        net = Net(nursery, tmp_path, chain)
        for i in range(count):
            await net.add(f"n{i}")
        yield net
        nursery.cancel_scope.cancel()


async def test_upload_reaches_the_owners_and_repair_follows_churn(tmp_path: Path) -> None:
    async with staked_nodes(tmp_path, 5) as net:
        payload = os.urandom(700_000)
        with trio.fail_after(60):
            # upload to a node that is *not* an owner, so it must hand the file on
            cid = import_bytes(payload)[0]
            owners = expected_owners(cid, net.live())
            receiver = next(n for n in net.live() if n not in owners)
            got, replicas = await upload(net, receiver, payload)
        assert got == cid
        # the receiver's copy and the owners' that answered in time (all three,
        # unless one's view of the registry still lags): at least one more copy
        assert replicas is not None and 2 <= replicas <= R + 1
        with trio.fail_after(60):  # repair brings any missing owner in
            await until(net.live(), lambda: owners <= holders(cid, net.live()))

        # the receiver is not an owner: it drops its copy, but only once R owners hold it
        with trio.fail_after(60):
            await until(net.live(), lambda: not receiver.store.is_pinned(cid))
        assert owners <= holders(cid, net.live())
        assert receiver.replicator.status.dropped == 1

        # an owner dies: the next node in the ranking takes its place and pulls the file
        victim = sorted(owners, key=lambda n: n.peer_id)[0]
        net.kill(victim)
        with trio.fail_after(60):
            await until(
                net.live(), lambda: len(holders(cid, net.live()) & expected_live(cid, net)) >= R
            )

        # a new node registers; if it ranks among the owners, the data moves to it
        await net.add("n5")
        with trio.fail_after(60):
            await until(net.live(), lambda: holders(cid, net.live()) == expected_live(cid, net))


def expected_live(cid: CID, net: Net) -> set[Node]:
    """Owners among the live nodes (the dead one is still registered, just unreachable)."""
    return expected_owners(cid, net.live())


async def test_deregistering_an_owner_moves_its_content(tmp_path: Path) -> None:
    async with staked_nodes(tmp_path, 4) as net:
        payload = os.urandom(300_000)
        with trio.fail_after(60):
            cid, _replicas = await upload(net, net.live()[0], payload)
        owners = expected_owners(cid, net.live())
        assert owners <= holders(cid, net.live())
        leaving = sorted(owners, key=lambda n: n.peer_id)[0]
        await net.chain.deregister(leaving.key)
        staying = [n for n in net.live() if n is not leaving]
        with trio.fail_after(60):
            await until(staying, lambda: expected_owners(cid, staying) <= holders(cid, staying))
        assert len(holders(cid, staying)) >= R


async def test_replicate_requests_are_refused_from_unstaked_peers(tmp_path: Path) -> None:
    chain = await open_chain()
    async with trio.open_nursery() as nursery:
        net = Net(nursery, tmp_path, chain)
        node = await net.add("n0")
        client = Client()
        await nursery.start(client.run)
        peer = await client.connect(node.host.addrs()[0])

        try:
            with trio.fail_after(20):
                await client.ask(peer, "replicate", cid=CID.for_block(RAW, b"junk"))
        except ProtocolError as exc:
            assert "only staked content nodes" in str(exc)
        else:
            raise AssertionError("an unstaked peer made a node fetch")
        nursery.cancel_scope.cancel()


class LosesFirstAnswer:
    """A node's query streams, whose first answer to a replicate request is lost
    on the way: the stream is reset instead (the node did pull and pin)."""

    def __init__(self, node: Node) -> None:
        self.lost = 0
        serve = node._serve_query
        node.host.set_handler(query.PROTOCOL, lambda stream: serve(self.wrap(stream)))

    def wrap(self, stream: Stream) -> Stream:
        outer = self

        class Lossy:
            remote_peer = stream.remote_peer
            read, close, close_write, reset = (
                stream.read,
                stream.close,
                stream.close_write,
                stream.reset,
            )

            async def write(self, data: bytes) -> None:
                if b"\x62ok\xf5" in data and not outer.lost:  # CBOR "ok": true
                    outer.lost += 1
                    await stream.reset()
                    return
                await stream.write(data)

        return Lossy()


async def test_an_upload_asks_again_when_a_replicate_answer_is_lost(tmp_path: Path) -> None:
    async with staked_nodes(tmp_path, 4) as net:
        payload = os.urandom(300_000)
        cid = import_bytes(payload)[0]
        owners = expected_owners(cid, net.live())
        receiver = sorted(owners, key=lambda n: n.peer_id)[0]
        lossy = [LosesFirstAnswer(n) for n in owners - {receiver}]
        with trio.fail_after(60):
            got, replicas = await upload(net, receiver, payload)
        assert got == cid
        assert [x.lost for x in lossy] == [1] * (R - 1)  # each lost one answer
        assert replicas == R  # and was asked again


async def test_two_pulls_of_one_cid_at_once_fetch_it_once(tmp_path: Path) -> None:
    """A repair round and a replicate request may pull one CID at the same time:
    the second waits for the first instead of fetching the file again."""
    payload = os.urandom(700_000)
    root, blocks = import_bytes(payload)
    async with trio.open_nursery() as nursery:
        alice, bob = await start_nodes(nursery, tmp_path, 2, names=["alice", "bob"])
        alice.store.put_many(blocks)
        alice.store.pin(root, size=len(payload), name="track")
        with trio.fail_after(30):
            async with trio.open_nursery() as pulls:
                for _ in range(2):
                    pulls.start_soon(bob.replicator.pull, root, [alice.peer_id])
        assert bob.store.is_pinned(root)
        assert bob.replicator.status.pulled == 1
        assert alice.bitswap.stats.blocks_served == len(blocks)
        nursery.cancel_scope.cancel()
