"""The gas relay: users' signed EntityManager actions, submitted and paid for.

A client posts (the shape of Audius's identity service, ``POST /relay``)::

    {"contractAddress": "0x...", "senderAddress": "0x<the user's wallet>",
     "encodedABI": "0x<manageEntity calldata>", "gasLimit": <ignored>}

and gets ``{"txHash": "0x...", "block": n}`` once the transaction is mined.
Before anything is sent, in this order:

1. the client address has a token (per-IP bucket), else RateLimited;
2. the body is that JSON object, within MAX_BODY bytes;
3. the contract is the configured EntityManager, and the calldata is exactly
   one ``manageEntity(...)`` call (the selector, canonical ABI encoding, no
   trailing bytes): the relay pays for nothing else;
4. the EIP-712 signature recovers (well formed, low s) to ``senderAddress``:
   a tampered field recovers to another address and is refused here;
5. the wallet has a token (per-wallet bucket), else RateLimited;
6. the same signed action is not already in flight here, and the chain's
   gas estimate does not revert (a replay reverts ``NonceAlreadyUsed``).

Then :class:`chain.relay.RelayWallet` sends it (one nonce sequence for all
callers). Counters for /metrics: relayed, refused (by reason), rate limited.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Final

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.address import is_hex_address, to_checksum_address

from chain.access import ChainUnavailable
from chain.entity import (
    MANAGE_ENTITY_INPUTS,
    MANAGE_ENTITY_SELECTOR,
    SignedAction,
    recover_signer,
)
from chain.errors import ChainRevert
from chain.relay import RelayFailed, RelayWallet
from discovery.listens import RateLimited, TokenBuckets

MAX_BODY: Final = 16 * 1024

__all__ = [
    "MANAGE_ENTITY_INPUTS",
    "MANAGE_ENTITY_SELECTOR",
    "RateLimited",
    "Relay",
    "RelayConfig",
    "RelayRefused",
]


class RelayRefused(ValueError):
    """The relay will not send this; the message says why (an HTTP 400)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # a short label for /metrics


@dataclass(frozen=True)
class RelayConfig:
    """``[identity.relay]`` of node.toml."""

    wallet_rate: float = 1.0  # actions a second per user wallet
    wallet_burst: int = 30
    ip_rate: float = 5.0  # relay requests a second per client address
    ip_burst: int = 100
    max_clients: int = 65_536  # buckets kept per kind; the least recent are forgotten

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"relay {f.name} must be a positive number, not {value!r}")
        for name in ("wallet_burst", "ip_burst", "max_clients"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"relay {name} must be a whole number")


def decode_manage_entity(data: bytes, *, chain_id: int, contract: str) -> SignedAction:
    """The calldata of exactly one ``manageEntity`` call as a SignedAction."""
    if data[:4] != MANAGE_ENTITY_SELECTOR:
        raise RelayRefused("the call is not manageEntity", reason="not_manage_entity")
    try:
        args = abi_decode(list(MANAGE_ENTITY_INPUTS), data[4:], strict=True)
    except Exception as exc:  # eth-abi raises several types for malformed data
        raise RelayRefused(
            f"manageEntity arguments do not decode: {exc}", reason="malformed"
        ) from None
    if abi_encode(list(MANAGE_ENTITY_INPUTS), list(args)) != data[4:]:
        raise RelayRefused("manageEntity calldata is not canonical", reason="malformed")
    user_id, entity_type, entity_id, action, metadata, nonce, signature = args
    return SignedAction(
        chain_id=chain_id,
        contract=to_checksum_address(contract),
        user_id=int(user_id),
        entity_type=str(entity_type),
        entity_id=int(entity_id),
        action=str(action),
        metadata=str(metadata),
        nonce=bytes(nonce),
        signature=bytes(signature),
    )


