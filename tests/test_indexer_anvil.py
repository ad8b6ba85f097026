"""The indexer on a real anvil: reorgs, and a discovery process killed mid-sync."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from chain.local import LocalChain, open_chain
from discovery.indexer import IndexerConfig
from store.index import Page
from tests.anvil import rpc_call
from tests.music import Discovery, Wallet, open_discovery

REPO = Path(__file__).resolve().parent.parent


def snapshot_of(d: Discovery) -> dict[str, Any]:
    """What the index answers, for comparing two indexes."""
    page = Page(limit=500)
    users = [d.store.user(i) for i in range(1, 6)]
    return {
        "users": users,
        "tracks": [d.store.track(i) for i in range(10, 40)],
        "followers": [d.store.followers(i, page) for i in range(1, 6)],
        "search": d.store.search_tracks("song", page),
        "rejections": [r.reason for r in d.store.rejections(page)],
    }


async def test_reorg_leaves_the_index_of_the_final_chain(anvil_url: str, tmp_path: Path) -> None:
    chain = await open_chain(anvil_url)
    alice, bob, carol = Wallet(chain, 1), Wallet(chain, 2), Wallet(chain, 3)
    await alice.sign_up("alice")
    await bob.sign_up("bob")
    live = open_discovery(chain, tmp_path / "live.sqlite")
    await live.sync()
    snap = rpc_call(anvil_url, "evm_snapshot")
    # the branch that will be dropped: 4 blocks
    await alice.upload(10, "Song one")
    await bob.act("User", 1, "Follow")
    await bob.act("Track", 10, "Repost")
    await carol.sign_up("bob")  # refused (taken): rejections are undone too
    await live.sync()
    assert live.store.track(10) is not None
    dropped_digest = live.store.digest()
    assert rpc_call(anvil_url, "evm_revert", [snap]) is True
    # a different, longer branch: 6 blocks
    await carol.sign_up("carol")
    await alice.upload(11, "Song two")
    await carol.act("User", 1, "Follow")
    await carol.act("Track", 11, "Save")
    await bob.act("User", 3, "Follow")
    await alice.upload(12, "Song three")
    with trio.fail_after(30):
        await live.sync()
    assert live.indexer.reorgs == 1 and live.indexer.undone >= 1
    assert live.store.track(10) is None
    fresh = open_discovery(chain, tmp_path / "fresh.sqlite")
    await fresh.sync()
    assert live.store.digest() == fresh.store.digest() != dropped_digest
    assert snapshot_of(live) == snapshot_of(fresh)


async def test_reorg_deeper_than_the_confirmations(anvil_url: str, tmp_path: Path) -> None:
    chain = await open_chain(anvil_url)
    alice = Wallet(chain, 1)
    await alice.sign_up("alice")
    snap = rpc_call(anvil_url, "evm_snapshot")
    for i in range(6):
        await alice.upload(10 + i, f"Song {i}")
    live = open_discovery(chain, tmp_path / "live.sqlite", config=IndexerConfig(confirmations=2))
    await live.sync_to(await chain.block_number() - 2)
    assert live.store.track(13) is not None
    rpc_call(anvil_url, "evm_revert", [snap])
    for i in range(8):
        await alice.upload(20 + i, f"Song {i}")
    await live.sync_to(await chain.block_number() - 2)
    assert live.indexer.reorgs == 1
    fresh = open_discovery(chain, tmp_path / "fresh.sqlite", config=IndexerConfig(confirmations=2))
    await fresh.sync_to(await chain.block_number() - 2)
    assert live.store.digest() == fresh.store.digest()
    assert live.store.track(13) is None and live.store.track(25) is not None


class Cuttable:
    """A TCP forwarder to ``target`` on 127.0.0.1 that the test can cut (every
    connection reset, new ones refused) and restore: an RPC that goes away."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = True
        self.port = 0
        self._scopes: set[trio.CancelScope] = set()
        self.restored = trio.Event()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        if not self.up:
            await client.aclose()
            return
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                up = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                async with client, up, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pipe, client, up, nursery)
                    nursery.start_soon(self._pipe, up, client, nursery)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self._scopes.discard(scope)

    @staticmethod
    async def _pipe(src: trio.SocketStream, dst: trio.SocketStream, nursery: trio.Nursery) -> None:
        async for data in src:
            await dst.send_all(data)
        nursery.cancel_scope.cancel()

    def cut(self) -> None:
        self.up = False
        for scope in list(self._scopes):
            scope.cancel()

    def restore(self) -> None:
        self.up = True


