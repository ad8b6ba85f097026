"""A chain for a local network: the devnet, the tests and the simnet.

:func:`open_chain` gives a :class:`LocalChain`: one :class:`ChainAccess` (one
web3, one worker thread) and a deployment, on the embedded py-evm chain
(contracts deployed at start) or on a dev RPC chain such as anvil (deployed
there with its first unlocked account, unless a deployment file is given).
The governance account funds and registers the nodes, and can slash them;
every node gets its own :class:`ChainStakeOracle` over the shared access.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from web3 import Web3
from web3.types import Wei

from chain.abi import ENTITY_MANAGER, load_abi
from chain.access import EMBEDDED, ChainAccess, ChainConfig, ChainUnavailable, connect
from chain.deploy import (
    CONTENT_NODE,
    DEFAULT_SERVICE_TYPES,
    LIVE,
    Deployment,
    bind,
    deploy_all,
    register_provider,
    send,
)
from chain.entity import SignedAction
from chain.errors import decode_revert
from chain.stake import ChainStakeOracle
from p2p.host import peer_id_of_key
from p2p.keys import NodeKey

__all__ = ["EMBEDDED", "LIVE", "LocalChain", "open_chain"]


@dataclass
class LocalChain:
    access: ChainAccess
    deployment: Deployment
    governance: str  # an unlocked account: deploys, owns the supply, registers, slashes

    @property
    def minimum_stake(self) -> int:
        return DEFAULT_SERVICE_TYPES[CONTENT_NODE][0]

    def oracle(self, *, poll_interval: float = 0.2) -> ChainStakeOracle:
        return ChainStakeOracle(self.access, self.deployment, poll_interval=poll_interval)

    async def register(
        self,
        key: NodeKey,
        *,
        stake: int | None = None,
        service_type: str = CONTENT_NODE,
        multiaddrs: Sequence[str] = (),
    ) -> None:
        """Register ``key``'s node with the governance account as its owner.

        The registered multiaddrs always name the node's peer ID (``/p2p/...``):
        that is how the placement set maps delegates to peers."""
        amount = self.minimum_stake if stake is None else stake
        peer = peer_id_of_key(key)
        named = [a if "/p2p/" in a else f"{a}/p2p/{peer}" for a in multiaddrs] or [f"/p2p/{peer}"]
        await self.access.run(
            lambda w3: register_provider(
                w3,
                self.deployment,
                owner=self.governance,
                delegate_private_key=key.secret,
                service_type=service_type,
                stake=amount,
                multiaddrs=named,
            )
        )

    async def update_multiaddrs(self, key: NodeKey, multiaddrs: Sequence[str]) -> None:
        peer = peer_id_of_key(key)
        named = [a if "/p2p/" in a else f"{a}/p2p/{peer}" for a in multiaddrs][:8]
        await self._transact(
            lambda c: c.registry.functions.updateMultiaddrs(key.eth_address, named)
        )

    async def deregister(self, key: NodeKey) -> None:
        await self._transact(lambda c: c.registry.functions.deregister(key.eth_address))

    async def slash(self, key: NodeKey, amount: int) -> None:
        await self._transact(lambda c: c.registry.functions.slash(key.eth_address, amount))

    async def submit(self, signed: SignedAction) -> int:
        """Relays a signed ``manageEntity`` call from the governance account;
        the block it landed in. A revert raises its decoded ChainRevert
        (``InvalidSignature``, ``NonceAlreadyUsed``, ...)."""
        contract = self.deployment.entity_manager
        if contract is None:
            raise ChainUnavailable("this deployment has no EntityManager contract")

        def run(w3: Web3) -> int:
            manager = w3.eth.contract(address=contract, abi=load_abi(ENTITY_MANAGER))
            try:
                receipt = send(
                    w3, self.governance, manager.functions.manageEntity(*signed.call_args())
                )
            except Exception as exc:
                revert = decode_revert(exc)
                if revert is None:
                    raise
                raise revert from None
            return int(receipt["blockNumber"])

        return await self.access.run(run)

    async def fund(self, address: str, wei: int) -> None:
        """Sends ``wei`` of the chain's coin from the governance account (a relay's gas)."""

        def run(w3: Web3) -> None:
            to = Web3.to_checksum_address(address)
            tx = w3.eth.send_transaction({"from": self.governance, "to": to, "value": Wei(wei)})
            w3.eth.wait_for_transaction_receipt(tx)

        await self.access.run(run)

    async def block_number(self) -> int:
        return await self.access.run(lambda w3: int(w3.eth.block_number))

    async def _transact(self, make_call: Any) -> None:
        def run(w3: Web3) -> None:
            send(w3, self.governance, make_call(bind(w3, self.deployment)))

        await self.access.run(run)


async def open_chain(rpc: str = EMBEDDED, *, deployment_file: Path | None = None) -> LocalChain:
    """Connect (``embedded`` or an RPC URL) and deploy, or load ``deployment_file``.

    On an RPC chain the governance account is the endpoint's first unlocked
    account (anvil's dev accounts); a chain without one needs a deployment file
    and the operator commands instead.
    """
    access = ChainAccess(connect(ChainConfig(rpc=rpc)))

    def setup(w3: Web3) -> tuple[Deployment, str]:
        accounts = list(w3.eth.accounts)
        if not accounts:
            raise ChainUnavailable(
                f"{rpc} has no unlocked account to deploy and register with; "
                "use a dev chain (anvil) or the operator commands"
            )
        if deployment_file is not None:
            deployment = Deployment.from_json(deployment_file.read_text())
            if deployment.chain_id != w3.eth.chain_id:
                raise ChainUnavailable(
                    f"{deployment_file} is for chain id {deployment.chain_id}, "
                    f"{rpc} serves chain id {w3.eth.chain_id}"
                )
            return deployment, deployment.governance
        return deploy_all(w3, deployer=accounts[0]), accounts[0]

    deployment, governance = await access.run(setup)
    return LocalChain(access, deployment, governance)
