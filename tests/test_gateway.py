"""The HTTP gateway on real nodes over 127.0.0.1: content, ranges, bad input, health, metrics."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from cli.sample import sample_wav
from gateway import Gateway, GatewayConfig, Timeouts
from gateway.content import content_type
from gateway.health import verify
from gateway.ranges import ByteRange, Unsatisfiable, parse_range
from node import ConfigError, Node, NodeConfig
from p2p.host import peer_id_bytes
from protocols.bitswap import BitswapConfig
from protocols.unixfs import import_bytes
from simnet.byzantine import ByzantineProvider, Mode
from simnet.local import start_nodes
from tests.conftest import chunks

LEAF = 262_144
# Keep the lead's repair loop from pulling test content onto the gateway node.
QUIET: dict[str, Any] = (
    {"repair_interval": 3600.0} if "repair_interval" in {f.name for f in fields(NodeConfig)} else {}
)


def payload_of(size: int) -> bytes:
    # a leading zero byte: random bytes must not look like an audio signature
    return b"\x00" + os.urandom(size - 1)


def gateway_of(node: Node) -> Gateway:
    assert node.gateway is not None and node.gateway_url is not None
    return node.gateway


def client(node: Node) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway_of(node).url or "", timeout=30)


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# -- pure parts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-0", 10, ByteRange(0, 1)),
        ("bytes=0-", 10, ByteRange(0, 10)),
        ("bytes=9-9", 10, ByteRange(9, 10)),
        ("bytes=2-100", 10, ByteRange(2, 10)),
        ("bytes=-3", 10, ByteRange(7, 10)),
        ("bytes=-30", 10, ByteRange(0, 10)),
        ("BYTES = 1 - 2", 10, ByteRange(1, 3)),
        # malformed or unsupported: ignored (200, whole body)
        ("bytes=5-2", 10, None),
        ("bytes=abc", 10, None),
        ("bytes=", 10, None),
        ("bytes=-", 10, None),
        ("bytes", 10, None),
        ("items=0-1", 10, None),
        ("bytes=0-1,3-4", 10, None),
        ("bytes=0-1,", 10, None),
        ("bytes=--1", 10, None),
        ("bytes=1-2-3", 10, None),
        ("bytes=+1-2", 10, None),
        ("bytes=" + "9" * 40 + "-", 10, None),
        ("bytes=0x10-", 10, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10), ("bytes=0-", 0), ("bytes=-5", 0)],
)
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


@given(
    size=st.integers(0, 1 << 40),
    first=st.integers(0, 1 << 41) | st.none(),
    last=st.integers(0, 1 << 41) | st.none(),
)
def test_parsed_ranges_lie_inside_the_file(size: int, first: int | None, last: int | None) -> None:
    header = f"bytes={'' if first is None else first}-{'' if last is None else last}"
    try:
        rng = parse_range(header, size)
    except Unsatisfiable:
        return
    if rng is not None:
        assert 0 <= rng.start < rng.end <= size


@pytest.mark.parametrize(
    ("head", "name", "expected"),
    [
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "", "audio/wav"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "x.bin", "audio/mpeg"),
        (b"\xff\xfb\x90\x64\x00", "", "audio/mpeg"),
        (b"\xff\xf1\x50\x80\x00", "", "audio/aac"),
        (b"fLaC\x00\x00\x00\x22", "", "audio/flac"),
        (b"OggS\x00\x02", "", "audio/ogg"),
        (b"\x00\x01\x02", "song.mp3", "audio/mpeg"),
        (b"\x00\x01\x02", "cover.png", "image/png"),
        (b"\x00\x01\x02", "", "application/octet-stream"),
        (b"\x00\x01\x02", "noext", "application/octet-stream"),
    ],
)
def test_content_type(head: bytes, name: str, expected: str) -> None:
    assert content_type(head, name) == expected


def test_gateway_address_is_checked(tmp_path: Path) -> None:
    for bad in ("nonsense", "127.0.0.1:", "127.0.0.1:http", ":80", "127.0.0.1:70000"):
        with pytest.raises(ConfigError):
            NodeConfig(data_dir=tmp_path, gateway=bad)
    assert NodeConfig(data_dir=tmp_path, gateway="127.0.0.1:0").gateway == "127.0.0.1:0"


# -- one node serving what it holds ----------------------------------------------


async def test_get_head_and_every_range_boundary(tmp_path: Path) -> None:
    size = 3 * LEAF + 1234
    data = payload_of(size)
    async with trio.open_nursery() as nursery:
        (node,) = await start_nodes(nursery, tmp_path, 1, gateway="127.0.0.1:0", **QUIET)
        root = await node.add(chunks(data), name="track.bin")
        url = f"/ipfs/{root}"
        etag = f'"{root}"'
        async with client(node) as http:
            with trio.fail_after(30):
                full = await http.get(url)
                assert full.status_code == 200
                assert full.content == data
                assert full.headers["content-length"] == str(size)
                assert full.headers["etag"] == etag
                assert full.headers["accept-ranges"] == "bytes"
                assert "immutable" in full.headers["cache-control"]
                assert full.headers["content-type"] == "application/octet-stream"

                head = await http.head(url)
                assert head.status_code == 200 and head.content == b""
                assert head.headers["content-length"] == str(size)
                assert head.headers["etag"] == etag

                cases = {
                    "bytes=0-0": (0, 1),
                    "bytes=0-": (0, size),
                    f"bytes={LEAF - 1}-{LEAF}": (LEAF - 1, LEAF + 1),  # across a leaf edge
                    f"bytes={LEAF}-{2 * LEAF - 1}": (LEAF, 2 * LEAF),  # exactly one leaf
                    f"bytes={LEAF - 1}-{LEAF - 1}": (LEAF - 1, LEAF),  # last byte of a leaf
                    f"bytes={3 * LEAF}-": (3 * LEAF, size),  # the short last leaf
                    f"bytes={size - 1}-{size - 1}": (size - 1, size),  # last byte
                    f"bytes={size - 1}-": (size - 1, size),
                    f"bytes=10-{size + 100}": (10, size),  # end past the file: clamped
                    "bytes=-1": (size - 1, size),
                    "bytes=-1234": (size - 1234, size),
                    f"bytes=-{size + 10}": (0, size),  # suffix longer than the file
                }
                for header, (start, end) in cases.items():
                    got = await http.get(url, headers={"Range": header})
                    assert got.status_code == 206, header
                    assert got.headers["content-range"] == f"bytes {start}-{end - 1}/{size}"
                    assert got.headers["content-length"] == str(end - start), header
                    assert got.content == data[start:end], header
                    assert got.headers["etag"] == etag
                    head = await http.head(url, headers={"Range": header})
                    assert head.status_code == 206 and head.content == b""
                    assert head.headers["content-length"] == str(end - start), header

                for header in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
                    got = await http.get(url, headers={"Range": header})
                    assert got.status_code == 416, header
                    assert got.headers["content-range"] == f"bytes */{size}"

                for header in ("bytes=abc", "bytes=5-2", "items=0-1", "bytes=0-1,5-6", "bytes"):
                    got = await http.get(url, headers={"Range": header})
                    assert got.status_code == 200, header
                    assert got.content == data

                for tag in (etag, f"W/{etag}", "*", f'"other", {etag}'):
                    got = await http.get(url, headers={"If-None-Match": tag})
                    assert got.status_code == 304 and got.content == b"", tag
                    assert got.headers["etag"] == etag
                got = await http.get(url, headers={"If-None-Match": '"other"'})
                assert got.status_code == 200

                ranged = {"Range": "bytes=0-9"}
                got = await http.get(url, headers={**ranged, "If-Range": etag})
                assert got.status_code == 206
                got = await http.get(url, headers={**ranged, "If-Range": '"stale"'})
                assert got.status_code == 200 and got.content == data

                friendly = await http.get(f"/content/{root}", headers={"Range": "bytes=5-9"})
                assert friendly.status_code == 206 and friendly.content == data[5:10]
                assert "track.bin" in friendly.headers["content-disposition"]
                assert "immutable" not in friendly.headers["cache-control"]

                assert (await http.post(url)).status_code == 405
                assert (await http.get(f"{url}/inside")).status_code == 404
        statuses = [r.status for r in gateway_of(node).app.recent]
        assert 206 in statuses and 416 in statuses and 304 in statuses
        nursery.cancel_scope.cancel()


async def test_empty_and_single_leaf_files(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        (node,) = await start_nodes(nursery, tmp_path, 1, gateway="127.0.0.1:0", **QUIET)
        empty = await node.add(chunks(b""), name="empty")
        small = await node.add(chunks(b"\x00hello"), name="hello.txt")
        async with client(node) as http:
            with trio.fail_after(20):
                got = await http.get(f"/ipfs/{empty}")
                assert got.status_code == 200 and got.content == b""
                assert got.headers["content-length"] == "0"
                got = await http.get(f"/ipfs/{empty}", headers={"Range": "bytes=0-"})
                assert got.status_code == 416
                assert got.headers["content-range"] == "bytes */0"
                got = await http.get(f"/ipfs/{small}", headers={"Range": "bytes=1-"})
                assert got.status_code == 206 and got.content == b"hello"
                assert got.headers["content-type"].startswith("text/plain")
        nursery.cancel_scope.cancel()


async def test_player_page_pins_and_sniffed_audio_type(tmp_path: Path) -> None:
    track = sample_wav(2.0)
    async with trio.open_nursery() as nursery:
        (node,) = await start_nodes(nursery, tmp_path, 1, gateway="127.0.0.1:0", **QUIET)
        root = await node.add(chunks(track), name="sample")
        async with client(node) as http:
            with trio.fail_after(20):
                page = await http.get("/player")
                assert page.status_code == 200 and "<audio" in page.text
                assert page.headers["content-type"].startswith("text/html")
                pins = (await http.get("/api/pins")).json()
                assert pins["peer_id"] == node.peer_id
                assert pins["pins"] == [
                    {
                        "cid": str(root),
                        "name": "sample",
                        "size": len(track),
                        "pinned_at": pins["pins"][0]["pinned_at"],
                    }
                ]
                head = await http.head(f"/ipfs/{root}")
                assert head.headers["content-type"] == "audio/wav"  # sniffed: no extension
                assert (await http.get("/nowhere")).status_code == 404
        nursery.cancel_scope.cancel()


# -- content from the network ----------------------------------------------------


async def test_content_fetched_from_another_node(tmp_path: Path) -> None:
    size = 6 * LEAF + 99
    data = payload_of(size)
    async with trio.open_nursery() as nursery:
        alice, gw = await start_nodes(
            nursery, tmp_path, 2, names=["alice", "gw"], gateway="127.0.0.1:0", **QUIET
        )
        root = await alice.add(chunks(data), name="remote.bin")
        # the gateway learns the holder the way announcements would tell it
        gw.store.add_providers(peer_id_bytes(alice.peer_id), [root], ttl=600)
        assert not gw.store.has(root)
        served_before = alice.bitswap.stats.blocks_served
        async with client(gw) as http:
            with trio.fail_after(30):
                tail = await http.get(f"/ipfs/{root}", headers={"Range": f"bytes={size - 10}-"})
                assert tail.status_code == 206 and tail.content == data[-10:]
                # only the root and the last leaf were needed
                assert alice.bitswap.stats.blocks_served - served_before <= 3
                full = await http.get(f"/ipfs/{root}")
                assert full.status_code == 200 and full.content == data
                mid = await http.get(f"/ipfs/{root}", headers={"Range": "bytes=300000-700000"})
                assert mid.status_code == 206 and mid.content == data[300_000:700_001]
        assert alice.bitswap.stats.blocks_served > served_before
        assert gw.bitswap.stats.blocks_fetched > 0
        assert not gw.store.is_pinned(root)  # a gateway read is not a pin
        nursery.cancel_scope.cancel()


async def test_unknown_and_malformed_cids(tmp_path: Path) -> None:
    missing = import_bytes(b"never added anywhere")[0]
    async with trio.open_nursery() as nursery:
        _, gw = await start_nodes(nursery, tmp_path, 2, gateway="127.0.0.1:0", **QUIET)
        async with client(gw) as http:
            with trio.fail_after(15):
                got = await http.get(f"/ipfs/{missing}")
                assert got.status_code == 404
                assert "error" in got.json()
                assert (await http.head(f"/ipfs/{missing}")).status_code == 404
                for bad in (
                    "zzz",
                    "bafy",
                    "Qm123",
                    "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuyl",
                    "%00",
                ):
                    got = await http.get(f"/ipfs/{bad}")
                    assert got.status_code == 400, bad
                    assert (await http.get(f"/content/{bad}")).status_code == 400, bad
        nursery.cancel_scope.cancel()


async def test_first_byte_deadline_gives_504(tmp_path: Path) -> None:
    data = payload_of(2 * LEAF)
    root, _ = import_bytes(data)
    async with trio.open_nursery() as nursery:
        (node,) = await start_nodes(nursery, tmp_path, 1, **QUIET)
        gateway = Gateway(
            node, GatewayConfig(bind="127.0.0.1:0", timeouts=Timeouts(first_byte=1.0, stall=1.0))
        )
        await nursery.start(gateway.run)
        staller = ByzantineProvider("stall")
        await nursery.start(staller.run)
        await node.connect(staller.host.addrs()[0])
        node.store.add_providers(peer_id_bytes(staller.peer_id), [root], ttl=600)
        async with httpx.AsyncClient(base_url=gateway.url or "", timeout=30) as http:
            with trio.fail_after(10):
                got = await http.get(f"/ipfs/{root}")
        assert got.status_code == 504
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("mode", ["corrupt", "substitute", "stall", "dont_have"])
@pytest.mark.parametrize("honest", [False, True], ids=["liar-only", "with-honest"])
async def test_byzantine_holder_mid_stream(
    tmp_path: Path, mode: Mode, honest: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The gateway holds the first leaves; the rest must come from a holder that lies.
    A body broken off is logged once, in one line (not also as an ASGI error)."""
    data = payload_of(8 * LEAF + 5)
    root, blocks = import_bytes(data)
    leaves = {b.cid for b in blocks if b.cid.codec == 0x55}
    first_two = [b for b in blocks if b.cid in leaves][:2]
    root_block = next(b for b in blocks if b.cid == root)
    async with trio.open_nursery() as nursery:
        nodes = await start_nodes(
            nursery,
            tmp_path,
            2 if honest else 1,
            gateway="127.0.0.1:0",
            bitswap=BitswapConfig(stall_timeout=1.0),
            **QUIET,
        )
        gw = nodes[-1]
        gw.store.put_many([root_block, *first_two])
        liar = ByzantineProvider(mode, blocks={b.cid: b.data for b in blocks})
        await nursery.start(liar.run)
        await gw.connect(liar.host.addrs()[0])
        holders = [liar.peer_id]
        if honest:
            await nodes[0].add(chunks(data))
            holders.append(nodes[0].peer_id)
        for holder in holders:
            gw.store.add_providers(peer_id_bytes(holder), [root], ttl=600)
        got = b""
        failure: Exception | None = None
        async with client(gw) as http:
            with trio.fail_after(20):  # never a hang
                try:
                    async with http.stream("GET", f"/ipfs/{root}") as reply:
                        assert reply.status_code == 200
                        assert reply.headers["content-length"] == str(len(data))
                        async for part in reply.aiter_bytes():
                            got += part
                except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                    failure = exc
        assert liar.wants_seen > 0
        assert got == data[: len(got)]  # whatever arrived was right
        if honest:
            assert failure is None and got == data
        else:
            assert failure is not None, "a short body must be an error, not a quiet end"
            assert len(got) >= 2 * LEAF  # the part held locally went out first
            aborts = [r for r in caplog.records if "aborting the response" in r.message]
            assert len(aborts) == 1 and aborts[0].exc_info is None
        assert not [r for r in caplog.records if r.name == "coliving.gateway.http"]
        nursery.cancel_scope.cancel()


