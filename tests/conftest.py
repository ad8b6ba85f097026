"""Shared fixtures: real nodes on 127.0.0.1 in temporary directories."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _quiet_libp2p() -> None:
    # py-libp2p logs expected stream resets as warnings, some via the root logger
    logging.getLogger("libp2p").setLevel(logging.ERROR)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path


def pattern(n: int) -> bytes:
    """The vector content: byte i is i mod 251 (same as tools/js/cid_vectors.mjs)."""
    return (bytes(range(251)) * (n // 251 + 1))[:n]


@pytest.fixture
def anvil_url() -> Iterator[str]:
    """A fresh anvil chain (automine) on 127.0.0.1; skipped if the npm binary is missing."""
    from tests.anvil import start_anvil

    with start_anvil() as url:
        yield url
