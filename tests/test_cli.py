"""The `coliving` command as a user runs it: separate processes, real nodes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.test_crash import start_node_process

COLIVING = [sys.executable, "-m", "node"]
SOME_CID = "bafybeihkoelcbslf7gtkcaluugvqaehuj5uasgdpwudmhq7agqjp34p45e"  # well formed


def run(*args: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([*COLIVING, *args], capture_output=True, timeout=120, **kw)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}: {proc.stderr.decode()}")
    return proc  # type: ignore[no-any-return]


def test_init_and_id(tmp_path: Path) -> None:
    out = run("init", "--data-dir", str(tmp_path)).stdout.decode()
    assert (tmp_path / "node.key").stat().st_mode & 0o777 == 0o600
    peer = out.split("peer id:")[1].split()[0]
    shown = run("id", "--data-dir", str(tmp_path)).stdout.decode()
    assert peer in shown and "eth address: 0x" in shown
    again = run("init", "--data-dir", str(tmp_path), check=False)
    assert again.returncode == 1 and b"refusing to replace" in again.stderr


def test_id_without_init_is_a_clear_error(tmp_path: Path) -> None:
    proc = run("id", "--data-dir", str(tmp_path), check=False)
    assert proc.returncode == 1
    assert b"coliving init" in proc.stderr


def test_bad_config_file_is_a_clear_error(tmp_path: Path) -> None:
    run("init", "--data-dir", str(tmp_path))
    (tmp_path / "node.toml").write_text('listen = "not a list"\nbogus = 1\n')
    proc = run("node", "run", "--data-dir", str(tmp_path), check=False)
    assert proc.returncode == 1
    assert b"unknown keys ['bogus']" in proc.stderr


def test_a_cache_size_that_is_not_one_is_a_clear_error(tmp_path: Path) -> None:
    run("init", "--data-dir", str(tmp_path))
    proc = run("node", "run", "--data-dir", str(tmp_path), "--cache", "2 parsecs", check=False)
    assert proc.returncode == 1
    assert b"cache_bytes: '2 parsecs' is not a size" in proc.stderr
    (tmp_path / "node.toml").write_text('cache_bytes = "-1GB"\n')
    proc = run("node", "run", "--data-dir", str(tmp_path), check=False)
    assert proc.returncode == 1 and b"is not a size" in proc.stderr


def test_sizes_read_as_a_user_writes_them(tmp_path: Path) -> None:
    from node import ConfigError, NodeConfig, parse_size

    sizes = {"512MiB": 512 << 20, "2 GB": 2 * 10**9, "1.5 gib": 3 << 29, "100": 100, "0": 0}
    assert {text: parse_size(text, "x") for text in sizes} == sizes
    assert parse_size(7, "x") == 7
    for bad in ("inf GB", "nan", "GiB", "2 parsecs", True, 1.5, None):
        with pytest.raises(ConfigError, match="is not a size"):
            parse_size(bad, "x")
    assert NodeConfig.load(tmp_path, cache_bytes="1KiB").cache_bytes == 1024


def test_devnet_demo_adds_and_fetches_the_sample() -> None:
    proc = run("devnet", "--nodes", "3", "--exit-after-demo")
    out = proc.stdout.decode()
    assert "devnet: 3 staked nodes up" in out
    assert out.count("200,000 LIVE staked") == 3
    assert "verified: yes" in out
    assert "CID bafy" in out
    assert "rejected it (not staked on chain); provider index lists it: no" in out


async def test_add_get_cat_against_a_node_process(tmp_path: Path) -> None:
    track = tmp_path / "track.bin"
    payload = os.urandom(1_500_000)
    track.write_bytes(payload)
    proc, addr = await start_node_process(tmp_path / "node")
    try:
        added = await trio.to_thread.run_sync(lambda: run("add", str(track), "--node", addr))
        cid = added.stdout.decode().strip()
        assert cid.startswith("bafy")
        out = tmp_path / "out.bin"
        await trio.to_thread.run_sync(lambda: run("get", cid, "-o", str(out), "--node", addr))
        assert out.read_bytes() == payload
        assert not (tmp_path / "out.bin.part").exists()
        cat = await trio.to_thread.run_sync(lambda: run("cat", cid, "--node", addr))
        assert hashlib.sha256(cat.stdout).digest() == hashlib.sha256(payload).digest()
        peers = await trio.to_thread.run_sync(lambda: run("peers", "--node", addr))
        assert peers.returncode == 0
    finally:
        proc.kill()
        await proc.wait()


def test_client_errors_are_one_line_not_tracebacks(tmp_path: Path) -> None:
    bad_cid = run(
        "get", "not-a-cid", "-o", str(tmp_path / "x"), "--node", _fake_addr(), check=False
    )
    assert bad_cid.returncode == 2 and b"is not a CID" in bad_cid.stderr
    for output, why in (
        (tmp_path / "none" / "x", b"no existing directory"),
        (tmp_path, b"is a directory"),
    ):
        # refused before the dial (the node's address is a closed port)
        bad_output = run("get", SOME_CID, "-o", str(output), "--node", _fake_addr(), check=False)
        assert bad_output.returncode == 2 and why in bad_output.stderr, bad_output.stderr
    bad_addr = run("cat", "bafkqaaa", "--node", "/ip4/1.2.3", check=False)
    assert bad_addr.returncode == 2 and b"bad multiaddr" in bad_addr.stderr
    unreachable = run("peers", "--node", _fake_addr(), check=False)
    assert unreachable.returncode == 1
    assert b"Traceback" not in unreachable.stderr and b"dial" in unreachable.stderr


def _fake_addr() -> str:
    # A closed port on loopback and a well-formed peer ID.
    from p2p.host import peer_id_of_key
    from p2p.keys import NodeKey

    return f"/ip4/127.0.0.1/tcp/9/p2p/{peer_id_of_key(NodeKey.generate())}"


def test_node_compact_shrinks_a_stopped_nodes_store(tmp_path: Path) -> None:
    from protocols.unixfs import import_bytes
    from store.blockstore import BlockStore

    proc = run("node", "compact", "--data-dir", str(tmp_path), check=False)
    assert proc.returncode == 1 and b"no store in" in proc.stderr
    _, cached = import_bytes(os.urandom(3 << 20))
    with BlockStore.open(tmp_path / "store") as store:
        store.put_many(cached)
        refused = run("node", "compact", "--data-dir", str(tmp_path), check=False)
        assert refused.returncode == 1 and b"in use by another coliving process" in refused.stderr
    out = run("node", "compact", "--data-dir", str(tmp_path), "--collect").stdout.decode()
    assert f"removed {len(cached)} blocks" in out and "MiB freed" in out
    assert (tmp_path / "store" / "data.mdb").stat().st_size < 1 << 20
