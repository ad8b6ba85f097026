"""Gateway benchmark: time to first byte over HTTP against an in-process fetch.

``python -m bench.gateway [--size MIB] [--trials N] [--quick]`` starts two
nodes on 127.0.0.1 in this process, node ``gw`` with a gateway, and prints
medians (and p90) of the time to the first byte of a file:

(a) held by the gateway node:
    direct   ``Node.fetch`` on that node, to its first chunk;
    GET      ``GET /ipfs/CID`` on a kept-alive HTTP connection;
    Range    ``GET`` with ``Range: bytes=N-`` for the last 1000 bytes;
(b) held only by another node (a new file each trial, so nothing is cached):
    direct   ``Node.fetch`` on ``gw``: find the holder, root, first leaf;
    GET      the same through the gateway.

The HTTP client (httpx) runs in the same trio loop as the nodes, as a browser
on the same machine would share the CPU. Figures to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import cast

import httpx
import trio
from rich.console import Console

from node import Node
from p2p.host import peer_id_bytes
from protocols.cid import CID
from simnet.local import start_nodes

MIB = 1 << 20
err = Console(stderr=True)


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), MIB):
        yield data[i : i + MIB]


async def direct_first_byte(node: Node, cid: CID) -> float:
    t0 = time.perf_counter()
    fetch = await node.fetch(cid, pin=False)
    leaves = cast(AsyncGenerator[bytes, None], fetch.leaves())
    async with aclosing(leaves):
        async for chunk in leaves:
            if chunk:
                break
    return time.perf_counter() - t0


async def http_first_byte(http: httpx.AsyncClient, path: str, headers: dict[str, str]) -> float:
    t0 = time.perf_counter()
    async with http.stream("GET", path, headers=headers) as reply:
        if reply.status_code not in (200, 206):
            raise RuntimeError(f"GET {path}: {reply.status_code}")
        async for chunk in reply.aiter_raw():
            if chunk:
                break
    return time.perf_counter() - t0


def summary(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    return f"{statistics.median(ms):7.2f} ms (p90 {p90:.2f})"


async def trials(n: int, one: Callable[[int], Awaitable[float]]) -> list[float]:
    out = []
    for i in range(n):
        with trio.fail_after(60):
            out.append(await one(i))
    return out


async def measure(size: int, n: int) -> dict[str, list[float]]:
    """Seconds to the first byte, ``n`` trials of each row of the module doc, by row
    label ("(a) direct", "(a) GET", "(a) Range", "(b) direct", "(b) GET")."""
    with tempfile.TemporaryDirectory(prefix="coliving-bench-gw-") as tmp:
        async with trio.open_nursery() as nursery:
            alice, gw = await start_nodes(
                nursery,
                Path(tmp),
                2,
                names=["alice", "gw"],
                gateway="127.0.0.1:0",
                repair_interval=3600.0,  # no background repair pulling the files to gw
            )
            assert gw.gateway_url is not None
            local = await gw.add(chunks(os.urandom(size)), name="local.bin")
            remote: list[CID] = []
            err.print(f"adding {2 * n} files of {size / MIB:.0f} MiB at alice")
            for _ in range(2 * n):
                cid = await alice.add(chunks(os.urandom(size)))
                gw.store.add_providers(peer_id_bytes(alice.peer_id), [cid], ttl=3600)
                remote.append(cid)
            await gw.connect(alice.host.addrs()[0])
            async with httpx.AsyncClient(base_url=gw.gateway_url, timeout=60) as http:
                await http_first_byte(http, "/health", {})  # open the kept-alive connection
                tail = {"Range": f"bytes={size - 1000}-"}
                held = f"/ipfs/{local}"
                rows = {
                    "(a) direct": await trials(n, lambda i: direct_first_byte(gw, local)),
                    "(a) GET": await trials(n, lambda i: http_first_byte(http, held, {})),
                    "(a) Range": await trials(n, lambda i: http_first_byte(http, held, tail)),
                    "(b) direct": await trials(n, lambda i: direct_first_byte(gw, remote[i])),
                    "(b) GET": await trials(
                        n, lambda i: http_first_byte(http, f"/ipfs/{remote[n + i]}", {})
                    ),
                }
            nursery.cancel_scope.cancel()
    return rows


async def run(size: int, n: int) -> None:
    rows = await measure(size, n)
    print(f"gateway time to first byte, {size / MIB:.0f} MiB files, median of {n} (p90):")
    a_gap = statistics.median(rows["(a) GET"]) - statistics.median(rows["(a) direct"])
    b_gap = statistics.median(rows["(b) GET"]) - statistics.median(rows["(b) direct"])
    print(f"(a) held locally:    direct Node.fetch {summary(rows['(a) direct'])}")
    print(f"                     gateway GET       {summary(rows['(a) GET'])}")
    print(f"                     gateway Range     {summary(rows['(a) Range'])}  (last 1000 bytes)")
    print(f"                     HTTP adds {a_gap * 1000:.2f} ms")
    print(f"(b) from other node: direct Node.fetch {summary(rows['(b) direct'])}")
    print(f"                     gateway GET       {summary(rows['(b) GET'])}")
    print(f"                     HTTP adds {b_gap * 1000:.2f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__)
    parser.add_argument("--size", type=int, default=16, help="file size in MiB (default 16)")
    parser.add_argument("--trials", type=int, default=20, help="trials per figure (default 20)")
    parser.add_argument("--quick", action="store_true", help="2 MiB files, 5 trials (smoke)")
    args = parser.parse_args(argv)
    size, n = (2, 5) if args.quick else (args.size, args.trials)
    trio.run(run, size * MIB, n)


if __name__ == "__main__":
    main()
