"""``coliving devnet``: N real nodes on 127.0.0.1, and a demo add/fetch."""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import trio
from rich.console import Console

from cli.sample import sample_wav
from node import Node
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


async def run_devnet(
    count: int, *, demo: bool, data_dir: Path | None, exit_after_demo: bool
) -> None:
    with tempfile.TemporaryDirectory(prefix="coliving-devnet-") as tmp:
        base = data_dir or Path(tmp)
        async with trio.open_nursery() as nursery:
            t0 = time.perf_counter()
            nodes = await start_nodes(nursery, base, count)
            with trio.fail_after(30):
                await wait_for_mesh(nodes, announce.TOPIC)
            up_ms = (time.perf_counter() - t0) * 1000
            out.print(f"[bold green]devnet: {count} nodes up in {up_ms:.0f} ms[/bold green]")
            out.print(f"  data in {base}")
            for i, node in enumerate(nodes):
                out.print(f"  node{i}  {node.host.addrs()[0]}")
            addr = nodes[0].host.addrs()[0]
            out.print("\ntry, in another shell:")
            out.print(f"  coliving add FILE --node {addr}")
            out.print(f"  coliving get CID -o OUT --node {nodes[-1].host.addrs()[0]}")
            out.print(f"  coliving peers --node {addr}")
            if demo:
                await run_demo(nodes, base)
            if exit_after_demo:
                nursery.cancel_scope.cancel()
                return
            out.print("\n[dim]running; Ctrl-C to stop[/dim]")
            await trio.sleep_forever()