def _hex(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise RelayRefused(f"{what} must be a 0x hex string", reason="malformed")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise RelayRefused(f"{what} is not hex", reason="malformed") from None


class Relay:
    """Checks, limits and sends relayed actions. One per identity service."""

    def __init__(
        self,
        wallet: RelayWallet,
        *,
        contract: str,
        chain_id: int,
        config: RelayConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.wallet = wallet
        self.contract = to_checksum_address(contract)
        self.chain_id = chain_id
        self.config = cfg = config or RelayConfig()
        self._by_ip: TokenBuckets[str] = TokenBuckets(
            cfg.ip_rate, cfg.ip_burst, max_keys=cfg.max_clients, clock=clock
        )
        self._by_wallet: TokenBuckets[str] = TokenBuckets(
            cfg.wallet_rate, cfg.wallet_burst, max_keys=cfg.max_clients, clock=clock
        )
        self._in_flight: set[bytes] = set()
        self.relayed = 0
        self.refused: Counter[str] = Counter()
        self.rate_limited: Counter[str] = Counter()  # "ip" | "wallet"

    def check(self, body: object) -> tuple[SignedAction, str]:
        """Steps 2-4 of the module doc: the action and its signer (0x lowercase)."""
        if not isinstance(body, dict):
            raise RelayRefused("the body must be a JSON object", reason="malformed")
        if unknown := sorted(
            set(body) - {"contractAddress", "senderAddress", "encodedABI", "gasLimit"}
        ):
            raise RelayRefused(f"unknown keys: {unknown}", reason="malformed")
        contract = body.get("contractAddress")
        if not isinstance(contract, str) or not is_hex_address(contract):
            raise RelayRefused("contractAddress must be an address", reason="malformed")
        if to_checksum_address(contract) != self.contract:
            raise RelayRefused(
                f"only calls to the EntityManager at {self.contract} are relayed",
                reason="wrong_contract",
            )
        sender = body.get("senderAddress")
        if not isinstance(sender, str) or not is_hex_address(sender):
            raise RelayRefused(
                "senderAddress must be the signing wallet's address", reason="malformed"
            )
        signed = decode_manage_entity(
            _hex(body.get("encodedABI"), "encodedABI"),
            chain_id=self.chain_id,
            contract=self.contract,
        )
        signer = recover_signer(signed)
        if signer is None:
            raise RelayRefused("the signature is malformed", reason="bad_signature")
        if signer != sender.lower():
            raise RelayRefused(
                "the signature is not senderAddress's (a field was changed after signing, "
                "or another wallet signed)",
                reason="bad_signature",
            )
        return signed, signer

    async def relay(self, body: object, client: str) -> dict[str, Any]:
        """Check, limit and send; ``{"txHash", "block"}``. RelayRefused,
        RateLimited, or ChainUnavailable / RelayFailed (a 502/503)."""
        try:
            if wait := self._by_ip.take(client):
                self.rate_limited["ip"] += 1
                raise RateLimited(f"too many relay requests from {client}", wait)
            signed, signer = self.check(body)
            if wait := self._by_wallet.take(signer):
                self.rate_limited["wallet"] += 1
                raise RateLimited(f"too many actions from wallet {signer}", wait)
            digest = signed.digest()
            if digest in self._in_flight:
                raise RelayRefused("this signed action is already being relayed", reason="replay")
            self._in_flight.add(digest)
            try:
                sent = await self.wallet.submit(self.contract, signed.calldata())
            finally:
                self._in_flight.discard(digest)
        except RelayRefused as exc:
            self.refused[exc.reason] += 1
            raise
        except ChainRevert as exc:
            reason = "replay" if exc.name == "NonceAlreadyUsed" else "revert"
            self.refused[reason] += 1
            what = "replayed (its nonce was used)" if reason == "replay" else f"refused: {exc}"
            raise RelayRefused(
                f"the contract would revert: the action is {what}", reason=reason
            ) from None
        except (ChainUnavailable, RelayFailed):
            self.refused["chain"] += 1
            raise
        self.relayed += 1
        return {"txHash": "0x" + sent.tx_hash.hex(), "block": sent.block}
