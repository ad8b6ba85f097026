"""``coliving devnet``: N real nodes on 127.0.0.1 on a chain, and a demo.

The chain is the embedded py-evm one (contracts deployed at start) or a dev
RPC chain (``--rpc``, e.g. anvil). Every node is registered as a staked
content node; the demo adds a sample track at the first node and fetches it at
the last, then starts an unregistered node that announces anyway and shows
that nobody accepts it. A staked discovery node (``discovery0``) indexes the
chain's EntityManager and serves the query API on its own gateway; the demo
signs up an artist, publishes the sample as a track and finds it by search.
Node0 serves the HTTP gateway and the web player (``--gateway HOST:PORT``; a
free port by default), whose URL is printed.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import trio
from rich.console import Console

from chain.local import LocalChain, open_chain
from chain.oracle import AllowlistOracle
from cli.sample import sample_wav
from node import ConfigError, Node, NodeConfig
from protocols import announce
from simnet.local import start_nodes, wait_for_mesh

out = Console(highlight=False, soft_wrap=True)
RELAY_FUNDS: Final = 1000 * 10**18  # wei for the devnet relay's gas


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 1 << 20):
        yield data[i : i + (1 << 20)]


async def run_demo(nodes: list[Node], sample_dir: Path) -> str:
    """Adds the sample at the first node, fetches it at the last; its CID."""
    first, last = nodes[0], nodes[-1]
    track = sample_wav()
    path = sample_dir / "sample.wav"
    path.write_bytes(track)
    out.print(f"\n[bold]demo[/bold]: adding {path.name} ({len(track):,} bytes) at node0")
    t0 = time.perf_counter()
    root = await first.add(_chunks(track), name="sample.wav")
    t_add = time.perf_counter() - t0
    out.print(f"  CID {root}  (added in {t_add * 1000:.0f} ms)")
    t1 = time.perf_counter()
    with trio.fail_after(30):
        while not last.store.providers(root):
            await last.announced.wait()
    t_ann = time.perf_counter() - t1
    out.print(f"  announcement reached node{len(nodes) - 1} in {t_ann * 1000:.0f} ms")
    t2 = time.perf_counter()
    with trio.fail_after(60):
        fetch = await last.fetch(root, name="sample.wav")
        got = await fetch.read_all()
    t_fetch = time.perf_counter() - t2
    assert fetch.first_byte_at is not None
    ok = got == track
    verdict = "[green]yes[/green]" if ok else "[red]NO[/red]"
    out.print(
        f"  node{len(nodes) - 1} fetched {len(got):,} bytes in {t_fetch * 1000:.0f} ms "
        f"(first byte {(fetch.first_byte_at - t2) * 1000:.0f} ms, "
        f"{len(got) / t_fetch / 1e6:.1f} MB/s), verified: {verdict}"
    )
    if not ok:
        raise RuntimeError("the fetched sample differs from the one added")
    out.print(f"  try:  coliving cat {root} --node {first.host.addrs()[0]} | ffplay -nodisp -")
    return str(root)


async def run_unstaked_demo(nursery: trio.Nursery, nodes: list[Node], base: Path) -> None:
    """An unregistered node that trusts itself announces a track: nobody takes it."""
    rogue = Node(
        NodeConfig.load(base / "unstaked", bootstrap=(nodes[-1].host.addrs()[0],)),
        oracle=AllowlistOracle(allow_all=True),
    )
    await nursery.start(rogue.run)
    out.print(f"\n[bold]demo[/bold]: an unregistered node {rogue.peer_id} announces a track")
    with trio.fail_after(30):
        await wait_for_mesh([nodes[-1], rogue], announce.TOPIC)
    listener = nodes[-1]
    before = listener.validator.rejected.get("unstaked", 0)
    root = await rogue.add(_chunks(b"not staked " * 1000), name="rogue.bin")
    with trio.fail_after(30):
        while listener.validator.rejected.get("unstaked", 0) == before:
            await listener.validator.verdict.wait()
    held = any(n.store.providers(root) for n in nodes)
    out.print(
        f"  node{len(nodes) - 1} rejected it (not staked on chain); "
        f"provider index lists it: {'[red]yes[/red]' if held else '[green]no[/green]'}"
    )


async def start_gateway(nursery: trio.Nursery, node: Node, bind: str) -> None:
    """An HTTP gateway and web player on ``node`` (node0 of the devnet)."""
    from gateway import Gateway, GatewayConfig, GatewayConfigError

    try:
        config = GatewayConfig(bind=bind)
    except GatewayConfigError as exc:
        raise ConfigError(str(exc)) from None
    node.gateway = Gateway(node, config)
    await nursery.start(node.gateway.run)
    out.print(f"  gateway: {node.gateway_url}  (node0; /ipfs/CID, /health, /metrics)")
    out.print(f"  [bold]player: {node.gateway.player_url}[/bold]")


async def start_discovery(
    nursery: trio.Nursery, chain: LocalChain, nodes: list[Node], base: Path
) -> Node:
    """A staked discovery node (``discovery0``) indexing the chain, with its own
    gateway and the identity service (accounts and a funded gas relay)."""
    import secrets

    from eth_account import Account

    from chain.deploy import DISCOVERY_NODE
    from chain.entity import EntityReader
    from discovery.service import DiscoveryConfig, MusicChain
    from identity.accounts import IdentityConfig
    from p2p.keys import NodeKey

    d = chain.deployment
    assert d.entity_manager is not None
    data_dir = base / "discovery0"
    key = NodeKey.load_or_create(data_dir)
    await chain.register(key, service_type=DISCOVERY_NODE)
    relay_key = data_dir / "relay.key"
    if not relay_key.exists():
        fd = os.open(relay_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("0x" + secrets.token_hex(32) + "\n")
    relay_wallet = Account.from_key(relay_key.read_text().strip()).address
    await chain.fund(relay_wallet, RELAY_FUNDS)
    config = NodeConfig.load(
        data_dir,
        bootstrap=(nodes[0].host.addrs()[0],),
        discovery=DiscoveryConfig(trending_interval=15.0),
        identity=IdentityConfig(relay_key_file=relay_key),
        gateway="127.0.0.1:0",
    )
    music = MusicChain(
        source=EntityReader.for_access(chain.access, d),
        chain_id=d.chain_id,
        contract=d.entity_manager,
        start_block=d.entity_manager_block,
    )
    node = Node(config, key=key, oracle=chain.oracle(), music=music)
    await nursery.start(node.run)
    out.print(
        f"  discovery0  {node.host.addrs()[0]}  indexing EntityManager {d.entity_manager}; "
        f"API {node.gateway_url}/v1, accounts and relay {node.gateway_url}/identity "
        f"(relay wallet {relay_wallet})"
    )
    return node


# the demo's people and tracks: (handle, name, [(title, genre, bpm, seconds)])
ARTISTS: Final = (
    ("lumen_tide", "Lumen Tide", [("Harbour Lights", "Ambient", 72, 20.0),
                                  ("Salt and Signal", "Electronic", 118, 16.0)]),
    ("okra_brass", "Okra Brass", [("Second Line Sunday", "Jazz", 96, 18.0),
                                  ("Copper Kettle", "Funk", 104, 14.0)]),
)  # fmt: skip
PASSWORD: Final = "devnet password"


async def run_music_demo(discovery: Node, sample_dir: Path) -> None:
    """Through the SDK, as real users would: two artists sign up (email and
    password; no ETH) and upload generated tracks with artwork; a fan signs up,
    follows both, reposts, saves and listens. Then what to try."""
    from cli.sample import sample_artwork
    from sdk import Coliving

    assert discovery.discovery is not None and discovery.gateway_url is not None
    url = discovery.gateway_url
    out.print("\n[bold]demo[/bold]: artists and a fan, through the SDK and the gas relay")
    tracks: list[dict[str, Any]] = []
    for n, (handle, name, songs) in enumerate(ARTISTS):
        async with Coliving.connect(url) as co:
            t0 = time.perf_counter()
            await co.signup(f"{handle}@devnet.example", PASSWORD, handle=handle, name=name)
            line = f"  @{handle} signed up ({(time.perf_counter() - t0) * 1000:.0f} ms)"
            for i, (title, genre, bpm, seconds) in enumerate(songs):
                wav = sample_dir / f"{handle}-{i}.wav"
                wav.write_bytes(sample_wav(seconds, bpm=bpm))
                art = sample_dir / f"{handle}-{i}.png"
                art.write_bytes(sample_artwork(3 * n + i))
                t1 = time.perf_counter()
                track = await co.upload_track(wav, title=title, genre=genre, artwork=art)
                tracks.append(track)
                line += (
                    f"; uploaded {title!r} (id {track['id']}, transcoded, artwork, "
                    f"{(time.perf_counter() - t1) * 1000:.0f} ms)"
                )
            out.print(line)
    async with Coliving.connect(url) as fan:
        me = await fan.signup("fan@devnet.example", PASSWORD, handle="devnet_fan", name="A Fan")
        for track in tracks:
            if track["user"]["id"] not in [u["id"] for u in await fan.following(me.user_id)]:
                await fan.follow(track["user"]["id"])
            await fan.listen(track["id"])
        await fan.repost(tracks[0]["id"])
        await fan.save(tracks[2]["id"])
        feed = await fan.feed()
        await discovery.discovery.refresh_trending()
        top = await fan.trending("week", limit=1)
        found = await fan.search("harb")
        out.print(
            f"  @devnet_fan follows both, listened to {len(tracks)} tracks, reposted "
            f"{tracks[0]['title']!r}; feed has {len(feed)} items; trending #1: "
            f"{top[0]['title'] if top else '-'!r}; search 'harb' finds "
            f"{[t['title'] for t in found]}"
        )
    first = tracks[0]["id"]
    out.print("\ntry (the accounts' password is 'devnet password'):")
    out.print(f"  curl '{url}/v1/tracks/search?query=salt'")
    out.print(f"  curl '{url}/v1/tracks/trending?time=week'")
    out.print(f"  curl '{url}/v1/users/handle/lumen_tide'")
    out.print(f"  [bold]player: {url}/v1/tracks/{first}/stream[/bold]  (open in a browser)")
    out.print(f"  export COLIVING_GATEWAY={url} COLIVING_HOME=$(mktemp -d)")
    out.print("  coliving account login fan@devnet.example")
    out.print("  coliving feed;  coliving trending;  coliving search copper")
    out.print(f"  coliving play {first} | ffplay -nodisp -")
    out.print("  coliving account signup you@example.com --handle you")
    out.print(
        "  coliving track upload SONG.flac --title 'My Song' --genre Electronic --artwork C.jpg"
    )


async def describe_chain(chain: LocalChain, rpc: str, nodes: list[Node]) -> None:
    d = chain.deployment
    where = "embedded py-evm" if rpc == "embedded" else rpc
    out.print(f"  chain: {where}, chain id {d.chain_id}, registry {d.registry}")
    for i, node in enumerate(nodes):
        stake = await node.oracle.stake_of(node.peer_id)
        amount = "unregistered" if stake is None else f"{stake.amount / 1e18:,.0f} LIVE staked"
        out.print(f"  node{i}  {node.host.addrs()[0]}  delegate {node.key.eth_address}  {amount}")


async def run_devnet(
    count: int,
    *,
    demo: bool,
    data_dir: Path | None,
    exit_after_demo: bool,
    rpc: str = "embedded",
    deployment: Path | None = None,
    gateway: str | None = "127.0.0.1:0",
) -> None:
    with tempfile.TemporaryDirectory(prefix="coliving-devnet-") as tmp:
        base = data_dir or Path(tmp)
        async with trio.open_nursery() as nursery:
            t0 = time.perf_counter()
            chain = await open_chain(rpc, deployment_file=deployment)
            t_chain = time.perf_counter() - t0
            nodes = await start_nodes(nursery, base, count, chain=chain)
            with trio.fail_after(30):
                await wait_for_mesh(nodes, announce.TOPIC)
            up_ms = (time.perf_counter() - t0) * 1000
            out.print(
                f"[bold green]devnet: {count} staked nodes up in {up_ms:.0f} ms[/bold green] "
                f"(contracts deployed in {t_chain * 1000:.0f} ms)"
            )
            out.print(f"  data in {base}")
            await describe_chain(chain, rpc, nodes)
            discovery = await start_discovery(nursery, chain, nodes, base)
            if gateway:
                await start_gateway(nursery, nodes[0], gateway)
            addr = nodes[0].host.addrs()[0]
            out.print("\ntry, in another shell:")
            out.print(f"  coliving add FILE --node {addr}")
            out.print(f"  coliving get CID -o OUT --node {nodes[-1].host.addrs()[0]}")
            out.print(f"  coliving peers --node {addr}")
            if demo:
                await run_demo(nodes, base)
                await run_music_demo(discovery, base)
                await run_unstaked_demo(nursery, nodes, base)
            if exit_after_demo:
                nursery.cancel_scope.cancel()
                return
            out.print("\n[dim]running; Ctrl-C to stop[/dim]")
            await trio.sleep_forever()
