"""Shared fixtures: real nodes on 127.0.0.1 in temporary directories."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from chain.stake import ChainStakeOracle
    from p2p.keys import PeerId
    from store.blockstore import BlockStore


@pytest.fixture(autouse=True)
def _quiet_libp2p() -> None:
    # py-libp2p logs expected stream resets as warnings, some via the root logger
    logging.getLogger("libp2p").setLevel(logging.ERROR)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BlockStore]:
    """A real LMDB block store in a temporary directory."""
    from store.blockstore import BlockStore

    with BlockStore.open(tmp_path / "store") as opened:
        yield opened


def pattern(n: int) -> bytes:
    """The vector content: byte i is i mod 251 (same as tools/js/cid_vectors.mjs)."""
    return (bytes(range(251)) * (n // 251 + 1))[:n]


async def chunks(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """``data`` as an upload or add reads a file: in slices of ``size``."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def wait_unstaked(oracle: ChainStakeOracle, peer: PeerId) -> int:
    """Until the oracle no longer accepts ``peer``; returns the head it saw then."""
    while True:
        stake = await oracle.stake_of(peer)
        if stake is None or not stake.sufficient:
            assert oracle.head is not None
            return oracle.head
        await oracle.head_changed.wait()


@pytest.fixture
def anvil_url() -> Iterator[str]:
    """A fresh anvil chain (automine) on 127.0.0.1; skipped if the npm binary is missing."""
    from tests.anvil import start_anvil

    with start_anvil() as url:
        yield url