# -- health and metrics --------------------------------------------------------


async def test_health_is_signed_by_the_node(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        alice, gw = await start_nodes(nursery, tmp_path, 2, gateway="127.0.0.1:0", **QUIET)
        async with client(gw) as http:
            with trio.fail_after(15):
                reply = await http.get("/health")
        assert reply.status_code == 200
        document = reply.json()
        body = document["health"]
        assert body["peer_id"] == gw.peer_id
        assert body["staked"] is True
        assert body["disk"]["free"] > 0 and body["disk"]["store_bytes"] > 0
        assert body["disk"]["cache_bytes"] == 1 << 30 and body["disk"]["unpinned_bytes"] >= 0
        assert body["version"] and "last_repair" in body and "replication_backlog" in body
        assert verify(document)
        tampered = json.loads(json.dumps(document))
        tampered["health"]["disk"]["free"] += 1
        assert not verify(tampered)
        impostor = json.loads(json.dumps(document))
        impostor["health"]["peer_id"] = alice.peer_id  # signed by gw's key, claims alice
        assert not verify(impostor)
        broken = json.loads(json.dumps(document))
        broken["signature"]["value"] = "00" + broken["signature"]["value"][2:]
        assert not verify(broken)
        assert not verify({"health": body})
        assert not verify("not a document")
        nursery.cancel_scope.cancel()


async def test_metrics_count_a_fetch(tmp_path: Path) -> None:
    data = payload_of(3 * LEAF)
    async with trio.open_nursery() as nursery:
        alice, gw = await start_nodes(
            nursery, tmp_path, 2, names=["alice", "gw"], gateway="127.0.0.1:0", **QUIET
        )
        root = await alice.add(chunks(data), name="m.bin")
        gw.store.add_providers(peer_id_bytes(alice.peer_id), [root], ttl=600)
        async with client(gw) as http:
            with trio.fail_after(20):
                before = (await http.get("/metrics")).text
                assert (await http.get(f"/ipfs/{root}")).content == data
                reply = await http.get("/metrics")
        after = reply.text
        assert reply.headers["content-type"].startswith("text/plain")
        fetched = "coliving_bitswap_blocks_fetched_total"
        assert metric(after, fetched) > metric(before, fetched)
        assert metric(after, "coliving_bitswap_bytes_fetched_total") >= len(data)
        assert metric(after, "coliving_peers_connected") >= 1
        assert metric(after, "coliving_gateway_requests_total", route="content", status="200") == 1
        assert metric(after, "coliving_gateway_bytes_sent_total") == len(data)
        assert metric(after, "coliving_gateway_first_byte_seconds_count") == 1
        for name in (
            "coliving_gossip_accepted_total",
            "coliving_peers_banned",
            "coliving_pins",
            "coliving_repair_queue",
            "coliving_store_unpinned_bytes",
            "coliving_store_collected_bytes_total",
        ):
            assert any(
                s.name == name for f in text_string_to_metric_families(after) for s in f.samples
            ), name
        nursery.cancel_scope.cancel()
