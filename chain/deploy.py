"""Deploying the contracts, and the helpers every deployment needs.

``deploy_all`` puts the token, the service type manager, the registry and the
music layer's EntityManager on a chain in one call (sync web3: run it at
start-up, or off the trio loop) and returns a :class:`Deployment`, which
serialises to the JSON file a node reads to find the contracts on a real
chain. ``embedded_web3`` makes the in-process
py-evm chain (eth-tester) that the embedded mode and the tests use.

Identity: a provider's *delegate* is the Ethereum account of its node's
secp256k1 key; :func:`sign_registration` is that key consenting to be
registered by an *owner* wallet (EIP-191 ``personal_sign`` over
``keccak256(abi.encode(chainId, registry, owner))``, as the registry checks).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.types import TxReceipt

from chain.abi import (
    ENTITY_MANAGER,
    REGISTRY,
    SERVICE_TYPE_MANAGER,
    TOKEN,
    load_abi,
    load_bytecode,
)

LIVE = 10**18  # one token in base units (18 decimals)
CONTENT_NODE = "content-node"
DISCOVERY_NODE = "discovery-node"
DEFAULT_SERVICE_TYPES: Mapping[str, tuple[int, int]] = {
    CONTENT_NODE: (200_000 * LIVE, 10_000_000 * LIVE),
    DISCOVERY_NODE: (200_000 * LIVE, 10_000_000 * LIVE),
}

# Who sends a transaction: an account the node holds unlocked (eth-tester,
# anvil), by address, or a local key that signs before sending.
Sender = str | LocalAccount


class DeploymentError(RuntimeError):
    """A deployment or setup transaction did not succeed."""


@dataclass(frozen=True)
class Deployment:
    """Where the contracts live on one chain."""

    token: ChecksumAddress
    service_types: ChecksumAddress
    registry: ChecksumAddress
    chain_id: int
    governance: ChecksumAddress
    # the block the registry was deployed in: indexers read logs from here
    start_block: int = 0
    # the music layer's data contract (None in files written before it existed)
    entity_manager: ChecksumAddress | None = None
    # the block it was deployed in: the discovery indexer starts there
    entity_manager_block: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Deployment:
        raw: dict[str, Any] = json.loads(text)
        try:
            return cls(
                token=to_checksum_address(raw["token"]),
                service_types=to_checksum_address(raw["service_types"]),
                registry=to_checksum_address(raw["registry"]),
                chain_id=int(raw["chain_id"]),
                governance=to_checksum_address(raw["governance"]),
                start_block=int(raw.get("start_block", 0)),
                entity_manager=(
                    to_checksum_address(raw["entity_manager"])
                    if raw.get("entity_manager") is not None
                    else None
                ),
                entity_manager_block=int(raw.get("entity_manager_block", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a deployment file: {exc}") from None


@dataclass(frozen=True)
class Contracts:
    """A deployment's contracts bound to one web3."""

    token: Contract
    service_types: Contract
    registry: Contract


def bind(w3: Web3, deployment: Deployment) -> Contracts:
    return Contracts(
        token=w3.eth.contract(address=deployment.token, abi=load_abi(TOKEN)),
        service_types=w3.eth.contract(
            address=deployment.service_types, abi=load_abi(SERVICE_TYPE_MANAGER)
        ),
        registry=w3.eth.contract(address=deployment.registry, abi=load_abi(REGISTRY)),
    )


def service_type_id(name: str) -> bytes:
    """``bytes32("content-node")`` as Solidity makes it: ASCII, right-padded with zeros."""
    raw = name.encode("ascii")
    if not raw or len(raw) > 32 or b"\0" in raw:
        raise ValueError(f"a service type name is 1-32 ASCII characters: {name!r}")
    return raw.ljust(32, b"\0")


def service_type_name(type_id: bytes) -> str:
    """The inverse of :func:`service_type_id`."""
    return bytes(type_id).rstrip(b"\0").decode("ascii", errors="replace")


def registration_digest(chain_id: int, registry_address: str, owner_address: str) -> bytes:
    """``keccak256(abi.encode(chainid, registry, owner))``: what the delegate signs."""
    return keccak(
        abi_encode(
            ["uint256", "address", "address"],
            [chain_id, to_checksum_address(registry_address), to_checksum_address(owner_address)],
        )
    )


def sign_registration(
    delegate_private_key: bytes, chain_id: int, registry_address: str, owner_address: str
) -> bytes:
    """The delegate's consent to be registered by ``owner_address`` (65 bytes, r|s|v)."""
    digest = registration_digest(chain_id, registry_address, owner_address)
    signed = Account.sign_message(encode_defunct(primitive=digest), delegate_private_key)
    return bytes(signed.signature)


