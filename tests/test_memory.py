"""Adding a big file keeps memory flat: the importer and store stream."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from node import Client
from simnet.local import start_nodes


async def generated(size: int) -> AsyncIterator[bytes]:
    """Distinct 1 MiB slices (no two leaves equal), made on the fly."""
    seed = b"coliving"
    for i in range(size >> 20):
        block = hashlib.sha256(seed + i.to_bytes(8, "big")).digest()
        yield block * (1 << 15)


async def peak_while_uploading(tmp_path: Path, size: int) -> int:
    async with trio.open_nursery() as nursery:
        (node,) = await start_nodes(nursery, tmp_path, 1)
        client = Client()
        await nursery.start(client.run)
        peer = await client.connect(node.host.addrs()[0])
        tracemalloc.start()
        try:
            with trio.fail_after(120):
                got = (await client.upload(peer, generated(size), name="big")).size
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert got == size
        nursery.cancel_scope.cancel()
    return peak


async def test_upload_memory_does_not_grow_with_file_size(tmp_path: Path) -> None:
    small = await peak_while_uploading(tmp_path / "small", 16 << 20)
    large = await peak_while_uploading(tmp_path / "large", 160 << 20)
    # 10x the bytes may not cost more than a few MiB more heap at the peak.
    print(f"peak heap: 16 MiB upload {small >> 20} MiB, 160 MiB upload {large >> 20} MiB")
    assert large - small < 8 << 20, (small, large)
    assert large < 48 << 20
