"""Relay throughput: actions a second through the gas relay, next to anvil's own rate.

On a real anvil started here (npm ``@foundry-rs/anvil``, automining: every
transaction its own block), in one run and interleaved over ``--rounds``:

1. raw: the same kind of ``manageEntity`` transactions (signed EIP-712
   actions, a fresh nonce each), signed locally from anvil's first account
   and sent with ``eth_sendRawTransaction`` by ``--concurrency`` senders, each
   then reading its receipt: what the chain takes with no checks at all;
2. relay: as many actions posted to :class:`identity.relay.Relay` by as many
   concurrent clients, from ``--users`` users: the body checked, the
   signature recovered, the per-wallet and per-IP buckets, the gas estimate,
   then :class:`chain.relay.RelayWallet`'s one nonce sequence and receipt poll.

Prints actions/s for each and the ratio; every relayed action must land (no
nonce error). ``python -m bench.relay [--actions 400 --concurrency 16]``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time

import httpx
import trio
from eth_account import Account

from bench.discovery_index import _rpc
from chain.access import ChainAccess, ChainConfig
from chain.entity import SignedAction, sign_action
from chain.local import LocalChain, open_chain
from chain.relay import RelayWallet
from identity.relay import Relay, RelayConfig

ETH = 10**18
CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def actions(chain: LocalChain, count: int, users: int) -> list[SignedAction]:
    """``count`` distinct signed actions: each user's creates, then its tracks."""
    d = chain.deployment
    assert d.entity_manager is not None
    keys = [secrets.token_bytes(32) for _ in range(users)]
    out: list[SignedAction] = []
    for i in range(count):
        u = i % users
        meta = {"title": f"t{i}", "genre": "Electronic", "duration": 60.0, "stream_cid": CID}
        track = json.dumps(meta)
        out.append(
            sign_action(
                keys[u],
                chain_id=d.chain_id,
                contract=d.entity_manager,
                user_id=u + 1,
                entity_type="Track",
                entity_id=10_000 + i,
                action="Create",
                metadata=track,
            )
        )
    return out


async def raw_rate(
    url: str, chain: LocalChain, signed: list[SignedAction], concurrency: int
) -> float:
    """Seconds to send ``signed`` as plain transactions and read every receipt."""
    from tests.anvil import ANVIL_KEY_0

    sender = Account.from_key(ANVIL_KEY_0)
    d = chain.deployment
    async with httpx.AsyncClient(timeout=120) as client:
        nonce = int(
            await _rpc(client, url, "eth_getTransactionCount", [sender.address, "pending"]), 16
        )
        price = int(await _rpc(client, url, "eth_gasPrice", []), 16) * 2
        raws = []
        for i, action in enumerate(signed):
            tx = {"to": d.entity_manager, "data": action.calldata(), "gas": 300_000,
                  "gasPrice": price, "nonce": nonce + i, "chainId": d.chain_id}  # fmt: skip
            raws.append("0x" + bytes(sender.sign_transaction(tx).raw_transaction).hex())
        lock = trio.Lock()
        queue = iter(raws)

        async def worker() -> None:
            while True:
                async with lock:  # one nonce order: sends go in sequence, receipts overlap
                    raw = next(queue, None)
                    if raw is None:
                        return
                    tx_hash = await _rpc(client, url, "eth_sendRawTransaction", [raw])
                receipt = None
                while receipt is None:  # mined a moment after the send returns
                    receipt = await _rpc(client, url, "eth_getTransactionReceipt", [tx_hash])
                    if receipt is None:
                        await trio.sleep(0.005)  # the relay wallet's poll interval too
                if receipt["status"] != "0x1":
                    raise RuntimeError(f"raw transaction failed: {receipt}")

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        return time.perf_counter() - t0


async def relay_rate(relay: Relay, signed: list[SignedAction], concurrency: int) -> float:
    """Seconds to relay ``signed`` through ``relay`` from ``concurrency`` clients."""
    queue = iter(enumerate(signed))

    async def client(c: int) -> None:
        for _, action in queue:
            body = {
                "contractAddress": action.contract,
                "senderAddress": _signer_of(action),
                "encodedABI": "0x" + action.calldata().hex(),
                "gasLimit": 0,
            }
            await relay.relay(body, f"10.0.{c // 250}.{c % 250}")

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for c in range(concurrency):
            nursery.start_soon(client, c)
    return time.perf_counter() - t0


def _signer_of(action: SignedAction) -> str:
    from chain.entity import recover_signer

    signer = recover_signer(action)
    assert signer is not None
    return signer


async def main(count: int, users: int, concurrency: int, rounds: int, slots: int) -> None:
    from tests.anvil import anvil_available, start_anvil

    if not anvil_available():
        print("anvil is not installed (npm ci installs it); nothing measured")
        return
    with start_anvil(extra_args=["--gas-limit", "2000000000"]) as url:
        chain = await open_chain(url)
        access = ChainAccess.pool(ChainConfig(rpc=url), slots) if slots > 1 else chain.access
        wallet = RelayWallet(access, secrets.token_bytes(32), poll_interval=0.005)
        await chain.fund(wallet.address, 1000 * ETH)
        assert chain.deployment.entity_manager is not None
        unlimited = RelayConfig(wallet_rate=1e9, wallet_burst=10**9, ip_rate=1e9, ip_burst=10**9)
        relay = Relay(
            wallet,
            contract=chain.deployment.entity_manager,
            chain_id=chain.deployment.chain_id,
            config=unlimited,
        )
        raws: list[float] = []
        relayed: list[float] = []
        for r in range(rounds):
            raws.append(await raw_rate(url, chain, actions(chain, count, users), concurrency))
            relayed.append(await relay_rate(relay, actions(chain, count, users), concurrency))
            _say(f"  round {r + 1}: raw {raws[-1]:.2f} s, relay {relayed[-1]:.2f} s")
        if relay.refused or relay.relayed != count * rounds:
            raise RuntimeError(f"relayed {relay.relayed}, refused {dict(relay.refused)}")
        nonce_errors = wallet.nonce_resyncs
    raw_s, relay_s = statistics.median(raws), statistics.median(relayed)
    print(f"relay throughput on anvil (automine): {count} actions x {rounds} rounds, "
          f"{users} users, {concurrency} clients, {slots} chain call slot(s)")  # fmt: skip
    print(
        f"  anvil raw eth_sendRawTransaction + receipt {count / raw_s:8.0f} tx/s  ({raw_s:.2f} s)"
    )
    print(f"  relay (checks, estimate, send, receipt)    {count / relay_s:8.0f} actions/s  "
          f"({relay_s:.2f} s)")  # fmt: skip
    print(f"  raw / relay                                {relay_s / raw_s:8.2f}x")
    print(f"  every action landed; nonce re-reads: {nonce_errors}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actions", type=int, default=400, help="actions a round")
    parser.add_argument("--users", type=int, default=10, help="distinct user wallets")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--slots", type=int, default=8, help="the relay's concurrent RPC calls")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 40 actions, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.actions, args.rounds = 40, 1
    if min(args.actions, args.users, args.concurrency, args.rounds, args.slots) < 1:
        parser.error("every count must be at least 1")
    trio.run(main, args.actions, args.users, args.concurrency, args.rounds, args.slots)


if __name__ == "__main__":
    cli()
