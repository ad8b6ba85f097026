"""The music layer's data contract (EntityManager) on the embedded chain.

Every entity and action goes through as one signed call and comes out as one
``ManageEntity`` event with the fields and the recovered signer; every
custom error has a case in ENTITY_REVERT_CASES (test_contracts checks that
the union of the case tables covers every error of every ABI). The Python
signer (chain.entity) is checked against the contract's own ``digestOf`` and
against eth-account's EIP-712 encoder, and the readers decode the same events.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import pytest
import trio
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given
from hypothesis import strategies as st
from web3 import Web3
from web3.contract import Contract

from chain.abi import ENTITY_MANAGER, load_abi
from chain.access import ChainAccess
from chain.deploy import Deployment, deploy_all, embedded_web3, send
from chain.entity import (
    EVENT_TOPIC,
    MANAGE_ENTITY_TYPE,
    MAX_METADATA,
    MAX_NAME,
    EntityReader,
    SignedAction,
    decode_event_data,
    domain_separator,
    recover_signer,
    sign_action,
    typed_data_digest,
)
from chain.errors import decode_revert

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
ALICE_KEY = bytes([7]) * 32
ALICE = Account.from_key(ALICE_KEY).address

# every entity type and action the discovery rules know (docs/discovery-rules.md)
ENTITY_ACTIONS = [
    ("User", "Create"),
    ("User", "Update"),
    ("Track", "Create"),
    ("Track", "Update"),
    ("Track", "Delete"),
    ("Playlist", "Create"),
    ("Playlist", "Update"),
    ("Playlist", "Delete"),
    ("Album", "Create"),
    ("Album", "Update"),
    ("Album", "Delete"),
    ("User", "Follow"),
    ("User", "Unfollow"),
    ("Track", "Repost"),
    ("Track", "Unrepost"),
    ("Track", "Save"),
    ("Track", "Unsave"),
    ("Playlist", "Repost"),
    ("Playlist", "Unrepost"),
    ("Playlist", "Save"),
    ("Playlist", "Unsave"),
]


@dataclass
class Env:
    w3: Web3
    tester: Any
    deployment: Deployment
    manager: Contract
    relay: str

    def sign(self, **fields: Any) -> SignedAction:
        assert self.deployment.entity_manager is not None
        base: dict[str, Any] = {
            "user_id": 1,
            "entity_type": "Track",
            "entity_id": 10,
            "action": "Create",
            "metadata": json.dumps({"title": "x"}),
        }
        base.update(fields)
        key = base.pop("key", ALICE_KEY)
        return sign_action(
            key,
            chain_id=self.deployment.chain_id,
            contract=self.deployment.entity_manager,
            **base,
        )

    def submit(self, signed: SignedAction) -> dict[str, Any]:
        receipt = send(
            self.w3, self.relay, self.manager.functions.manageEntity(*signed.call_args())
        )
        logs = self.manager.events.ManageEntity().process_receipt(receipt)
        assert len(logs) == 1
        event = dict(logs[0]["args"])
        event["blockNumber"] = receipt["blockNumber"]
        return event


@pytest.fixture(scope="module")
def module_env() -> Env:
    w3 = embedded_web3(accounts=3)
    deployer, relay, _ = list(w3.eth.accounts)
    deployment = deploy_all(w3, deployer=deployer)
    assert deployment.entity_manager is not None
    manager = w3.eth.contract(address=deployment.entity_manager, abi=load_abi(ENTITY_MANAGER))
    return Env(w3, cast(Any, w3.provider).ethereum_tester, deployment, manager, relay)


@pytest.fixture
def env(module_env: Env) -> Iterator[Env]:
    snapshot = module_env.tester.take_snapshot()
    yield module_env
    module_env.tester.revert_to_snapshot(snapshot)


@pytest.mark.parametrize(("entity_type", "action"), ENTITY_ACTIONS)
def test_every_entity_and_action_is_one_event(env: Env, entity_type: str, action: str) -> None:
    metadata = "" if action in ("Delete", "Follow", "Unfollow") else json.dumps({"n": action})
    signed = env.sign(entity_type=entity_type, action=action, entity_id=42, metadata=metadata)
    event = env.submit(signed)
    assert event == {
        "userId": 1,
        "signer": ALICE,
        "entityType": entity_type,
        "entityId": 42,
        "metadata": metadata,
        "action": action,
        "blockNumber": event["blockNumber"],
    }
    key = Web3.solidity_keccak(["bytes32", "address"], [signed.digest(), ALICE])
    assert env.manager.functions.usedNonces(key).call() is True


def test_the_relay_is_not_the_signer_and_anyone_may_relay(env: Env) -> None:
    other = list(env.w3.eth.accounts)[-1]
    signed = env.sign()
    receipt = send(env.w3, other, env.manager.functions.manageEntity(*signed.call_args()))
    (log,) = env.manager.events.ManageEntity().process_receipt(receipt)
    assert log["args"]["signer"] == ALICE != other


def test_a_tampered_field_recovers_another_signer(env: Env) -> None:
    """The contract cannot know the user's wallet: a changed field makes the
    signature someone else's, and the indexer refuses it (not the user's)."""
    signed = env.sign()
    for tampered in (
        replace(signed, user_id=2),
        replace(signed, entity_type="Playlist"),
        replace(signed, entity_id=11),
        replace(signed, action="Delete"),
        replace(signed, metadata='{"title":"y"}'),
        replace(signed, nonce=bytes(32)),
    ):
        event = env.submit(tampered)
        assert event["signer"] != ALICE
        assert recover_signer(tampered) == event["signer"].lower()


def test_digest_matches_the_contract_and_eth_account(env: Env) -> None:
    assert env.deployment.entity_manager is not None
    signed = env.sign(metadata='{"title":"ünïcode ♪"}', user_id=2**255, entity_id=2**256 - 1)
    on_chain = env.manager.functions.digestOf(
        signed.user_id,
        signed.entity_type,
        signed.entity_id,
        signed.action,
        signed.metadata,
        signed.nonce,
    ).call()
    assert bytes(on_chain) == signed.digest()
    # eth-account's EIP-712 encoder (an implementation nobody here wrote)
    message = encode_typed_data(
        full_message={
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "ManageEntity": [
                    {"name": "userId", "type": "uint"},
                    {"name": "entityType", "type": "string"},
                    {"name": "entityId", "type": "uint"},
                    {"name": "action", "type": "string"},
                    {"name": "metadata", "type": "string"},
                    {"name": "nonce", "type": "bytes32"},
                ],
            },
            "primaryType": "ManageEntity",
            "domain": {
                "name": "Entity Manager",
                "version": "1",
                "chainId": env.deployment.chain_id,
                "verifyingContract": env.deployment.entity_manager,
            },
            "message": {
                "userId": signed.user_id,
                "entityType": signed.entity_type,
                "entityId": signed.entity_id,
                "action": signed.action,
                "metadata": signed.metadata,
                "nonce": signed.nonce,
            },
        }
    )
    reference = Account.sign_message(message, ALICE_KEY)
    assert bytes(reference.signature) == signed.signature
    assert recover_signer(signed) == ALICE.lower()


def test_domain_binds_chain_and_contract(env: Env) -> None:
    assert env.deployment.entity_manager is not None
    args: dict[str, Any] = {
        "user_id": 1,
        "entity_type": "User",
        "entity_id": 1,
        "action": "Create",
        "metadata": "{}",
        "nonce": bytes(32),
    }
    here = typed_data_digest(
        chain_id=env.deployment.chain_id, contract=env.deployment.entity_manager, **args
    )
    assert here != typed_data_digest(
        chain_id=env.deployment.chain_id + 1, contract=env.deployment.entity_manager, **args
    )
    assert here != typed_data_digest(
        chain_id=env.deployment.chain_id, contract=env.deployment.token, **args
    )
    assert (
        bytes(env.manager.functions.domainSeparator().call()).hex()
        == domain_separator(env.deployment.chain_id, env.deployment.entity_manager).hex()
    )


def test_bounds_are_inclusive(env: Env) -> None:
    ok = env.sign(metadata="m" * MAX_METADATA, entity_type="E" * MAX_NAME, action="A" * MAX_NAME)
    assert env.submit(ok)["metadata"] == "m" * MAX_METADATA


def test_python_signer_refuses_what_the_contract_would() -> None:
    with pytest.raises(ValueError, match="user id"):
        sign_action(ALICE_KEY, chain_id=1, contract=ALICE, user_id=-1, entity_type="User",
                    entity_id=1, action="Create")  # fmt: skip
    with pytest.raises(ValueError, match="nonce"):
        sign_action(ALICE_KEY, chain_id=1, contract=ALICE, user_id=1, entity_type="User",
                    entity_id=1, action="Create", nonce=b"short")  # fmt: skip


# -- every custom error ------------------------------------------------------------------

Case = Callable[[Env], SignedAction]


def _high_s(env: Env) -> SignedAction:
    """The signature's malleable twin (n - s, flipped v): same signer, refused."""
    signed = env.sign()
    r, s, v = (
        signed.signature[:32],
        int.from_bytes(signed.signature[32:64], "big"),
        signed.signature[64],
    )
    twin = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])
    return replace(signed, signature=twin)