async def test_an_rpc_that_goes_away_mid_sync_is_retried(anvil_url: str, tmp_path: Path) -> None:
    from chain.entity import RpcReader
    from discovery.indexer import Indexer
    from store.sqlite_index import SqliteIndex

    chain = await _chain_with_actions(anvil_url, 60)
    head = await chain.block_number()
    proxy = Cuttable(int(anvil_url.rsplit(":", 1)[1]))
    store = SqliteIndex(tmp_path / "live.sqlite")
    config = IndexerConfig(batch_blocks=5, poll_interval=0.05, retry_min=0.05, retry_max=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        reader = RpcReader(f"http://127.0.0.1:{proxy.port}", chain.deployment, timeout=2.0)
        indexer = Indexer(
            store, reader, start_block=chain.deployment.entity_manager_block, config=config
        )
        await nursery.start(indexer.run)
        with trio.fail_after(60):
            await indexer.wait_for(chain.deployment.entity_manager_block + 10)
            proxy.cut()
            while indexer.chain_errors < 3:  # the indexer's own retries, each a failed read
                await indexer.wait_for_error()
            stuck = indexer.tip
            assert stuck is not None and stuck.number < head
            assert indexer.stats().last_error is not None
            proxy.restore()
            await indexer.wait_for(head)
        nursery.cancel_scope.cancel()
    await reader.aclose()
    fresh = open_discovery(chain, tmp_path / "fresh.sqlite")
    await fresh.sync()
    assert store.digest() == fresh.store.digest()
    assert indexer.stats().last_error is None
    store.close()


_INDEXED = re.compile(r"indexed to block (\d+), digest ([0-9a-f]{64})")


class DiscoveryProcess:
    """`coliving discovery run -v` in its own process; reads its progress lines."""

    def __init__(self, data_dir: Path, rpc: str, deployment: Path) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import node; node.main()",
                "discovery",
                "run",
                "--data-dir",
                str(data_dir),
                "--rpc",
                rpc,
                "--deployment",
                str(deployment),
                "--gateway",
                "127.0.0.1:0",
                "-v",
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def _next_indexed(self) -> tuple[int, str]:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            if match := _INDEXED.search(raw.decode(errors="replace")):
                return int(match.group(1)), match.group(2)
        raise AssertionError(f"the discovery process exited ({self.process.wait()})")

    async def indexed(self, at_least: int) -> tuple[int, str]:
        """The first progress line at or past block ``at_least``: (block, digest)."""
        while True:
            # (mypy 2.4 misreads run_sync's keyword after *args: Unpack[Ts])
            block, digest = await trio.to_thread.run_sync(
                self._next_indexed,
                abandon_on_cancel=True,  # type: ignore[call-arg]
            )
            if block >= at_least:
                return block, digest

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()


async def _chain_with_actions(anvil_url: str, count: int) -> LocalChain:
    chain = await open_chain(anvil_url)
    users = [Wallet(chain, i + 1) for i in range(5)]
    for u in users:
        await u.sign_up(f"user{u.user_id}")
    for i in range(count):
        await users[i % 5].upload(100 + i, f"Song {i}")
    return chain


@pytest.mark.slow
async def test_sigkill_mid_sync_restarts_to_the_same_digest(anvil_url: str, tmp_path: Path) -> None:
    chain = await _chain_with_actions(anvil_url, 200)
    deployment = tmp_path / "deployment.json"
    deployment.write_text(chain.deployment.to_json())
    data_dir = tmp_path / "disco"
    data_dir.mkdir()
    (data_dir / "node.toml").write_text("[discovery]\nbatch_blocks = 2\npoll_interval = 0.05\n")
    head = await chain.block_number()
    first = DiscoveryProcess(data_dir, anvil_url, deployment)
    try:
        with trio.fail_after(60):
            block, _ = await first.indexed(chain.deployment.entity_manager_block + 20)
    finally:
        first.kill()
    assert block < head, "the indexer finished before the kill; the test proves nothing"
    second = DiscoveryProcess(data_dir, anvil_url, deployment)
    try:
        with trio.fail_after(90):
            _, digest = await second.indexed(head)
    finally:
        second.kill()
    fresh = open_discovery(chain, tmp_path / "fresh.sqlite")
    await fresh.sync()
    assert digest == fresh.store.digest().hex()
