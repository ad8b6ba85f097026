"""The identity role of a node: hedgehog accounts and the gas relay, composed.

An :class:`IdentityService` holds the :class:`~identity.accounts.Accounts`
(over a :class:`~store.identity.IdentityStore` in the discovery index's
SQLite file, checking handles against that index) and, when the node has a
relay wallet, the :class:`~identity.relay.Relay` that pays for users'
signed EntityManager actions. :class:`node.Node` builds one when its config
asks for the identity role, which needs the discovery role on the same node
(the chain it indexes is the one the relay sends to). The gateway answers
its routes (:mod:`gateway.identity`); it has no tasks of its own.

The relay wallet's private key is read from a file (``relay_key_file``:
the hex key, 0x optional, nothing else); it is never in node.toml. A file
others can read is used but logged as a warning.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

from chain.access import ChainAccess
from chain.relay import RelayWallet
from identity.accounts import Accounts, HandleIndex, IdentityConfig
from identity.relay import Relay
from store.identity import IdentityStore

log = logging.getLogger("coliving.identity")


class RelayKeyError(ValueError):
    """The relay key file is missing or does not hold one hex private key."""


def read_relay_key(path: Path) -> bytes:
    """The 32-byte private key in ``path`` (RelayKeyError if it is not one)."""
    try:
        text = path.read_text(encoding="ascii").strip()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise RelayKeyError(f"relay_key_file {path}: {exc}") from None
    digits = text[2:] if text.startswith(("0x", "0X")) else text
    try:
        key = bytes.fromhex(digits)
    except ValueError:
        key = b""
    if len(key) != 32 or len(digits) != 64:
        raise RelayKeyError(
            f"relay_key_file {path} must hold one private key: 64 hex digits (0x optional)"
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("relay_key_file %s can be read by others: chmod 600 it", path)
    return key


class IdentityService:
    """Accounts and (optionally) the relay of one node."""

    def __init__(self, store: IdentityStore, accounts: Accounts, relay: Relay | None) -> None:
        self.store = store
        self.accounts = accounts
        self.relay = relay

    @classmethod
    def open(
        cls,
        path: Path,
        config: IdentityConfig,
        *,
        handles: HandleIndex | None,
        access: ChainAccess | None,
        contract: str,
        chain_id: int,
    ) -> IdentityService:
        """Open the accounts in the SQLite file ``path`` and, if the config names a
        relay key, the relay on ``access`` to the EntityManager ``contract``."""
        relay = None
        if config.relay_key_file is not None:
            key = read_relay_key(config.relay_key_file)
            if access is None:
                raise RelayKeyError("the relay needs chain access (rpc) to send from its wallet")
            relay = Relay(
                RelayWallet(access, key), contract=contract, chain_id=chain_id, config=config.relay
            )
            log.info("relaying EntityManager calls from %s", relay.wallet.address)
        store = IdentityStore(path)
        return cls(store, Accounts(store, config, handles=handles), relay)

    def close(self) -> None:
        self.store.close()