INVALID_SIGNATURES: dict[str, Case] = {
    "short": lambda env: replace(env.sign(), signature=env.sign().signature[:64]),
    "long": lambda env: replace(env.sign(), signature=env.sign().signature + b"\0"),
    "bad v": lambda env: replace(env.sign(), signature=env.sign().signature[:64] + b"\x01"),
    "high s": _high_s,
    "unrecoverable": lambda env: replace(env.sign(), signature=bytes(64) + b"\x1b"),
}


def _replayed(env: Env) -> SignedAction:
    signed = env.sign()
    env.submit(signed)
    return signed


ENTITY_REVERT_CASES: dict[str, Case] = {
    "InvalidSignature": INVALID_SIGNATURES["short"],
    "NonceAlreadyUsed": _replayed,
    "MetadataTooLarge": lambda env: env.sign(metadata="m" * (MAX_METADATA + 1)),
    "EntityTypeTooLong": lambda env: env.sign(entity_type="E" * (MAX_NAME + 1)),
    "ActionTooLong": lambda env: env.sign(action="A" * (MAX_NAME + 1)),
}
ENTITY_EXPECTED_ARGS: dict[str, dict[str, Any]] = {
    "MetadataTooLarge": {"length": MAX_METADATA + 1, "limit": MAX_METADATA},
    "EntityTypeTooLong": {"length": MAX_NAME + 1, "limit": MAX_NAME},
    "ActionTooLong": {"length": MAX_NAME + 1, "limit": MAX_NAME},
}


