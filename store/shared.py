"""Several block stores in one LMDB environment: for simulations only.

A real node has one environment of its own (store.blockstore). An environment
costs four file descriptors, so a process simulating thousands of nodes
(simnet.virtual) runs out of them; :class:`SharedEnvironment` gives each node
its own *named databases* (``<name>/blocks``, ``<name>/pins``...) in one
environment shared by a group of nodes. The stores are independent except
that ``stats().bytes_used`` counts the whole environment and that their
writes are serialised by LMDB's one writer per environment. Nothing here
locks the directory against another process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lmdb

from store.blockstore import BlockStore, StoreError

DBS_PER_STORE = 4  # blocks, pins, providers, meta


class _Prefixed:
    """The part of lmdb.Environment that BlockStore uses, with its database
    names prefixed by the store's name."""

    def __init__(self, env: Any, prefix: bytes) -> None:
        self._env = env
        self._prefix = prefix

    def open_db(self, name: bytes, **kwargs: Any) -> Any:
        return self._env.open_db(self._prefix + name, **kwargs)

    def begin(self, **kwargs: Any) -> Any:
        return self._env.begin(**kwargs)

    def sync(self, force: bool = False) -> None:
        self._env.sync(force)

    def info(self) -> Any:
        return self._env.info()

    def stat(self) -> Any:
        return self._env.stat()

    def close(self) -> None:
        """The environment outlives each store; SharedEnvironment.close ends it."""


class SharedEnvironment:
    """One LMDB environment holding up to ``capacity`` block stores."""

    def __init__(self, path: Path, *, capacity: int, map_size: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        try:
            # no fsync at commit: a simulation never recovers from a power cut, and
            # an fsync per write would dominate its wall time
            self._env = lmdb.open(
                str(path),
                map_size=map_size,
                max_dbs=capacity * DBS_PER_STORE,
                subdir=True,
                sync=False,
                metasync=False,
            )
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the shared store in {path}: {exc}") from None
        self.path = path
        self.capacity = capacity
        self._names: set[str] = set()

    def store(self, name: str) -> BlockStore:
        """The store called ``name`` (a new one is empty)."""
        if name in self._names or "/" in name:
            raise ValueError(f"store name {name!r} is taken or has a '/'")
        if len(self._names) >= self.capacity:
            raise ValueError(f"{self.path} already holds {self.capacity} stores")
        self._names.add(name)
        # lock_fd -1: BlockStore.close() leaves the shared environment open
        env: Any = _Prefixed(self._env, f"{name}/".encode())
        store = BlockStore(self.path / name, env, -1)
        store._check_schema()
        store.recover()
        return store

    def close(self) -> None:
        self._env.close()
