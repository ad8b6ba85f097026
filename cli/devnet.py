"""``coliving devnet``: N real nodes on 127.0.0.1 on a chain, and a demo.

The chain is the embedded py-evm one (contracts deployed at start) or a dev
RPC chain (``--rpc``, e.g. anvil). Every node is registered as a staked
content node; the demo adds a sample track at the first node and fetches it at
the last, then starts an unregistered node that announces anyway and shows
that nobody accepts it. Node0 serves the HTTP gateway and the web player
(``--gateway HOST:PORT``; a free port by default), whose URL is printed.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import trio
from rich.console import Console

from chain.local import LocalChain, open_chain
from chain.oracle import AllowlistOracle
from cli.sample import sample_wav
from node import ConfigError, Node, NodeConfig
from protocols import announce
from simnet.local import start_nodes, wait_for_mesh

out = Console(highlight=False, soft_wrap=True)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 1 << 20):
        yield data[i : i + (1 << 20)]


async def run_demo(nodes: list[Node], sample_dir: Path) -> None:
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
            if gateway:
                await start_gateway(nursery, nodes[0], gateway)
            addr = nodes[0].host.addrs()[0]
            out.print("\ntry, in another shell:")
            out.print(f"  coliving add FILE --node {addr}")
            out.print(f"  coliving get CID -o OUT --node {nodes[-1].host.addrs()[0]}")
            out.print(f"  coliving peers --node {addr}")
            if demo:
                await run_demo(nodes, base)
                await run_unstaked_demo(nursery, nodes, base)
            if exit_after_demo:
                nursery.cancel_scope.cancel()
                return
            out.print("\n[dim]running; Ctrl-C to stop[/dim]")
            await trio.sleep_forever()