def _revert_of(env: Env, signed: SignedAction) -> Any:
    with pytest.raises(Exception) as excinfo:  # the backend's exception class varies
        env.submit(signed)
    revert = decode_revert(excinfo.value)
    assert revert is not None, f"undecodable revert: {excinfo.value!r}"
    return revert


@pytest.mark.parametrize("name", sorted(ENTITY_REVERT_CASES))
def test_custom_error(env: Env, name: str) -> None:
    signed = ENTITY_REVERT_CASES[name](env)
    revert = _revert_of(env, signed)
    assert revert.name == name
    if name in ENTITY_EXPECTED_ARGS:
        assert revert.args_dict == ENTITY_EXPECTED_ARGS[name]
    if name == "NonceAlreadyUsed":
        key = Web3.solidity_keccak(["bytes32", "address"], [signed.digest(), ALICE])
        assert revert.args_dict == {"key": bytes(key)}


@pytest.mark.parametrize("how", sorted(INVALID_SIGNATURES))
def test_invalid_signatures(env: Env, how: str) -> None:
    signed = INVALID_SIGNATURES[how](env)
    assert recover_signer(signed) is None
    assert _revert_of(env, signed).name == "InvalidSignature"


def test_a_replay_with_a_new_nonce_is_a_new_action(env: Env) -> None:
    """The nonce is what makes two equal actions distinct (Unfollow, Follow again)."""
    follow = {"entity_type": "User", "action": "Follow", "entity_id": 2, "metadata": ""}
    env.submit(env.sign(**follow, nonce=bytes(32)))
    assert env.submit(env.sign(**follow, nonce=b"\1" * 32))["signer"] == ALICE


# -- the reader ------------------------------------------------------------------------


def test_every_function_and_event_is_exercised() -> None:
    source = Path(__file__).read_text(encoding="utf-8")
    for entry in load_abi(ENTITY_MANAGER):
        name = entry.get("name")
        if entry["type"] == "function":
            assert f"functions.{name}(" in source, f"EntityManager.{name} is never called"
        elif entry["type"] == "event":
            assert f"events.{name}(" in source, f"EntityManager event {name} is never checked"


