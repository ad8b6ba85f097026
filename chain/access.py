"""Chain access for trio code: one web3 instance, one worker thread, one config switch.

web3's async API does not run under trio, and neither eth-tester nor a web3
HTTP provider is safe to use from several threads at once. So every chain
call goes through :meth:`ChainAccess.run`: the sync function runs in a worker
thread (``trio.to_thread``) under a one-slot CapacityLimiter. The trio loop
never blocks; callers just await.

``ChainConfig.rpc`` is the switch: ``"embedded"`` is an in-process py-evm
chain (eth-tester) with our contracts deployed at start; anything else is a
JSON-RPC URL (anvil, any Ethereum node), with a deployment file naming the
contract addresses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio
from web3 import Web3

log = logging.getLogger(__name__)
T = TypeVar("T")
EMBEDDED = "embedded"


class ChainUnavailable(Exception):
    """The RPC endpoint cannot be reached or answers nonsense; retried with backoff."""


@dataclass(frozen=True)
class ChainConfig:
    rpc: str = EMBEDDED
    deployment: Path | None = None
    expected_chain_id: int | None = None
    poll_interval: float = 1.0
    request_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.rpc != EMBEDDED and not self.rpc.startswith(("http://", "https://")):
            raise ValueError(f"chain rpc must be 'embedded' or an http(s) URL, not {self.rpc!r}")


def connect(config: ChainConfig) -> Web3:
    """A sync Web3 for ``config`` (no network traffic yet for an RPC URL)."""
    if config.rpc == EMBEDDED:
        from chain.deploy import embedded_web3

        return embedded_web3()
    return Web3(Web3.HTTPProvider(config.rpc, request_kwargs={"timeout": config.request_timeout}))


class ChainAccess:
    """Serialises sync web3 calls onto one worker thread; or, made by
    :meth:`pool` for an RPC URL, runs up to N at once, each thread on a Web3
    of its own (an HTTP provider is safe in one thread at a time, not shared)."""

    def __init__(self, w3: Web3, *, more: tuple[Web3, ...] = ()) -> None:
        self.w3 = w3
        self._free = [w3, *more]
        self._limiter = trio.CapacityLimiter(len(self._free))
        self.calls = 0

    @classmethod
    def pool(cls, config: ChainConfig, slots: int) -> ChainAccess:
        """``slots`` concurrent calls to ``config.rpc`` (one for the embedded chain)."""
        if slots < 1:
            raise ValueError("a chain access pool needs at least one slot")
        if config.rpc == EMBEDDED:
            return cls(connect(config))
        return cls(connect(config), more=tuple(connect(config) for _ in range(slots - 1)))

    def _call(self, fn: Callable[[Web3], T]) -> T:
        w3 = self._free.pop()  # under the limiter: there is always one free
        try:
            return fn(w3)
        finally:
            self._free.append(w3)

    async def run(self, fn: Callable[[Web3], T]) -> T:
        self.calls += 1
        try:
            return await trio.to_thread.run_sync(self._call, fn, limiter=self._limiter)
        except (OSError, ConnectionError) as exc:
            raise ChainUnavailable(f"chain RPC unreachable: {exc}") from None
        except Exception as exc:
            if type(exc).__module__.startswith(("requests", "urllib3", "aiohttp", "httpx")):
                raise ChainUnavailable(f"chain RPC failed: {exc}") from None
            raise

    def run_sync(self, fn: Callable[[Web3], Any]) -> Any:
        """For start-up code outside trio only."""
        return fn(self.w3)
