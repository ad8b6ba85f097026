"""The other process of the transfer benchmark (see bench/transfer.py).

``python -m bench.server raw``
    a bare Host that answers each stream on RAW_PROTOCOL with the number of
    bytes the request asks for (an 8-byte big-endian count), then closes.
``python -m bench.server provide --data-dir D --size MIB``
    a full Node that has added the benchmark file (``bench_file``).

Each prints one JSON line on stdout once it listens (``addr``, and ``cid`` for
a provider), then serves until its stdin closes: the parent holds the other
end, so a server never outlives the benchmark, even one that was killed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from node import Node, NodeConfig, freeze_startup_heap
from p2p.abc import Stream
from p2p.host import Host, HostConfig
from p2p.keys import NodeKey

RAW_PROTOCOL = "/coliving/bench/raw/1.0.0"
RAW_WRITE = 1 << 20  # write slice: what Bitswap's 1 MiB batches put on the wire
MIB = 1 << 20


async def bench_file(size_mib: int, seed: int = 1) -> AsyncIterator[bytes]:
    """The same pseudo-random bytes in every process: no two 256 KiB leaves equal."""
    rng = random.Random(seed)
    for _ in range(size_mib):
        yield rng.randbytes(MIB)


async def _until_stdin_closes() -> None:
    async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
        while await stdin.receive_some(4096):
            pass


def _announce(info: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()


async def serve_raw() -> None:
    host = Host(NodeKey.generate(), HostConfig())
    payload = random.Random(0).randbytes(RAW_WRITE)

    async def handle(stream: Stream) -> None:
        head = b""
        while len(head) < 8:
            chunk = await stream.read(8 - len(head))
            if not chunk:
                return
            head += chunk
        left = int.from_bytes(head, "big")
        while left > 0:
            n = min(left, RAW_WRITE)
            await stream.write(payload if n == RAW_WRITE else payload[:n])
            left -= n
        await stream.close_write()
        await stream.read(1)  # the reader's close tells us it has everything
        await stream.close()

    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        host.set_handler(RAW_PROTOCOL, handle)
        _announce({"addr": host.addrs()[0]})
        await _until_stdin_closes()
        nursery.cancel_scope.cancel()


async def serve_provider(data_dir: Path, size_mib: int) -> None:
    node = Node(NodeConfig(data_dir=data_dir, allow_all=True))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        start = time.perf_counter()
        root = await node.add(bench_file(size_mib), name="bench")
        _announce(
            {
                "addr": node.host.addrs()[0],
                "cid": str(root),
                "add_seconds": time.perf_counter() - start,
            }
        )
        await _until_stdin_closes()
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server")
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("raw")
    provide = sub.add_parser("provide")
    provide.add_argument("--data-dir", type=Path, required=True)
    provide.add_argument("--size", type=int, required=True, help="file size in MiB")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    freeze_startup_heap()
    if args.mode == "raw":
        trio.run(serve_raw)
    else:
        trio.run(serve_provider, args.data_dir, args.size)


if __name__ == "__main__":
    main()