def test_constants_match_the_contract(module_env: Env) -> None:
    manager = module_env.manager
    assert manager.functions.MAX_METADATA().call() == MAX_METADATA
    assert manager.functions.MAX_NAME().call() == MAX_NAME
    assert manager.functions.NAME().call() == "Entity Manager"
    assert manager.functions.VERSION().call() == "1"
    assert bytes(manager.functions.MANAGE_ENTITY_TYPEHASH().call()) == Web3.keccak(
        text=MANAGE_ENTITY_TYPE
    )


async def test_reader_decodes_the_events_in_chain_order() -> None:
    w3 = embedded_web3(accounts=2)
    deployer, relay = list(w3.eth.accounts)
    deployment = deploy_all(w3, deployer=deployer)
    assert deployment.entity_manager is not None
    manager = w3.eth.contract(address=deployment.entity_manager, abi=load_abi(ENTITY_MANAGER))
    access = ChainAccess(w3)
    reader = EntityReader.for_access(access, deployment)
    sent = []
    for i in range(3):
        signed = sign_action(
            ALICE_KEY,
            chain_id=deployment.chain_id,
            contract=deployment.entity_manager,
            user_id=5,
            entity_type="Track",
            entity_id=100 + i,
            action="Create",
            metadata=f'{{"title":"{i}"}}',
        )
        call = manager.functions.manageEntity(*signed.call_args())
        receipt = await access.run(functools.partial(send, sender=relay, call=call))
        sent.append((signed, receipt))
    with trio.fail_after(10):
        head = await reader.head()
        actions = await reader.actions(deployment.entity_manager_block, head)
        headers = await reader.headers([a.block_number for a in actions] + [head + 5])
    assert [a.entity_id for a in actions] == [100, 101, 102]
    for action, (signed, receipt) in zip(actions, sent, strict=True):
        assert action.signer == ALICE.lower()
        assert action.metadata == signed.metadata and action.user_id == 5
        assert action.tx_hash == bytes(receipt["transactionHash"])
        assert headers[action.block_number].hash == action.block_hash
    assert head + 5 not in headers  # past the head: left out, not an error
    assert (
        Web3.keccak(text="ManageEntity(uint256,address,string,uint256,string,string)")
        == EVENT_TOPIC
    )


@given(
    st.text(max_size=40),
    st.integers(min_value=0, max_value=2**256 - 1),
    st.text(max_size=300),
    st.text(max_size=40),
)
def test_event_data_decodes_as_eth_abi_does(t: str, entity_id: int, meta: str, action: str) -> None:
    data = abi_encode(["string", "uint256", "string", "string"], [t, entity_id, meta, action])
    assert decode_event_data(data) == (t, entity_id, meta, action)


@given(st.binary(max_size=400))
def test_event_data_garbage_is_a_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        decode_event_data(data)


def test_invalid_utf8_in_a_string_is_replaced_not_an_error() -> None:
    data = abi_encode(["bytes", "uint256", "string", "string"], [b"Tr\xffck", 1, "{}", "Create"])
    assert decode_event_data(data) == ("Tr\ufffdck", 1, "{}", "Create")


async def test_invalid_utf8_on_chain_is_indexed_as_a_rejection(env: Env) -> None:
    """Solidity takes any bytes as a string: the reader must not stall on them."""
    bad = env.sign(entity_type="Track", metadata="{}")
    # a typed-data client cannot sign such a string: the calldata is patched by hand
    call = env.manager.functions.manageEntity(1, "T", 10, "Create", "{}", bad.nonce, bad.signature)
    data = bytearray(bytes.fromhex(call._encode_transaction_data()[2:]))
    index = data.find(b"T" + bytes(31))
    data[index : index + 1] = b"\xff"
    tx = env.w3.eth.send_transaction(
        {"from": env.relay, "to": env.manager.address, "data": bytes(data), "gas": 500_000}
    )
    receipt = env.w3.eth.wait_for_transaction_receipt(tx)
    assert receipt["status"] == 1
    access = ChainAccess(env.w3)
    reader = EntityReader.for_access(access, env.deployment)
    (action,) = await reader.actions(receipt["blockNumber"], receipt["blockNumber"])
    assert action.entity_type == "\ufffd"
