"""The gas relay (identity.relay, chain.relay) on the embedded chain and on anvil:
a relayed action is indexed and answered by the API; replays, tampered fields,
other contracts and calls, and bursts are refused; 50 concurrent actions of 10
users land with no nonce error; a nonce moved behind the wallet's back is
recovered."""

from __future__ import annotations

import json
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from eth_abi.abi import encode as abi_encode
from eth_account import Account

from chain.entity import SignedAction, sign_action
from chain.local import LocalChain, open_chain
from chain.relay import RelayWallet
from discovery.api import DiscoveryAPI
from identity.relay import (
    MANAGE_ENTITY_INPUTS,
    MANAGE_ENTITY_SELECTOR,
    RateLimited,
    Relay,
    RelayConfig,
    RelayRefused,
    decode_manage_entity,
)
from tests.music import open_discovery, track_metadata

ETH = 10**18


async def funded_relay(chain: LocalChain, config: RelayConfig | None = None) -> Relay:
    key = secrets.token_bytes(32)
    wallet = RelayWallet(chain.access, key, poll_interval=0.01)
    await chain.fund(wallet.address, 100 * ETH)
    assert chain.deployment.entity_manager is not None
    return Relay(
        wallet,
        contract=chain.deployment.entity_manager,
        chain_id=chain.deployment.chain_id,
        config=config,
    )


def signed(chain: LocalChain, key: bytes, user_id: int, kind: str, entity: int, action: str,
           metadata: str = "") -> SignedAction:  # fmt: skip
    assert chain.deployment.entity_manager is not None
    return sign_action(
        key,
        chain_id=chain.deployment.chain_id,
        contract=chain.deployment.entity_manager,
        user_id=user_id,
        entity_type=kind,
        entity_id=entity,
        action=action,
        metadata=metadata,
    )


def body_of(action: SignedAction, *, sender: str | None = None, contract: str | None = None,
            data: bytes | None = None) -> dict[str, Any]:  # fmt: skip
    calldata = data or MANAGE_ENTITY_SELECTOR + abi_encode(
        list(MANAGE_ENTITY_INPUTS), list(action.call_args())
    )
    return {
        "contractAddress": contract or action.contract,
        "senderAddress": sender or _signer(action),
        "encodedABI": "0x" + calldata.hex(),
        "gasLimit": 10_000_000,
    }  # fmt: skip


def _signer(action: SignedAction) -> str:
    return str(Account._recover_hash(action.digest(), signature=action.signature))


def address(key: bytes) -> str:
    return str(Account.from_key(key).address)


@pytest.fixture
async def chain() -> LocalChain:
    return await open_chain()


async def test_a_relayed_action_is_indexed_and_answered(chain: LocalChain, tmp_path: Path) -> None:
    relay = await funded_relay(chain)
    key = secrets.token_bytes(32)
    sign_up = signed(chain, key, 7, "User", 7, "Create", json.dumps({"handle": "relayed"}))
    with trio.fail_after(30):
        answer = await relay.relay(body_of(sign_up), "127.0.0.1")
        upload = signed(chain, key, 7, "Track", 70, "Create", track_metadata("Relayed Song"))
        await relay.relay(body_of(upload), "127.0.0.1")
    assert answer["txHash"].startswith("0x") and answer["block"] > 0
    disco = open_discovery(chain, tmp_path / "index.sqlite")
    await disco.sync()
    api = DiscoveryAPI(disco.store, status=disco.indexer.status, stream_base=lambda: None)
    user = await api.call("user_by_handle", {"handle": "relayed"})
    assert user["wallet"] == address(key).lower()
    (track,) = await api.call("search_tracks", {"query": "relayed so"})
    assert track["id"] == 70 and track["user"]["id"] == 7
    assert relay.relayed == 2 and not relay.refused
    assert await relay.wallet.balance() < 100 * ETH  # the relay paid, not the user


async def test_refusals(chain: LocalChain) -> None:
    relay = await funded_relay(chain)
    key = secrets.token_bytes(32)
    action = signed(chain, key, 1, "User", 1, "Create", json.dumps({"handle": "alice"}))
    await relay.relay(body_of(action), "127.0.0.1")

    async def refused(body: object) -> str:
        with pytest.raises(RelayRefused) as info:
            await relay.relay(body, "127.0.0.1")
        return info.value.reason

    # the same signed action again: the contract's nonce check, found by the estimate
    assert await refused(body_of(action)) == "replay"
    # a field changed after signing recovers someone else
    tampered = replace(signed(chain, key, 1, "User", 1, "Update", "{}"), metadata='{"name":"x"}')
    assert await refused(body_of(tampered, sender=address(key))) == "bad_signature"
    assert (
        await refused(body_of(action, sender=address(secrets.token_bytes(32)))) == "bad_signature"
    )
    # another contract, another function, garbage
    assert await refused(body_of(action, contract=chain.deployment.token)) == "wrong_contract"
    other_call = bytes.fromhex("a9059cbb") + bytes(64)  # ERC-20 transfer
    assert await refused(body_of(action, data=other_call)) == "not_manage_entity"
    assert await refused(body_of(action, data=MANAGE_ENTITY_SELECTOR + b"\x01" * 40)) == "malformed"
    trailing = bytes.fromhex(body_of(action)["encodedABI"][2:]) + bytes(32)
    assert await refused(body_of(action, data=trailing)) == "malformed"
    bad_sig = replace(action, signature=action.signature[:64] + b"\x05", nonce=bytes(32))
    assert await refused(body_of(bad_sig, sender=address(key))) == "bad_signature"
    garbage: list[object] = [[], "x", {"contractAddress": 5}, {**body_of(action), "extra": 1}]
    for garbage_body in garbage:
        assert await refused(garbage_body) == "malformed"
    assert relay.relayed == 1 and sum(relay.refused.values()) == 12


