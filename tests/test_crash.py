"""A node process killed with SIGKILL mid-upload restarts with a consistent store."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from node import Client
from p2p.abc import StreamError
from p2p.host import peer_of_addr
from protocols.unixfs import import_bytes
from protocols.upload import UploadError
from store.blockstore import BlockStore


async def start_node_process(data_dir: Path) -> tuple[trio.Process, str]:
    """`coliving node run` in its own process; returns it and its first address."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "node", "node", "run", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    buf = b""
    with trio.fail_after(30):
        while b"\n" not in buf:
            chunk = await proc.stdout.receive_some(4096)
            assert chunk, "node process exited before printing its address"
            buf += chunk
    return proc, buf.split(b"\n")[0].decode().strip()


async def test_sigkill_mid_upload_leaves_whole_or_absent(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    kept = os.urandom(3 * 262_144 + 99)
    big = os.urandom(48 << 20)
    sent = trio.Event()
    proc, addr = await start_node_process(data_dir)
    try:
        async with trio.open_nursery() as nursery:
            client = Client()
            await nursery.start(client.run)
            with trio.fail_after(30):
                peer = await client.connect(addr)
                kept_cid = (await client.upload(peer, _chunks(kept), name="kept")).cid

            async def slow_source() -> AsyncIterator[bytes]:
                for i in range(0, len(big), 1 << 20):
                    if i == 24 << 20:
                        sent.set()  # half the file is on the wire: time to die
                        await trio.sleep_forever()
                    yield big[i : i + (1 << 20)]

            async def doomed_upload() -> None:
                with contextlib.suppress(StreamError, UploadError):
                    await client.upload(peer, slow_source(), name="doomed")

            nursery.start_soon(doomed_upload)
            with trio.fail_after(30):
                await sent.wait()
                # A round trip on the query protocol proves the node read what was sent.
                await client.ask(peer, "info")
            proc.send_signal(signal.SIGKILL)
            with trio.fail_after(10):
                await proc.wait()
            nursery.cancel_scope.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()

    # Before recovery: the killed upload left blocks under an open session.
    with BlockStore.open(data_dir / "store", recover=False) as store:
        assert len(store.open_sessions()) == 1
        assert store.stats().blocks > len(import_bytes(kept)[1])

    # Reopen: recovery runs, the partial upload is gone, the acknowledged one is whole.
    with BlockStore.open(data_dir / "store") as store:
        pins = store.pins()
        assert [p.name for p in pins] == ["kept"]
        assert pins[0].cid == kept_cid == import_bytes(kept)[0]
        assert store.missing_blocks(kept_cid) == []
        assert store.stats().blocks == len(import_bytes(kept)[1])
        assert store.open_sessions() == []

    # The node restarts on that directory and serves the kept file.
    proc, addr = await start_node_process(data_dir)
    try:
        async with trio.open_nursery() as nursery:
            client = Client()
            await nursery.start(client.run)
            with trio.fail_after(30):
                peer = await client.connect(addr)
                assert peer == peer_of_addr(addr)
                fetch = await client.fetch(kept_cid, [peer])
                assert await fetch.read_all() == kept
            nursery.cancel_scope.cancel()
    finally:
        proc.kill()
        await proc.wait()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data