def embedded_web3(*, accounts: int = 10) -> Web3:
    """An in-process py-evm chain (eth-tester) with ``accounts`` funded unlocked accounts.

    Every transaction is mined in its own block. Not thread-safe.
    """
    from eth_tester import EthereumTester, PyEVMBackend
    from web3.providers.eth_tester import EthereumTesterProvider

    backend = PyEVMBackend(genesis_state=PyEVMBackend.generate_genesis_state(num_accounts=accounts))
    return Web3(EthereumTesterProvider(EthereumTester(backend)))


def send(w3: Web3, sender: Sender, call: Any) -> TxReceipt:
    """Sends ``call`` (a bound contract function or constructor) and waits for it.

    Raises the backend's revert exception if gas estimation fails (see
    chain.errors.decode_revert), ``DeploymentError`` if the mined transaction failed.
    """
    if isinstance(sender, LocalAccount):
        tx = call.build_transaction(
            {"from": sender.address, "nonce": w3.eth.get_transaction_count(sender.address)}
        )
        signed = sender.sign_transaction(tx)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    else:
        tx_hash = call.transact({"from": to_checksum_address(sender)})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    if receipt["status"] != 1:
        raise DeploymentError(f"transaction {tx_hash.hex()} failed")
    return receipt


def _address(sender: Sender) -> ChecksumAddress:
    return sender.address if isinstance(sender, LocalAccount) else to_checksum_address(sender)


def _deploy(w3: Web3, sender: Sender, name: str, *args: Any) -> tuple[ChecksumAddress, int]:
    factory = w3.eth.contract(abi=load_abi(name), bytecode=load_bytecode(name))
    receipt = send(w3, sender, factory.constructor(*args))
    address = receipt["contractAddress"]
    if address is None:
        raise DeploymentError(f"{name}: no contract address in the receipt")
    return to_checksum_address(address), receipt["blockNumber"]


def deploy_all(
    w3: Web3,
    *,
    deployer: Sender,
    governance: str | None = None,
    initial_supply: int = 10**9 * LIVE,
    service_types: Mapping[str, tuple[int, int]] = DEFAULT_SERVICE_TYPES,
    decrease_lockup_blocks: int = 10,
    undelegate_lockup_blocks: int = 10,
) -> Deployment:
    """Deploys token, type manager, registry and EntityManager; configures the types.

    The whole supply goes to ``deployer``. ``governance`` (default: the
    deployer) governs both the type manager and the registry: it slashes,
    sets lockups and edits service types.
    """
    me = _address(deployer)
    gov = to_checksum_address(governance) if governance is not None else me
    token, _ = _deploy(w3, deployer, TOKEN, initial_supply)
    types, _ = _deploy(w3, deployer, SERVICE_TYPE_MANAGER, me)
    registry, block = _deploy(
        w3, deployer, REGISTRY, token, types, gov, decrease_lockup_blocks, undelegate_lockup_blocks
    )
    manager = w3.eth.contract(address=types, abi=load_abi(SERVICE_TYPE_MANAGER))
    for name, (min_stake, max_stake) in service_types.items():
        send(
            w3,
            deployer,
            manager.functions.addServiceType(service_type_id(name), min_stake, max_stake),
        )
    if gov != me:
        send(w3, deployer, manager.functions.setGovernance(gov))
    # last, so the staking contracts' addresses and blocks are as before it existed
    entity_manager, entity_block = _deploy(w3, deployer, ENTITY_MANAGER)
    return Deployment(
        token=token,
        service_types=types,
        registry=registry,
        chain_id=w3.eth.chain_id,
        governance=gov,
        start_block=block,
        entity_manager=entity_manager,
        entity_manager_block=entity_block,
    )


def register_provider(
    w3: Web3,
    deployment: Deployment,
    *,
    owner: Sender,
    delegate_private_key: bytes,
    service_type: str,
    stake: int,
    multiaddrs: Sequence[str] = (),
) -> TxReceipt:
    """Approves ``stake`` from ``owner`` and registers the delegate of that key."""
    contracts = bind(w3, deployment)
    owner_address = _address(owner)
    delegate = Account.from_key(delegate_private_key).address
    signature = sign_registration(
        delegate_private_key, deployment.chain_id, deployment.registry, owner_address
    )
    send(w3, owner, contracts.token.functions.approve(deployment.registry, stake))
    return send(
        w3,
        owner,
        contracts.registry.functions.register(
            service_type_id(service_type), delegate, list(multiaddrs), stake, signature
        ),
    )