async def test_bursts_are_rate_limited_per_wallet_and_per_ip(chain: LocalChain) -> None:
    now = [0.0]
    relay = await funded_relay(
        chain, RelayConfig(wallet_rate=0.5, wallet_burst=2, ip_rate=1.0, ip_burst=5)
    )
    relay._by_ip.clock = relay._by_wallet.clock = lambda: now[0]
    key = secrets.token_bytes(32)
    follows = [signed(chain, key, 1, "User", 10 + i, "Follow") for i in range(4)]
    await relay.relay(body_of(follows[0]), "10.0.0.1")
    await relay.relay(body_of(follows[1]), "10.0.0.2")
    with pytest.raises(RateLimited) as limited:
        await relay.relay(body_of(follows[2]), "10.0.0.3")
    assert limited.value.retry_after == pytest.approx(2.0)
    now[0] += 2.0  # a token back
    await relay.relay(body_of(follows[2]), "10.0.0.3")
    for i in range(5):  # this IP's bucket is full again (5): 5 go through (other wallets), then no
        other = secrets.token_bytes(32)
        await relay.relay(body_of(signed(chain, other, 20 + i, "User", 1, "Follow")), "10.0.0.1")
    with pytest.raises(RateLimited):
        await relay.relay(body_of(signed(chain, other, 30, "User", 1, "Follow")), "10.0.0.1")
    assert relay.rate_limited == {"wallet": 1, "ip": 1}


def test_decode_round_trip() -> None:
    key = secrets.token_bytes(32)
    action = sign_action(
        key, chain_id=5, contract=address(key), user_id=3, entity_type="Track", entity_id=9,
        action="Save", metadata="", nonce=bytes(range(32)),
    )  # fmt: skip
    data = bytes.fromhex(body_of(action)["encodedABI"][2:])
    assert decode_manage_entity(data, chain_id=5, contract=action.contract) == action


def test_config_is_checked() -> None:
    for bad in ({"wallet_rate": 0}, {"ip_burst": 1.5}, {"max_clients": True}):
        with pytest.raises(ValueError):
            RelayConfig(**bad)


@pytest.mark.slow
async def test_fifty_concurrent_actions_of_ten_users_land(anvil_url: str, tmp_path: Path) -> None:
    chain = await open_chain(anvil_url)
    relay = await funded_relay(chain)
    keys = [secrets.token_bytes(32) for _ in range(10)]
    results: list[dict[str, Any]] = []

    async def user(u: int) -> None:
        await relay.relay(
            body_of(signed(chain, keys[u], u + 1, "User", u + 1, "Create",
                           json.dumps({"handle": f"user{u + 1}"}))), f"10.0.0.{u}")  # fmt: skip
        async with trio.open_nursery() as inner:
            for i in range(4):
                track = 100 * (u + 1) + i
                act = signed(chain, keys[u], u + 1, "Track", track, "Create", track_metadata())
                inner.start_soon(_collect, relay, body_of(act), f"10.0.0.{u}", results)

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for u in range(10):
                nursery.start_soon(user, u)
    assert len(results) == 40 and relay.relayed == 50 and not relay.refused
    # someone else spends from the relay's account: the wallet re-reads its nonce
    w3 = chain.access.w3
    acct = relay.wallet.account
    nonce = w3.eth.get_transaction_count(acct.address, "pending")
    price, chain_id = w3.eth.gas_price, w3.eth.chain_id
    tx = acct.sign_transaction({"to": acct.address, "value": 1, "gas": 21_000, "nonce": nonce,
                                "gasPrice": price, "chainId": chain_id})  # fmt: skip
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(tx.raw_transaction))
    late = signed(chain, keys[0], 1, "User", 2, "Follow")
    with trio.fail_after(30):
        await relay.relay(body_of(late), "10.0.0.0")
    assert relay.wallet.nonce_resyncs == 1
    disco = open_discovery(chain, tmp_path / "index.sqlite")
    await disco.sync()
    assert disco.indexer.applied == 51 and disco.indexer.rejected == 0


async def _collect(relay: Relay, body: dict[str, Any], client: str, out: list[Any]) -> None:
    out.append(await relay.relay(body, client))
