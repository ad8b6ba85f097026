"""The relay's wallet: submits users' signed calls from one funded account.

Many callers at once (the identity service relays for every user) share one
sending account, so its transaction nonce is the thing to get right:

1. the call is first *estimated* (``eth_estimateGas``): a call that would
   revert (a replayed signature, a bad one, oversized metadata) is refused
   here with its decoded error and never takes a nonce;
2. under one lock, the next nonce is taken, the transaction signed locally
   and sent; the lock is held only for that (no waiting for a block), so
   sends are ordered and never reuse or skip a nonce. A node that answers
   "nonce too low" (another sender used this account, or a restart) makes
   the wallet read the pending count again and retry;
3. the receipt is polled outside the lock, each poll a short call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import trio
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import TransactionNotFound

from chain.access import ChainAccess, ChainUnavailable
from chain.errors import ChainRevert, decode_revert

_NONCE_ERRORS = ("nonce too low", "already known", "nonce has already been used", "invalid nonce")


def _send_raw(w3: Web3, raw: bytes) -> bytes:
    return bytes(w3.eth.send_raw_transaction(raw))


class RelayFailed(Exception):
    """The transaction was sent but failed on chain, or never got a receipt."""


@dataclass(frozen=True, slots=True)
class Relayed:
    tx_hash: bytes
    block: int
    gas_used: int


class RelayWallet:
    """One funded account that pays for others' calls. Safe for concurrent use."""

    def __init__(
        self,
        access: ChainAccess,
        key: bytes | str,
        *,
        gas_margin: float = 1.25,
        receipt_timeout: float = 60.0,
        poll_interval: float = 0.05,
        sleep: Callable[[float], Any] = trio.sleep,
    ) -> None:
        self.access = access
        self.account: LocalAccount = Account.from_key(key)
        self.gas_margin = gas_margin
        self.receipt_timeout = receipt_timeout
        self.poll_interval = poll_interval
        self._sleep = sleep
        self._lock = trio.Lock()
        self._next_nonce: int | None = None
        self.sent = 0
        self.nonce_resyncs = 0

    @property
    def address(self) -> str:
        return str(self.account.address)

    async def balance(self) -> int:
        return await self.access.run(lambda w3: int(w3.eth.get_balance(self.account.address)))

    async def submit(self, to: str, data: bytes) -> Relayed:
        """Estimate, send and wait for one call; ChainRevert if it would revert."""
        target = to_checksum_address(to)
        gas, gas_price = await self._estimate(target, data)
        tx_hash = await self._send(target, data, gas, gas_price)
        return await self._receipt(tx_hash)

    async def _estimate(self, to: str, data: bytes) -> tuple[int, int]:
        def run(w3: Web3) -> tuple[int, int]:
            try:
                gas = w3.eth.estimate_gas({"from": self.account.address, "to": to, "data": data})
            except Exception as exc:
                revert = decode_revert(exc)
                if revert is None:
                    raise
                raise revert from None
            return int(gas), int(w3.eth.gas_price)

        try:
            return await self.access.run(run)
        except ChainRevert:
            raise
        except ChainUnavailable:
            raise
        except Exception as exc:  # an RPC error that is not a revert
            raise ChainUnavailable(f"gas estimate failed: {exc}") from None

    async def _send(self, to: str, data: bytes, gas: int, gas_price: int) -> bytes:
        async with self._lock:
            for attempt in range(3):
                if self._next_nonce is None:
                    self._next_nonce = await self.access.run(self._pending_count)
                nonce = self._next_nonce
                tx = {
                    "to": to,
                    "data": data,
                    "gas": int(gas * self.gas_margin) + 1000,
                    "gasPrice": gas_price,
                    "nonce": nonce,
                    "chainId": await self._chain_id(),
                    "value": 0,
                }
                raw = self.account.sign_transaction(cast(Any, tx)).raw_transaction
                try:
                    tx_hash = await self.access.run(functools.partial(_send_raw, raw=raw))
                except (ChainUnavailable, ChainRevert):
                    raise
                except Exception as exc:
                    if attempt < 2 and any(m in str(exc).lower() for m in _NONCE_ERRORS):
                        self._next_nonce = None  # read the pending count again
                        self.nonce_resyncs += 1
                        continue
                    raise ChainUnavailable(f"sending the relayed call failed: {exc}") from None
                self._next_nonce = nonce + 1
                self.sent += 1
                return bytes(tx_hash)
        raise ChainUnavailable("the relay's nonce kept moving; try again")

    _cached_chain_id: int | None = None

    async def _chain_id(self) -> int:
        if self._cached_chain_id is None:
            self._cached_chain_id = await self.access.run(lambda w3: int(w3.eth.chain_id))
        return self._cached_chain_id

    def _pending_count(self, w3: Web3) -> int:
        return int(w3.eth.get_transaction_count(self.account.address, "pending"))

    async def _receipt(self, tx_hash: bytes) -> Relayed:
        def poll(w3: Web3) -> Any:
            try:
                return w3.eth.get_transaction_receipt(HexBytes(tx_hash))
            except TransactionNotFound:
                return None

        with trio.move_on_after(self.receipt_timeout):
            while True:
                receipt = await self.access.run(poll)
                if receipt is not None:
                    if receipt["status"] != 1:
                        raise RelayFailed(f"transaction 0x{tx_hash.hex()} reverted on chain")
                    return Relayed(tx_hash, int(receipt["blockNumber"]), int(receipt["gasUsed"]))
                await self._sleep(self.poll_interval)
        raise RelayFailed(f"no receipt for 0x{tx_hash.hex()} in {self.receipt_timeout:.0f} s")
