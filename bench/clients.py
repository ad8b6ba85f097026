"""What a node keeps for light clients that have gone.

``python -m bench.clients [--clients N] [--quick]`` starts one node on
127.0.0.1 in this process, holding a 300 KB file. N light clients, each a
new peer ID as each run of the CLI is, connect one after another, fetch the
file and leave. Then it prints:

- the node's Bitswap state left for departed peers (ledgers, each with a
  task serving it; outbound streams; send locks), which should be 0;
- the memory the node grew per client (tracemalloc, after a collection), for
  the first and the second half of the clients. A leak per client shows in
  both halves alike; memory that a node allocates once shows in the first
  half only. The ratio second/first is printed.

Figures to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import tempfile
import tracemalloc
from pathlib import Path

import trio

from node import Client, Node
from protocols.cid import CID
from protocols.unixfs import import_bytes
from simnet.local import start_nodes

SIZE = 300_000
WARM_UP = 5  # clients before the first measurement: one-time allocations


async def serve_one(node: Node, root: CID) -> None:
    """A client connects, fetches ``root`` (checked) and leaves."""
    async with trio.open_nursery() as nursery:
        client = Client()
        await nursery.start(client.run)
        peer = await client.connect(node.host.addrs()[0])
        fetch = await client.fetch(root, [peer])
        if len(await fetch.read_all()) != SIZE:
            raise SystemExit("a client fetched the wrong number of bytes")
        await client.host.disconnect(peer)
        nursery.cancel_scope.cancel()
    client.store.close()


class Settle:
    """Waits until the node has seen every client go (its disconnect
    notifications run a moment after a connection closes)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.left = trio.Event()
        node.host.on_disconnect.append(self._left)

    def _left(self, peer: object) -> None:
        self.left.set()

    async def traced(self) -> int:
        """Bytes traced, once no client is connected any more."""
        with trio.fail_after(30):
            while self.node.host.connected_peers():
                await self.left.wait()
                self.left = trio.Event()
        gc.collect()
        return tracemalloc.get_traced_memory()[0]


async def run(clients: int) -> None:
    payload = os.urandom(SIZE)
    root, blocks = import_bytes(payload)
    half = max(1, clients // 2)
    with tempfile.TemporaryDirectory() as base:
        async with trio.open_nursery() as nursery:
            (node,) = await start_nodes(nursery, Path(base), 1, names=["node"])
            node.store.put_many(blocks)
            node.store.pin(root, size=SIZE, name="track")
            for _ in range(WARM_UP):
                await serve_one(node, root)
            settle = Settle(node)
            tracemalloc.start()
            marks = [await settle.traced()]
            for i in range(2 * half):
                await serve_one(node, root)
                if i + 1 == half:
                    marks.append(await settle.traced())
                print(f"\r{i + 1}/{2 * half} clients", end="", file=sys.stderr, flush=True)
            marks.append(await settle.traced())
            print(file=sys.stderr)
            tracemalloc.stop()
            bitswap = node.bitswap
            first, second = ((b - a) / half / 1024 for a, b in itertools.pairwise(marks))
            print(f"clients served and gone: {WARM_UP + 2 * half}")
            print(
                f"bitswap state left: {len(bitswap._ledgers)} ledgers, "
                f"{len(bitswap._outbound)} streams, {len(bitswap._send_locks)} send locks"
            )
            ratio = second / first if first > 0 else float("nan")
            print(
                f"memory grown per client: first {half} {first:.1f} KiB, "
                f"next {half} {second:.1f} KiB (next/first = {ratio:.2f})"
            )
            nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100, help="clients to serve (default 100)")
    parser.add_argument("--quick", action="store_true", help="10 clients (a smoke run)")
    args = parser.parse_args()
    if args.clients < 2:
        parser.error("--clients must be at least 2")
    trio.run(run, 10 if args.quick else args.clients)


if __name__ == "__main__":
    main()
