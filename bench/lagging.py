"""What a fetch holds in memory for a reader slower than the network.

``python -m bench.lagging [--size MIB] [--rate MB_PER_S] [--quick]`` starts one
node on 127.0.0.1 in this process, holding a SIZE MiB file, and a light
client that fetches it twice over real libp2p:

- a reader as fast as it can go (the baseline, measured in the same run);
- a reader that takes the leaves at RATE MB/s, as a player or a browser on a
  slow link does (paced by sleeping: the reader is the thing modelled).

For each it prints the peak memory this process allocated during the read
(tracemalloc, above what it held before), and the ratio lagging/fast. A
fetch keeps ``BitswapConfig.buffer_bytes`` of leaves ahead of its reader in
memory; the blocks beyond it go to the store and are read back from it.

Figures to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import gc
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

MIB = 1 << 20


async def read(client: Client, node: Node, root: CID, rate: float | None) -> tuple[int, float]:
    """Fetch ``root`` from ``node``, reading at ``rate`` bytes/s (None: at once).
    Returns (peak bytes allocated during the read, seconds)."""
    gc.collect()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    start = trio.current_time()
    got = 0
    fetch = client.bitswap.fetch(root, [node.host.peer_id])
    async for leaf in fetch.leaves():
        got += len(leaf)
        if rate is not None:
            await trio.sleep_until(start + got / rate)
    seconds = trio.current_time() - start
    _, peak = tracemalloc.get_traced_memory()
    return peak - before, seconds


async def run(size_mib: int, rate_mbps: float) -> None:
    data = os.urandom(size_mib * MIB)
    with tempfile.TemporaryDirectory(prefix="coliving-bench-") as tmp:
        async with trio.open_nursery() as nursery:
            (node,) = await start_nodes(nursery, Path(tmp), 1, names=["holder"])
            root, blocks = import_bytes(data)
            node.store.put_many(blocks)
            print(f"file: {size_mib} MiB, root {root}; MB = 10^6 bytes", flush=True)
            tracemalloc.start()
            figures = {}
            for label, rate in (("fast", None), ("lagging", rate_mbps * 1e6)):
                client = Client()  # a fresh store each time: every block comes over the network
                await nursery.start(client.run)
                await client.connect(node.host.addrs()[0])
                print(f"reading ({label})…", file=sys.stderr, flush=True)
                peak, seconds = await read(client, node, root, rate)
                figures[label] = peak
                speed = len(data) / seconds / 1e6
                print(
                    f"{label} reader ({speed:.1f} MB/s): peak {peak / MIB:.1f} MiB"
                    f" allocated during the read",
                    flush=True,
                )
            tracemalloc.stop()
            ratio = figures["lagging"] / figures["fast"]
            print(f"lagging / fast: {ratio:.2f}", flush=True)
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lagging", description=__doc__)
    parser.add_argument("--size", type=int, default=64, help="file size in MiB (default 64)")
    parser.add_argument(
        "--rate", type=float, default=8.0, help="the lagging reader's MB/s (default 8)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 MiB at 32 MB/s")
    args = parser.parse_args(argv)
    if args.size <= 0 or args.rate <= 0:
        parser.error("--size and --rate must be positive")
    size, rate = (8, 32.0) if args.quick else (args.size, args.rate)
    trio.run(run, size, rate)


if __name__ == "__main__":
    main()
