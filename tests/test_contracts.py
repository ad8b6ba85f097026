"""The staking contracts on the embedded chain (eth-tester / py-evm).

One deployment per module; every test runs inside an ``evm_snapshot`` that is
reverted after it, so tests are independent and fast. Reverts are asserted by
custom-error *name* through chain.errors.decode_revert, and
``test_every_custom_error_is_exercised`` proves that each error of every ABI
has a scenario in REVERT_CASES.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD
from web3.types import TxReceipt, Wei

from chain.abi import CONTRACT_NAMES, all_artifacts, load_artifact
from chain.deploy import (
    CONTENT_NODE,
    DISCOVERY_NODE,
    LIVE,
    Contracts,
    Deployment,
    bind,
    deploy_all,
    embedded_web3,
    register_provider,
    registration_digest,
    send,
    service_type_id,
    service_type_name,
    sign_registration,
)
from chain.errors import ChainRevert, decode_revert, decode_revert_data, error_names
from tests.anvil import start_anvil

ROOT = Path(__file__).resolve().parent.parent
CONTENT = service_type_id(CONTENT_NODE)
DISCOVERY = service_type_id(DISCOVERY_NODE)
MIN, MAX = 100 * LIVE, 1_000 * LIVE
DECREASE_LOCKUP, UNDELEGATE_LOCKUP = 10, 5
ZERO = "0x0000000000000000000000000000000000000000"
MULTIADDRS = ["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic-v1"]
# errors no caller can provoke: msg.sender is never the zero address, and
# OpenZeppelin's ERC20 reverts by itself instead of returning false
UNREACHABLE_ERRORS = {"ERC20InvalidApprover", "ERC20InvalidSender", "SafeERC20FailedOperation"}


@dataclass
class Env:
    w3: Web3
    tester: Any  # eth_tester.EthereumTester: snapshots and mining
    deployment: Deployment
    c: Contracts
    deployer: str
    gov: str
    alice: str  # provider owner
    bob: str  # provider owner
    carol: str  # delegator
    dave: str  # delegator
    eve: str  # holds no tokens
    keys: list[bytes] = field(default_factory=list)

    @property
    def registry(self) -> Contract:
        return self.c.registry

    def delegate(self, i: int) -> str:
        return str(Account.from_key(self.keys[i]).address)

    def tx(self, fn: Any, sender: str) -> TxReceipt:
        return send(self.w3, sender, fn)

    def register(
        self,
        i: int = 0,
        *,
        owner: str | None = None,
        stake: int = MIN,
        service_type: bytes = CONTENT,
        multiaddrs: list[str] | None = None,
    ) -> TxReceipt:
        owner = owner or self.alice
        sig = sign_registration(
            self.keys[i], self.deployment.chain_id, self.registry.address, owner
        )
        addrs = MULTIADDRS if multiaddrs is None else multiaddrs
        return self.tx(
            self.registry.functions.register(service_type, self.delegate(i), addrs, stake, sig),
            owner,
        )

    def provider(self, i: int = 0) -> tuple[Any, ...]:
        return tuple(self.registry.functions.getProvider(self.delegate(i)).call())

    def own(self, i: int = 0) -> int:
        return int(self.provider(i)[2])

    def delegated(self, i: int = 0) -> int:
        return int(self.provider(i)[3])

    def delegation(self, delegator: str, i: int = 0) -> int:
        return int(self.registry.functions.delegationOf(delegator, self.delegate(i)).call())

    def balance(self, who: str) -> int:
        return int(self.c.token.functions.balanceOf(who).call())

    def head(self) -> int:
        return int(self.w3.eth.block_number)

    def mine(self, n: int) -> None:
        self.tester.mine_blocks(n)


def events(receipt: TxReceipt, contract: Contract, name: str) -> list[dict[str, Any]]:
    logs = contract.events[name]().process_receipt(receipt, errors=DISCARD)
    return [dict(log["args"]) for log in logs]


def only_event(receipt: TxReceipt, contract: Contract, name: str) -> dict[str, Any]:
    found = events(receipt, contract, name)
    assert len(found) == 1, f"expected one {name}, got {found}"
    return found[0]


class Reverted:
    revert: ChainRevert | None = None


@contextmanager
def reverts(name: str) -> Iterator[Reverted]:
    info = Reverted()
    with pytest.raises(Exception) as excinfo:  # the backend's exception class varies
        yield info
    info.revert = decode_revert(excinfo.value)
    assert info.revert is not None, f"undecodable revert: {excinfo.value!r}"
    assert info.revert.name == name, f"expected {name}, got {info.revert}"


@pytest.fixture(scope="module")
def module_env() -> Env:
    w3 = embedded_web3(accounts=8)
    deployer, gov, alice, bob, carol, dave, eve, _ = list(w3.eth.accounts)
    deployment = deploy_all(
        w3,
        deployer=deployer,
        governance=gov,
        service_types={CONTENT_NODE: (MIN, MAX), DISCOVERY_NODE: (MIN // 2, MAX // 2)},
        decrease_lockup_blocks=DECREASE_LOCKUP,
        undelegate_lockup_blocks=UNDELEGATE_LOCKUP,
    )
    c = bind(w3, deployment)
    tester = cast(Any, w3.provider).ethereum_tester
    env = Env(w3, tester, deployment, c, deployer, gov, alice, bob, carol, dave, eve)
    env.keys = [bytes([i + 1]) * 32 for i in range(6)]
    for who in (alice, bob, carol, dave):
        env.tx(c.token.functions.transfer(who, 10_000 * LIVE), deployer)
        env.tx(c.token.functions.approve(deployment.registry, 2**256 - 1), who)
    return env


@pytest.fixture
def env(module_env: Env) -> Iterator[Env]:
    snapshot = module_env.tester.take_snapshot()
    yield module_env
    module_env.tester.revert_to_snapshot(snapshot)


def assert_registry_solvent(env: Env, delegates: range = range(6)) -> None:
    """The registry holds exactly the sum of every own stake and delegated pool."""
    held = sum(int(env.registry.functions.totalStakeOf(env.delegate(i)).call()) for i in delegates)
    assert env.balance(env.registry.address) == held


# -- deployment, token, service types -------------------------------------------------


def test_deployment_and_token(env: Env) -> None:
    token, types, registry = env.c.token, env.c.service_types, env.registry
    assert token.functions.name().call() == "Coliving"
    assert token.functions.symbol().call() == "LIVE"
    assert token.functions.decimals().call() == 18
    assert token.functions.totalSupply().call() == 10**9 * LIVE
    assert env.balance(env.deployer) == 10**9 * LIVE - 4 * 10_000 * LIVE
    assert registry.functions.token().call() == token.address
    assert registry.functions.serviceTypeManager().call() == types.address
    assert registry.functions.governance().call() == env.gov
    assert types.functions.governance().call() == env.gov
    assert registry.functions.decreaseLockupBlocks().call() == DECREASE_LOCKUP
    assert registry.functions.undelegateLockupBlocks().call() == UNDELEGATE_LOCKUP
    assert registry.functions.MAX_MULTIADDRS().call() == 8
    assert registry.functions.MAX_MULTIADDR_LENGTH().call() == 256
    assert registry.functions.MAX_LOCKUP_BLOCKS().call() == 1_000_000
    assert set(types.functions.serviceTypes().call()) == {CONTENT, DISCOVERY}
    assert types.functions.getServiceType(CONTENT).call() == [True, MIN, MAX]
    assert types.functions.getServiceType(service_type_id("nope")).call() == [False, 0, 0]
    d = env.deployment
    assert d.chain_id == env.w3.eth.chain_id and d.governance == env.gov
    assert Deployment.from_json(d.to_json()) == d
    assert 0 < d.start_block <= env.head()
    with pytest.raises(ValueError, match="not a deployment file"):
        Deployment.from_json('{"token": "0x00"}')


def test_service_type_ids() -> None:
    assert service_type_id("content-node") == b"content-node" + b"\0" * 20
    assert service_type_name(service_type_id("discovery-node")) == "discovery-node"
    for bad in ("", "x" * 33, "caf\u00e9"):
        with pytest.raises(ValueError):
            service_type_id(bad)


def test_artifacts_load() -> None:
    assert {a.name for a in all_artifacts()} == set(CONTRACT_NAMES)
    for name in CONTRACT_NAMES:
        artifact = load_artifact(name)
        assert artifact.bytecode.startswith("0x") and artifact.compiler.startswith("0.8.37+")


def test_service_type_manager_changes(env: Env) -> None:
    types = env.c.service_types
    storage = service_type_id("storage-node")
    r = env.tx(types.functions.addServiceType(storage, 5 * LIVE, 50 * LIVE), env.gov)
    assert only_event(r, types, "ServiceTypeAdded") == {
        "serviceType": storage,
        "minStake": 5 * LIVE,
        "maxStake": 50 * LIVE,
    }
    r = env.tx(types.functions.updateServiceType(storage, 6 * LIVE, 60 * LIVE), env.gov)
    assert only_event(r, types, "ServiceTypeUpdated")["minStake"] == 6 * LIVE
    assert types.functions.getServiceType(storage).call() == [True, 6 * LIVE, 60 * LIVE]
    r = env.tx(types.functions.removeServiceType(CONTENT), env.gov)
    assert only_event(r, types, "ServiceTypeRemoved") == {"serviceType": CONTENT}
    assert set(types.functions.serviceTypes().call()) == {DISCOVERY, storage}
    r = env.tx(types.functions.setGovernance(env.bob), env.gov)
    assert only_event(r, types, "GovernanceChanged") == {"previous": env.gov, "current": env.bob}
    with reverts("NotGovernance"):
        env.tx(types.functions.removeServiceType(storage), env.gov)
    env.tx(types.functions.removeServiceType(storage), env.bob)
    assert types.functions.serviceTypes().call() == [DISCOVERY]


def test_type_changes_apply_to_registered_providers(env: Env) -> None:
    types = env.c.service_types
    env.register(0, stake=MIN)
    delegate = env.delegate(0)
    assert env.registry.functions.isStaked(delegate).call()
    env.tx(types.functions.updateServiceType(CONTENT, MIN + 1, MAX), env.gov)
    assert not env.registry.functions.isStaked(delegate).call()
    env.tx(env.registry.functions.increaseStake(delegate, 1), env.alice)
    assert env.registry.functions.isStaked(delegate).call()
    env.tx(types.functions.removeServiceType(CONTENT), env.gov)
    assert not env.registry.functions.isStaked(delegate).call()
    with reverts("UnknownServiceType"):
        env.tx(env.registry.functions.increaseStake(delegate, 1), env.alice)
    env.tx(env.registry.functions.deregister(delegate), env.alice)  # leaving still works


# -- providers ------------------------------------------------------------------------


def test_register(env: Env) -> None:
    before = env.balance(env.alice)
    r = env.register(0, stake=150 * LIVE)
    delegate = env.delegate(0)
    assert only_event(r, env.registry, "ProviderRegistered") == {
        "delegate": delegate,
        "owner": env.alice,
        "serviceType": CONTENT,
        "stake": 150 * LIVE,
        "multiaddrs": MULTIADDRS,
    }
    assert env.provider(0) == (env.alice, CONTENT, 150 * LIVE, 0, True, MULTIADDRS)
    assert env.registry.functions.isStaked(delegate).call()
    assert env.registry.functions.totalStakeOf(delegate).call() == 150 * LIVE
    assert env.registry.functions.providersOfType(CONTENT).call() == [delegate]
    assert env.registry.functions.providersOfType(DISCOVERY).call() == []
    assert env.balance(env.alice) == before - 150 * LIVE
    env.register(1, owner=env.bob, stake=MIN // 2, service_type=DISCOVERY, multiaddrs=[])
    assert env.registry.functions.providersOfType(DISCOVERY).call() == [env.delegate(1)]
    assert env.provider(1)[5] == []
    # an unknown delegate reads as all zeros (what the stake oracle relies on)
    assert env.provider(5) == (ZERO, b"\0" * 32, 0, 0, False, [])
    assert not env.registry.functions.isStaked(env.delegate(5)).call()
    assert_registry_solvent(env)


def test_registration_digest_matches_python(env: Env) -> None:
    on_chain = env.registry.functions.registrationDigest(env.alice).call()
    assert on_chain == registration_digest(env.deployment.chain_id, env.registry.address, env.alice)


def test_register_provider_helper_with_local_key(env: Env) -> None:
    """The deploy helper and a signing (not unlocked) owner account, as on a real chain."""
    owner: LocalAccount = Account.from_key(b"\x42" * 32)
    env.w3.eth.send_transaction({"from": env.deployer, "to": owner.address, "value": Wei(10**18)})
    env.tx(env.c.token.functions.transfer(owner.address, MIN), env.deployer)
    r = register_provider(
        env.w3,
        env.deployment,
        owner=owner,
        delegate_private_key=env.keys[3],
        service_type=CONTENT_NODE,
        stake=MIN,
        multiaddrs=MULTIADDRS[:1],
    )
    assert only_event(r, env.registry, "ProviderRegistered")["owner"] == owner.address
    assert env.provider(3)[:5] == (owner.address, CONTENT, MIN, 0, True)


@pytest.mark.parametrize("wrong", ["owner", "chain_id", "registry", "signer", "length"])
def test_bad_delegate_signature(env: Env, wrong: str) -> None:
    chain_id, registry, owner, key = env.deployment.chain_id, env.registry.address, env.alice, 0
    if wrong == "owner":
        owner = env.bob
    elif wrong == "chain_id":
        chain_id += 1
    elif wrong == "registry":
        registry = env.c.token.address
    elif wrong == "signer":
        key = 1
    sig = sign_registration(env.keys[key], chain_id, registry, owner)
    if wrong == "length":
        sig = sig[:64]
    fn = env.registry.functions.register(CONTENT, env.delegate(0), MULTIADDRS, MIN, sig)
    with reverts("BadDelegateSignature"):
        env.tx(fn, env.alice)


def test_update_multiaddrs(env: Env) -> None:
    env.register(0)
    new = ["/dns4/node.example/tcp/443/wss", "/ip6/::1/tcp/4001"]
    r = env.tx(env.registry.functions.updateMultiaddrs(env.delegate(0), new), env.alice)
    assert only_event(r, env.registry, "MultiaddrsUpdated") == {
        "delegate": env.delegate(0),
        "multiaddrs": new,
    }
    assert env.provider(0)[5] == new
    longest = ["/" + "a" * 255] * 8  # the bounds themselves are accepted
    env.tx(env.registry.functions.updateMultiaddrs(env.delegate(0), longest), env.alice)
    assert env.provider(0)[5] == longest


def test_increase_stake(env: Env) -> None:
    env.register(0)
    r = env.tx(env.registry.functions.increaseStake(env.delegate(0), 50 * LIVE), env.alice)
    assert only_event(r, env.registry, "StakeIncreased") == {
        "delegate": env.delegate(0),
        "amount": 50 * LIVE,
        "ownStake": MIN + 50 * LIVE,
    }
    assert env.own(0) == MIN + 50 * LIVE
    env.tx(env.registry.functions.increaseStake(env.delegate(0), MAX - MIN - 50 * LIVE), env.alice)
    assert env.own(0) == MAX
    assert_registry_solvent(env)


def test_decrease_stake_after_lockup_in_blocks(env: Env) -> None:
    env.register(0, stake=300 * LIVE)
    delegate = env.delegate(0)
    r = env.tx(env.registry.functions.requestDecreaseStake(delegate, 150 * LIVE), env.alice)
    unlock = r["blockNumber"] + DECREASE_LOCKUP
    assert only_event(r, env.registry, "DecreaseRequested") == {
        "delegate": delegate,
        "amount": 150 * LIVE,
        "unlockBlock": unlock,
    }
    assert env.registry.functions.pendingDecrease(delegate).call() == [150 * LIVE, unlock]
    assert env.own(0) == 300 * LIVE  # still locked, still counted
    # the next transaction runs in block head + 1: mine to one block short
    env.mine(unlock - 2 - env.head())
    with reverts("LockupNotOver") as info:
        env.tx(env.registry.functions.decreaseStake(delegate), env.alice)
    assert info.revert is not None and info.revert.args_dict == {"unlockBlock": unlock}
    env.mine(1)
    before = env.balance(env.alice)
    r = env.tx(env.registry.functions.decreaseStake(delegate), env.alice)
    assert r["blockNumber"] == unlock
    assert only_event(r, env.registry, "StakeDecreased") == {
        "delegate": delegate,
        "amount": 150 * LIVE,
        "ownStake": 150 * LIVE,
    }
    assert env.balance(env.alice) == before + 150 * LIVE
    assert env.registry.functions.pendingDecrease(delegate).call() == [0, 0]
    assert_registry_solvent(env)


def test_cancel_decrease(env: Env) -> None:
    env.register(0, stake=300 * LIVE)
    delegate = env.delegate(0)
    env.tx(env.registry.functions.requestDecreaseStake(delegate, 200 * LIVE), env.alice)
    r = env.tx(env.registry.functions.cancelDecreaseStake(delegate), env.alice)
    assert only_event(r, env.registry, "DecreaseCancelled") == {
        "delegate": delegate,
        "amount": 200 * LIVE,
    }
    assert env.registry.functions.pendingDecrease(delegate).call() == [0, 0]
    env.tx(env.registry.functions.requestDecreaseStake(delegate, 100 * LIVE), env.alice)


def test_deregister_withdraw_and_register_again(env: Env) -> None:
    env.register(0, stake=200 * LIVE)
    env.register(1, owner=env.bob)
    delegate = env.delegate(0)
    r = env.tx(env.registry.functions.deregister(delegate), env.alice)
    unlock = r["blockNumber"] + DECREASE_LOCKUP
    assert only_event(r, env.registry, "ProviderDeregistered") == {
        "delegate": delegate,
        "owner": env.alice,
        "serviceType": CONTENT,
        "ownStake": 200 * LIVE,
        "unlockBlock": unlock,
    }
    assert not env.registry.functions.isStaked(delegate).call()
    assert env.registry.functions.providersOfType(CONTENT).call() == [env.delegate(1)]
    assert env.provider(0) == (env.alice, CONTENT, 200 * LIVE, 0, False, [])
    assert env.registry.functions.pendingDecrease(delegate).call() == [200 * LIVE, unlock]
    with reverts("WithdrawalPending"):
        env.register(0, owner=env.bob)
    with reverts("LockupNotOver"):
        env.tx(env.registry.functions.withdraw(delegate), env.alice)
    env.mine(unlock - 1 - env.head())
    before = env.balance(env.alice)
    r = env.tx(env.registry.functions.withdraw(delegate), env.alice)
    assert only_event(r, env.registry, "Withdrawn") == {
        "delegate": delegate,
        "owner": env.alice,
        "amount": 200 * LIVE,
    }
    assert env.balance(env.alice) == before + 200 * LIVE
    assert env.provider(0)[0] == ZERO
    # the same node key, now under another owner
    env.register(0, owner=env.bob, stake=MIN)
    assert env.provider(0)[:5] == (env.bob, CONTENT, MIN, 0, True)
    assert set(env.registry.functions.providersOfType(CONTENT).call()) == {
        env.delegate(0),
        env.delegate(1),
    }
    assert_registry_solvent(env)


def test_providers_of_type_after_many_deregistrations(env: Env) -> None:
    for i in range(5):
        env.register(i, owner=env.alice if i % 2 else env.bob)
    for i in (0, 3, 4):
        owner = env.bob if i % 2 == 0 else env.alice
        env.tx(env.registry.functions.deregister(env.delegate(i)), owner)
    assert set(env.registry.functions.providersOfType(CONTENT).call()) == {
        env.delegate(1),
        env.delegate(2),
    }


# -- delegation ------------------------------------------------------------------------


def test_delegation_totals_and_undelegate(env: Env) -> None:
    env.register(0, stake=MIN)
    delegate = env.delegate(0)
    r = env.tx(env.registry.functions.delegateStake(delegate, 50 * LIVE), env.carol)
    assert only_event(r, env.registry, "Delegated") == {
        "delegate": delegate,
        "delegator": env.carol,
        "amount": 50 * LIVE,
        "shares": 50 * LIVE,
    }
    env.tx(env.registry.functions.delegateStake(delegate, 30 * LIVE), env.dave)
    env.tx(env.registry.functions.delegateStake(delegate, 20 * LIVE), env.carol)
    assert env.delegated(0) == 100 * LIVE
    assert env.registry.functions.totalStakeOf(delegate).call() == MIN + 100 * LIVE
    assert env.delegation(env.carol) == 70 * LIVE and env.delegation(env.dave) == 30 * LIVE
    assert env.registry.functions.delegationPool(delegate).call() == [100 * LIVE, 100 * LIVE, 0]

    r = env.tx(env.registry.functions.requestUndelegate(delegate, 40 * LIVE), env.carol)
    unlock = r["blockNumber"] + UNDELEGATE_LOCKUP
    assert only_event(r, env.registry, "UndelegateRequested") == {
        "delegate": delegate,
        "delegator": env.carol,
        "amount": 40 * LIVE,
        "unlockBlock": unlock,
    }
    pending = env.registry.functions.pendingUndelegation(env.carol, delegate).call()
    assert pending == [40 * LIVE, unlock]
    assert env.delegated(0) == 100 * LIVE  # counted until executed
    with reverts("LockupNotOver"):
        env.tx(env.registry.functions.undelegate(delegate), env.carol)
    env.mine(unlock - 1 - env.head())
    before = env.balance(env.carol)
    r = env.tx(env.registry.functions.undelegate(delegate), env.carol)
    assert only_event(r, env.registry, "Undelegated") == {
        "delegate": delegate,
        "delegator": env.carol,
        "amount": 40 * LIVE,
    }
    assert env.balance(env.carol) == before + 40 * LIVE
    assert env.delegation(env.carol) == 30 * LIVE and env.delegated(0) == 60 * LIVE
    assert env.registry.functions.pendingUndelegation(env.carol, delegate).call() == [0, 0]
    assert_registry_solvent(env)


def test_cancel_undelegate(env: Env) -> None:
    env.register(0)
    delegate = env.delegate(0)
    env.tx(env.registry.functions.delegateStake(delegate, 50 * LIVE), env.carol)
    env.tx(env.registry.functions.requestUndelegate(delegate, 50 * LIVE), env.carol)
    r = env.tx(env.registry.functions.cancelUndelegate(delegate), env.carol)
    assert only_event(r, env.registry, "UndelegateCancelled") == {
        "delegate": delegate,
        "delegator": env.carol,
        "amount": 50 * LIVE,
    }
    assert env.registry.functions.pendingUndelegation(env.carol, delegate).call() == [0, 0]
    assert env.delegation(env.carol) == 50 * LIVE


def test_delegation_counts_for_staked(env: Env) -> None:
    """Own stake >= min to register; staked = active and own + delegated >= min."""
    env.register(0, stake=MIN)
    delegate = env.delegate(0)
    env.tx(env.registry.functions.slash(delegate, 10 * LIVE), env.gov)
    assert not env.registry.functions.isStaked(delegate).call()
    env.tx(env.registry.functions.delegateStake(delegate, 10 * LIVE), env.carol)
    assert env.registry.functions.isStaked(delegate).call()


def test_delegators_leave_after_deregistration(env: Env) -> None:
    env.register(0)
    delegate = env.delegate(0)
    env.tx(env.registry.functions.delegateStake(delegate, 50 * LIVE), env.carol)
    env.tx(env.registry.functions.deregister(delegate), env.alice)
    with reverts("NotRegistered"):
        env.tx(env.registry.functions.delegateStake(delegate, 1 * LIVE), env.dave)
    env.tx(env.registry.functions.requestUndelegate(delegate, 50 * LIVE), env.carol)
    env.mine(UNDELEGATE_LOCKUP)
    before = env.balance(env.carol)
    env.tx(env.registry.functions.undelegate(delegate), env.carol)
    assert env.balance(env.carol) == before + 50 * LIVE
    assert env.registry.functions.delegationPool(delegate).call() == [0, 0, 0]
    assert_registry_solvent(env)


# -- slashing --------------------------------------------------------------------------


def test_slash_pro_rata(env: Env) -> None:
    """own 100 + delegators 50/50 = 200; slash 40 (20%): own 80, each delegator 40."""
    env.register(0, stake=100 * LIVE)
    delegate = env.delegate(0)
    env.tx(env.registry.functions.delegateStake(delegate, 50 * LIVE), env.carol)
    env.tx(env.registry.functions.delegateStake(delegate, 50 * LIVE), env.dave)
    gov_before = env.balance(env.gov)
    r = env.tx(env.registry.functions.slash(delegate, 40 * LIVE), env.gov)
    assert only_event(r, env.registry, "Slashed") == {
        "delegate": delegate,
        "amount": 40 * LIVE,
        "ownSlashed": 20 * LIVE,
        "delegatedSlashed": 20 * LIVE,
    }
    assert env.own(0) == 80 * LIVE and env.delegated(0) == 80 * LIVE
    assert env.delegation(env.carol) == 40 * LIVE and env.delegation(env.dave) == 40 * LIVE
    assert env.registry.functions.totalStakeOf(delegate).call() == 160 * LIVE
    assert env.balance(env.gov) == gov_before + 40 * LIVE  # slashed tokens go to governance
    assert_registry_solvent(env)
    # a delegator leaves with what the shares are worth after the slash
    env.tx(env.registry.functions.requestUndelegate(delegate, 40 * LIVE), env.carol)
    env.mine(UNDELEGATE_LOCKUP)
    before = env.balance(env.carol)
    env.tx(env.registry.functions.undelegate(delegate), env.carol)
    assert env.balance(env.carol) == before + 40 * LIVE
    assert env.delegation(env.dave) == 40 * LIVE
    assert_registry_solvent(env)


def test_slash_rounding_is_exact_and_conserves_tokens(env: Env) -> None:
    env.register(0, stake=100 * LIVE + 7)
    delegate = env.delegate(0)
    env.tx(env.registry.functions.delegateStake(delegate, 33 * LIVE + 1), env.carol)
    env.tx(env.registry.functions.delegateStake(delegate, 17 * LIVE + 3), env.dave)
    for amount in (1, 3, 10 * LIVE + 11, 7 * LIVE):
        own, pool = env.own(0), env.delegated(0)
        r = env.tx(env.registry.functions.slash(delegate, amount), env.gov)
        ev = only_event(r, env.registry, "Slashed")
        delegated_cut = amount * pool // (own + pool)
        assert ev["delegatedSlashed"] == delegated_cut
        assert ev["ownSlashed"] == amount - delegated_cut
        assert env.own(0) == own - ev["ownSlashed"] and env.delegated(0) == pool - delegated_cut
        # the delegators' values never add up to more than the pool
        held = env.delegation(env.carol) + env.delegation(env.dave)
        assert env.delegated(0) - 2 <= held <= env.delegated(0)
        assert_registry_solvent(env)
    # everyone leaves: the last delegator out takes the rounding dust, nothing is stuck
    for who in (env.carol, env.dave):
        env.tx(env.registry.functions.requestUndelegate(delegate, env.delegation(who)), who)
    env.mine(UNDELEGATE_LOCKUP)
    for who in (env.carol, env.dave):
        env.tx(env.registry.functions.undelegate(delegate), who)
    assert env.registry.functions.delegationPool(delegate).call() == [0, 0, 0]
    env.tx(env.registry.functions.deregister(delegate), env.alice)
    env.mine(DECREASE_LOCKUP)
    env.tx(env.registry.functions.withdraw(delegate), env.alice)
    assert env.balance(env.registry.address) == 0


def test_slash_reaches_pending_requests(env: Env) -> None:
    env.register(0, stake=200 * LIVE)
    delegate = env.delegate(0)
    env.tx(env.registry.functions.delegateStake(delegate, 200 * LIVE), env.carol)
    env.tx(env.registry.functions.requestDecreaseStake(delegate, 100 * LIVE), env.alice)
    env.tx(env.registry.functions.requestUndelegate(delegate, 100 * LIVE), env.carol)
    env.tx(env.registry.functions.slash(delegate, 100 * LIVE), env.gov)  # 25% of 400
    assert env.registry.functions.pendingDecrease(delegate).call()[0] == 75 * LIVE
    assert env.registry.functions.pendingUndelegation(env.carol, delegate).call()[0] == 75 * LIVE
    env.mine(DECREASE_LOCKUP)
    before_alice, before_carol = env.balance(env.alice), env.balance(env.carol)
    env.tx(env.registry.functions.decreaseStake(delegate), env.alice)
    env.tx(env.registry.functions.undelegate(delegate), env.carol)
    assert env.balance(env.alice) == before_alice + 75 * LIVE
    assert env.balance(env.carol) == before_carol + 75 * LIVE
    assert env.own(0) == 75 * LIVE and env.delegation(env.carol) == 75 * LIVE
    assert_registry_solvent(env)


def test_slash_after_deregistration(env: Env) -> None:
    """Deregistering does not escape a slash during the lockup."""
    env.register(0, stake=200 * LIVE)
    delegate = env.delegate(0)
    env.tx(env.registry.functions.deregister(delegate), env.alice)
    env.tx(env.registry.functions.slash(delegate, 50 * LIVE), env.gov)
    assert env.registry.functions.pendingDecrease(delegate).call()[0] == 150 * LIVE
    env.mine(DECREASE_LOCKUP)
    before = env.balance(env.alice)
    r = env.tx(env.registry.functions.withdraw(delegate), env.alice)
    assert only_event(r, env.registry, "Withdrawn")["amount"] == 150 * LIVE
    assert env.balance(env.alice) == before + 150 * LIVE


def test_slash_everything_starts_a_new_pool_epoch(env: Env) -> None:
    env.register(0, stake=MIN)
    delegate = env.delegate(0)
    env.tx(env.registry.functions.delegateStake(delegate, 50 * LIVE), env.carol)
    env.tx(env.registry.functions.requestUndelegate(delegate, 20 * LIVE), env.carol)
    env.tx(env.registry.functions.slash(delegate, MIN + 50 * LIVE), env.gov)
    assert env.own(0) == 0
    assert env.registry.functions.delegationPool(delegate).call() == [0, 0, 1]
    assert env.delegation(env.carol) == 0
    assert env.registry.functions.pendingUndelegation(env.carol, delegate).call() == [0, 0]
    # fresh delegations are priced 1:1 again; the old shares do not dilute them
    env.tx(env.registry.functions.delegateStake(delegate, 10 * LIVE), env.dave)
    env.tx(env.registry.functions.delegateStake(delegate, 10 * LIVE), env.carol)
    assert env.delegation(env.dave) == 10 * LIVE and env.delegation(env.carol) == 10 * LIVE
    assert env.registry.functions.delegationPool(delegate).call() == [20 * LIVE, 20 * LIVE, 1]
    assert_registry_solvent(env)


# -- governance --------------------------------------------------------------------------


def test_set_lockups(env: Env) -> None:
    r = env.tx(env.registry.functions.setLockups(3, 4), env.gov)
    assert only_event(r, env.registry, "LockupsChanged") == {
        "decreaseBlocks": 3,
        "undelegateBlocks": 4,
    }
    assert env.registry.functions.decreaseLockupBlocks().call() == 3
    assert env.registry.functions.undelegateLockupBlocks().call() == 4
    env.register(0, stake=200 * LIVE)
    r = env.tx(env.registry.functions.requestDecreaseStake(env.delegate(0), LIVE), env.alice)
    assert only_event(r, env.registry, "DecreaseRequested")["unlockBlock"] == r["blockNumber"] + 3
    env.tx(env.registry.functions.setLockups(0, 0), env.gov)


def test_registry_governance_transfer(env: Env) -> None:
    r = env.tx(env.registry.functions.setGovernance(env.eve), env.gov)
    assert only_event(r, env.registry, "GovernanceChanged") == {
        "previous": env.gov,
        "current": env.eve,
    }
    with reverts("NotGovernance") as info:
        env.tx(env.registry.functions.setLockups(1, 1), env.gov)
    assert info.revert is not None and info.revert.args_dict == {"caller": env.gov}
    env.tx(env.registry.functions.setLockups(1, 1), env.eve)


# -- every custom error ----------------------------------------------------------------

Action = Callable[[], object]


def _signed_register(
    env: Env, i: int, stake: int, addrs: list[str], kind: bytes = CONTENT
) -> Action:
    sig = sign_registration(env.keys[i], env.deployment.chain_id, env.registry.address, env.alice)
    fn = env.registry.functions.register(kind, env.delegate(i), addrs, stake, sig)
    return lambda: env.tx(fn, env.alice)


def _registered(env: Env, i: int = 0, stake: int = 200 * LIVE) -> str:
    env.register(i, stake=stake)
    return env.delegate(i)


def case_not_governance(env: Env) -> Action:
    return lambda: env.tx(env.registry.functions.slash(env.delegate(0), 1), env.alice)


def case_zero_address(env: Env) -> Action:
    return lambda: env.tx(env.registry.functions.setGovernance(ZERO), env.gov)


def case_zero_amount(env: Env) -> Action:
    d = _registered(env)
    return lambda: env.tx(env.registry.functions.increaseStake(d, 0), env.alice)


def case_unknown_service_type(env: Env) -> Action:
    return _signed_register(env, 0, MIN, MULTIADDRS, service_type_id("relay-node"))


def case_stake_below_minimum(env: Env) -> Action:
    return _signed_register(env, 0, MIN - 1, MULTIADDRS)


def case_stake_above_maximum(env: Env) -> Action:
    d = _registered(env)
    return lambda: env.tx(env.registry.functions.delegateStake(d, MAX), env.carol)


def case_already_registered(env: Env) -> Action:
    _registered(env)
    return _signed_register(env, 0, MIN, MULTIADDRS)


def case_withdrawal_pending(env: Env) -> Action:
    d = _registered(env)
    env.tx(env.registry.functions.deregister(d), env.alice)
    return _signed_register(env, 0, MIN, MULTIADDRS)


def case_not_registered(env: Env) -> Action:
    return lambda: env.tx(env.registry.functions.deregister(env.delegate(0)), env.alice)


def case_still_active(env: Env) -> Action:
    d = _registered(env)
    return lambda: env.tx(env.registry.functions.withdraw(d), env.alice)


def case_not_owner(env: Env) -> Action:
    d = _registered(env)
    return lambda: env.tx(env.registry.functions.updateMultiaddrs(d, []), env.bob)


def case_bad_delegate_signature(env: Env) -> Action:
    fn = env.registry.functions.register(CONTENT, env.delegate(0), [], MIN, b"\x01" * 65)
    return lambda: env.tx(fn, env.alice)


def case_too_many_multiaddrs(env: Env) -> Action:
    return _signed_register(env, 0, MIN, ["/ip4/127.0.0.1/tcp/1"] * 9)


def case_empty_multiaddr(env: Env) -> Action:
    return _signed_register(env, 0, MIN, ["/ip4/127.0.0.1/tcp/1", ""])


def case_multiaddr_too_long(env: Env) -> Action:
    d = _registered(env)
    return lambda: env.tx(env.registry.functions.updateMultiaddrs(d, ["/" + "a" * 256]), env.alice)


def case_lockup_not_over(env: Env) -> Action:
    d = _registered(env)
    env.tx(env.registry.functions.requestDecreaseStake(d, LIVE), env.alice)
    return lambda: env.tx(env.registry.functions.decreaseStake(d), env.alice)


def case_lockup_too_long(env: Env) -> Action:
    return lambda: env.tx(env.registry.functions.setLockups(1, 1_000_001), env.gov)


def case_no_pending_request(env: Env) -> Action:
    d = _registered(env)
    return lambda: env.tx(env.registry.functions.cancelDecreaseStake(d), env.alice)


def case_request_already_pending(env: Env) -> Action:
    d = _registered(env)
    env.tx(env.registry.functions.delegateStake(d, 10 * LIVE), env.carol)
    env.tx(env.registry.functions.requestUndelegate(d, LIVE), env.carol)
    return lambda: env.tx(env.registry.functions.requestUndelegate(d, LIVE), env.carol)


def case_insufficient_stake(env: Env) -> Action:
    d = _registered(env)
    return lambda: env.tx(env.registry.functions.requestDecreaseStake(d, 201 * LIVE), env.alice)


def case_insufficient_delegation(env: Env) -> Action:
    d = _registered(env)
    env.tx(env.registry.functions.delegateStake(d, 10 * LIVE), env.carol)
    return lambda: env.tx(env.registry.functions.requestUndelegate(d, 10 * LIVE + 1), env.carol)


def case_empty_service_type(env: Env) -> Action:
    fn = env.c.service_types.functions.addServiceType(b"\0" * 32, 1, 2)
    return lambda: env.tx(fn, env.gov)


def case_service_type_exists(env: Env) -> Action:
    fn = env.c.service_types.functions.addServiceType(CONTENT, 1, 2)
    return lambda: env.tx(fn, env.gov)


def case_invalid_stake_bounds(env: Env) -> Action:
    fn = env.c.service_types.functions.updateServiceType(CONTENT, 3, 2)
    return lambda: env.tx(fn, env.gov)


def case_erc20_insufficient_allowance(env: Env) -> Action:
    env.tx(env.c.token.functions.approve(env.registry.address, MIN - 1), env.alice)
    return _signed_register(env, 0, MIN, MULTIADDRS)


def case_erc20_insufficient_balance(env: Env) -> Action:
    d = _registered(env)
    env.tx(env.c.token.functions.approve(env.registry.address, 10**30), env.eve)
    return lambda: env.tx(env.registry.functions.delegateStake(d, LIVE), env.eve)


def case_erc20_invalid_receiver(env: Env) -> Action:
    return lambda: env.tx(env.c.token.functions.transfer(ZERO, 1), env.alice)


def case_erc20_invalid_spender(env: Env) -> Action:
    return lambda: env.tx(env.c.token.functions.approve(ZERO, 1), env.alice)


REVERT_CASES: dict[str, Callable[[Env], Action]] = {
    "NotGovernance": case_not_governance,
    "ZeroAddress": case_zero_address,
    "ZeroAmount": case_zero_amount,
    "UnknownServiceType": case_unknown_service_type,
    "StakeBelowMinimum": case_stake_below_minimum,
    "StakeAboveMaximum": case_stake_above_maximum,
    "AlreadyRegistered": case_already_registered,
    "WithdrawalPending": case_withdrawal_pending,
    "NotRegistered": case_not_registered,
    "StillActive": case_still_active,
    "NotOwner": case_not_owner,
    "BadDelegateSignature": case_bad_delegate_signature,
    "TooManyMultiaddrs": case_too_many_multiaddrs,
    "EmptyMultiaddr": case_empty_multiaddr,
    "MultiaddrTooLong": case_multiaddr_too_long,
    "LockupNotOver": case_lockup_not_over,
    "LockupTooLong": case_lockup_too_long,
    "NoPendingRequest": case_no_pending_request,
    "RequestAlreadyPending": case_request_already_pending,
    "InsufficientStake": case_insufficient_stake,
    "InsufficientDelegation": case_insufficient_delegation,
    "EmptyServiceType": case_empty_service_type,
    "ServiceTypeExists": case_service_type_exists,
    "InvalidStakeBounds": case_invalid_stake_bounds,
    "ERC20InsufficientAllowance": case_erc20_insufficient_allowance,
    "ERC20InsufficientBalance": case_erc20_insufficient_balance,
    "ERC20InvalidReceiver": case_erc20_invalid_receiver,
    "ERC20InvalidSpender": case_erc20_invalid_spender,
}

EXPECTED_ARGS: dict[str, dict[str, Any]] = {
    "StakeBelowMinimum": {"stake": MIN - 1, "min": MIN},
    "StakeAboveMaximum": {"stake": 200 * LIVE + MAX, "max": MAX},
    "TooManyMultiaddrs": {"count": 9, "max": 8},
    "EmptyMultiaddr": {"index": 1},
    "MultiaddrTooLong": {"index": 0, "length": 257, "max": 256},
    "LockupTooLong": {"blocks": 1_000_001, "max": 1_000_000},
    "InsufficientStake": {"requested": 201 * LIVE, "available": 200 * LIVE},
    "InsufficientDelegation": {"requested": 10 * LIVE + 1, "available": 10 * LIVE},
    "InvalidStakeBounds": {"min": 3, "max": 2},
    "UnknownServiceType": {"serviceType": service_type_id("relay-node")},
}


@pytest.mark.parametrize("name", sorted(REVERT_CASES))
def test_custom_error(env: Env, name: str) -> None:
    action = REVERT_CASES[name](env)
    with reverts(name) as info:
        action()
    if name in EXPECTED_ARGS:
        assert info.revert is not None and info.revert.args_dict == EXPECTED_ARGS[name]


def test_every_custom_error_is_exercised() -> None:
    from tests.test_entity_manager import ENTITY_REVERT_CASES

    assert set(REVERT_CASES) | set(ENTITY_REVERT_CASES) == error_names() - UNREACHABLE_ERRORS
    assert error_names() >= UNREACHABLE_ERRORS


@pytest.mark.parametrize("contract", ["ServiceProviderRegistry", "ServiceTypeManager"])
def test_every_function_and_event_is_exercised(contract: str) -> None:
    """Each function of our contracts is called, and each event checked, in this module."""
    source = Path(__file__).read_text(encoding="utf-8")
    for entry in load_artifact(contract).abi:
        name = entry.get("name")
        if entry["type"] == "function":
            assert f"functions.{name}(" in source, f"{contract}.{name} is never called"
        elif entry["type"] == "event":
            assert f'"{name}")' in source, f"{contract} event {name} is never checked"


# -- decode_revert in every shape --------------------------------------------------------


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


def test_decode_revert_shapes() -> None:
    data = (
        _selector("StakeBelowMinimum(uint256,uint256)")
        + (1 * LIVE).to_bytes(32, "big")
        + (100 * LIVE).to_bytes(32, "big")
    )
    expected = ("StakeBelowMinimum", {"stake": LIVE, "min": 100 * LIVE})
    shapes: list[object] = [
        data,
        "0x" + data.hex(),
        ContractCustomError("0x" + data.hex(), data="0x" + data.hex()),  # web3 over JSON-RPC
        Exception(f"execution reverted: {data!r}"),  # web3's eth-tester provider
        Exception("wrapped", Exception(data)),  # eth-tester used without web3
    ]
    # a first argument whose bytes hold both quote characters and a backslash
    quoted = data[:4] + b"'\"\\" + bytes(29) + data[36:]
    assert decode_revert(Exception(f"execution reverted: {quoted!r} (and more)")) is not None
    for shape in shapes:
        revert = decode_revert(shape)  # type: ignore[arg-type]
        assert revert is not None and (revert.name, revert.args_dict) == expected, shape
    revert = decode_revert(data)
    assert str(revert) == "StakeBelowMinimum(stake=1 LIVE, min=100 LIVE)"
    assert decode_revert(revert) is revert  # type: ignore[arg-type]
    owner = "0x" + "ab" * 20
    encoded = _selector("NotOwner(address)") + bytes(12) + bytes.fromhex(owner[2:])
    not_owner = decode_revert_data(encoded)
    assert not_owner is not None and not_owner.args_dict == {"caller": to_checksum_address(owner)}
    assert decode_revert(b"\xde\xad\xbe\xef") is None
    assert decode_revert(ValueError("nothing here")) is None
    assert decode_revert_data(_selector("StakeBelowMinimum(uint256,uint256)") + b"\x01") is None


def test_decode_builtin_reverts() -> None:
    from eth_abi.abi import encode

    error = decode_revert_data(bytes.fromhex("08c379a0") + encode(["string"], ["boom"]))
    assert error is not None and (error.name, error.args_dict) == ("Error", {"message": "boom"})
    panic = decode_revert_data(bytes.fromhex("4e487b71") + encode(["uint256"], [0x11]))
    assert panic is not None and (panic.name, panic.args_dict) == ("Panic", {"code": 0x11})
    unknown = decode_revert_data(
        _selector("UnknownServiceType(bytes32)") + service_type_id("relay-node")
    )
    assert str(unknown) == "UnknownServiceType(serviceType='relay-node')"


# -- gas -----------------------------------------------------------------------------------


def test_gas_of_common_operations(env: Env) -> None:
    register = env.register(0, stake=200 * LIVE)["gasUsed"]
    delegate = env.tx(env.registry.functions.delegateStake(env.delegate(0), 50 * LIVE), env.carol)
    slash = env.tx(env.registry.functions.slash(env.delegate(0), 10 * LIVE), env.gov)
    gas = {"register": register, "delegate": delegate["gasUsed"], "slash": slash["gasUsed"]}
    print(f"gas: {gas}")
    assert gas["register"] < 350_000 and gas["delegate"] < 150_000 and gas["slash"] < 100_000


# -- the same contracts on anvil ------------------------------------------------------------


def test_anvil_deploy_register_and_custom_error() -> None:
    """On a real node (anvil), web3 raises ContractCustomError: decode_revert reads it too."""
    with start_anvil(accounts=3) as url:  # ready once it listens and answers eth_chainId
        w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 5}))
        deployer, owner, _ = list(w3.eth.accounts)
        deployment = deploy_all(w3, deployer=deployer, service_types={CONTENT_NODE: (MIN, MAX)})
        c = bind(w3, deployment)
        send(w3, deployer, c.token.functions.transfer(owner, MIN))
        key = b"\x07" * 32
        register_provider(
            w3,
            deployment,
            owner=owner,
            delegate_private_key=key,
            service_type=CONTENT_NODE,
            stake=MIN,
            multiaddrs=MULTIADDRS,
        )
        delegate = Account.from_key(key).address
        assert c.registry.functions.isStaked(delegate).call()
        with pytest.raises(ContractCustomError) as excinfo:
            send(w3, owner, c.registry.functions.increaseStake(delegate, MAX))
        revert = decode_revert(excinfo.value)
        assert revert is not None and revert.name == "StakeAboveMaximum"
