"""Indexing rate of the discovery node: ``python -m bench.discovery_index``.

On a real anvil started here (npm ``@foundry-rs/anvil``), in one run:

1. the catalogue: ``--actions`` signed EntityManager actions (users sign up,
   then a mix of track uploads 60%, follows 20%, reposts 12% and saves 8%,
   every one valid by the rules), relayed from anvil's first account with
   automine off and mined ``--per-block`` to a block (a busy chain);
2. raw: anvil's own ``eth_getLogs`` over the same block ranges the indexer
   reads (``--batch-blocks``), JSON decoded and nothing else: the floor;
3. indexer: a fresh :class:`~store.sqlite_index.SqliteIndex` filled by the
   :class:`~discovery.indexer.Indexer` over :class:`chain.entity.RpcReader`,
   from the contract's block to the head: logs read and decoded, headers
   fetched (batched), every action validated by the rules, journaled,
   digested and committed block by block.

Each measurement is repeated ``--rounds`` times, interleaved (raw, indexer,
raw, indexer...), and the median taken. Goal (issue 15): at least 3,000
actions/s and within 2x of the raw log read. Progress to stderr, figures to
stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio
from eth_account import Account

from chain.abi import ENTITY_MANAGER, load_abi
from chain.entity import EVENT_TOPIC, RpcReader, sign_action
from chain.local import LocalChain, open_chain
from discovery.indexer import Indexer, IndexerConfig
from store.index import Page
from store.sqlite_index import SqliteIndex

GOAL_RATE = 3000.0
GOAL_RATIO = 2.0
CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
GENRES = ("Electronic", "Rock", "Hip-Hop/Rap", "Jazz", "Classical", "Ambient")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def plan(actions: int, seed: int = 1) -> list[tuple[int, str, int, str, str]]:
    """(user id, entity type, entity id, action, metadata), valid in this order."""
    rng = random.Random(seed)
    users = max(2, actions // 20)
    out: list[tuple[int, str, int, str, str]] = []
    for u in range(1, users + 1):
        out.append((u, "User", u, "Create", json.dumps({"handle": f"artist{u}", "name": f"A {u}"})))
    tracks: list[int] = []
    owners: dict[int, int] = {}
    follows: set[tuple[int, int]] = set()
    reposts: set[tuple[int, int]] = set()
    saves: set[tuple[int, int]] = set()
    next_track = 1
    while len(out) < actions:
        roll = rng.random()
        user = rng.randint(1, users)
        if roll < 0.6 or not tracks:
            meta = {
                "title": f"Track {next_track} {rng.choice(('Night', 'Sun', 'Rain', 'Blue'))}",
                "genre": rng.choice(GENRES),
                "duration": float(rng.randint(60, 400)),
                "stream_cid": CID,
                "tags": ["bench"],
            }
            out.append((user, "Track", next_track, "Create", json.dumps(meta)))
            tracks.append(next_track)
            owners[next_track] = user
            next_track += 1
        elif roll < 0.8:
            other = rng.randint(1, users)
            if other != user and (user, other) not in follows:
                follows.add((user, other))
                out.append((user, "User", other, "Follow", ""))
        else:
            track = rng.choice(tracks)
            done = reposts if roll < 0.92 else saves
            if (user, track) not in done and owners[track] != user:
                done.add((user, track))
                out.append((user, "Track", track, "Repost" if done is reposts else "Save", ""))
    return out


async def _rpc(client: httpx.AsyncClient, url: str, method: str, params: list[Any]) -> Any:
    reply = (
        await client.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    ).json()
    if reply.get("error"):
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


async def populate(chain: LocalChain, url: str, actions: int, per_block: int) -> int:
    """Signs, relays and mines the catalogue; the number of actions on chain."""
    from tests.anvil import ANVIL_KEY_0

    deployment = chain.deployment
    assert deployment.entity_manager is not None
    relay = Account.from_key(ANVIL_KEY_0)
    manager = chain.access.w3.eth.contract(
        address=deployment.entity_manager, abi=load_abi(ENTITY_MANAGER)
    )
    keys: dict[int, bytes] = {}
    steps = plan(actions)
    async with httpx.AsyncClient(timeout=120) as client:
        nonce = int(
            await _rpc(client, url, "eth_getTransactionCount", [relay.address, "latest"]), 16
        )
        gas_price = int(await _rpc(client, url, "eth_gasPrice", []), 16) * 2
        await _rpc(client, url, "evm_setAutomine", [False])
        t0 = time.perf_counter()
        for start in range(0, len(steps), per_block):
            batch: list[dict[str, Any]] = []
            for user, kind, entity, action, meta in steps[start : start + per_block]:
                key = keys.setdefault(user, user.to_bytes(32, "big"))
                signed = sign_action(
                    key,
                    chain_id=deployment.chain_id,
                    contract=deployment.entity_manager,
                    user_id=user,
                    entity_type=kind,
                    entity_id=entity,
                    action=action,
                    metadata=meta,
                )
                data = manager.encode_abi("manageEntity", args=list(signed.call_args()))
                tx = {
                    "to": deployment.entity_manager,
                    "data": data,
                    "gas": 200_000,
                    "gasPrice": gas_price,
                    "nonce": nonce,
                    "chainId": deployment.chain_id,
                }
                nonce += 1
                raw = relay.sign_transaction(tx).raw_transaction
                batch.append(
                    {
                        "jsonrpc": "2.0",
                        "id": len(batch),
                        "method": "eth_sendRawTransaction",
                        "params": ["0x" + bytes(raw).hex()],
                    }
                )
            replies = (await client.post(url, json=batch)).json()
            errors = [r["error"] for r in replies if r.get("error")]
            if errors:
                raise RuntimeError(f"relaying failed: {errors[0]}")
            await _rpc(client, url, "evm_mine", [])
            done = min(start + per_block, len(steps))
            _say(
                f"  relayed {done}/{len(steps)} actions ({done / (time.perf_counter() - t0):.0f}/s)"
            )
        await _rpc(client, url, "evm_setAutomine", [True])
        logs = await _rpc(
            client,
            url,
            "eth_getLogs",
            [
                {
                    "address": deployment.entity_manager,
                    "fromBlock": hex(deployment.entity_manager_block),
                    "toBlock": "latest",
                    "topics": ["0x" + EVENT_TOPIC.hex()],
                }
            ],
        )
    if len(logs) != len(steps):
        raise RuntimeError(f"{len(steps)} actions relayed, {len(logs)} on chain (out of gas?)")
    return len(logs)


async def raw_read(url: str, contract: str, first: int, head: int, batch_blocks: int) -> float:
    """Seconds for eth_getLogs over [first, head] in the indexer's ranges, JSON decoded."""
    async with httpx.AsyncClient(timeout=120) as client:
        t0 = time.perf_counter()
        count = 0
        for start in range(first, head + 1, batch_blocks):
            end = min(head, start + batch_blocks - 1)
            logs = await _rpc(
                client,
                url,
                "eth_getLogs",
                [{"address": contract, "fromBlock": hex(start), "toBlock": hex(end),
                  "topics": ["0x" + EVENT_TOPIC.hex()]}],
            )  # fmt: skip
            count += len(logs)
        return time.perf_counter() - t0


async def index_once(
    chain: LocalChain, url: str, head: int, batch_blocks: int, work: Path
) -> tuple[float, int, int, str]:
    """Seconds to index from the contract's block to ``head``; applied, rejected, digest."""
    path = work / f"index-{time.monotonic_ns()}.sqlite"
    store = SqliteIndex(path)
    reader = RpcReader(url, chain.deployment)
    indexer = Indexer(
        store,
        reader,
        start_block=chain.deployment.entity_manager_block,
        config=IndexerConfig(batch_blocks=batch_blocks),
    )
    try:
        t0 = time.perf_counter()
        while indexer.tip is None or indexer.tip.number < head:
            await indexer.step()
        elapsed = time.perf_counter() - t0
        for refused in store.rejections(Page(limit=3)):
            _say(f"  refused: {refused.entity_type} {refused.action}: {refused.reason}")
        return elapsed, indexer.applied, indexer.rejected, store.digest().hex()
    finally:
        await reader.aclose()
        store.close()


async def main(actions: int, per_block: int, batch_blocks: int, rounds: int) -> None:
    from tests.anvil import anvil_available, start_anvil

    if not anvil_available():
        print("anvil is not installed (npm ci installs it); nothing measured")
        return
    with (
        start_anvil(extra_args=["--gas-limit", "2000000000", "--order", "fifo"]) as url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        chain = await open_chain(url)
        assert chain.deployment.entity_manager is not None
        _say(f"anvil at {url}; relaying {actions} actions, {per_block} per block")
        on_chain = await populate(chain, url, actions, per_block)
        head = await chain.block_number()
        first = chain.deployment.entity_manager_block
        raws: list[float] = []
        indexed: list[float] = []
        digests = set()
        for r in range(rounds):
            raws.append(
                await raw_read(url, chain.deployment.entity_manager, first, head, batch_blocks)
            )
            seconds, applied, rejected, digest = await index_once(
                chain, url, head, batch_blocks, Path(tmp)
            )
            indexed.append(seconds)
            digests.add(digest)
            _say(f"  round {r + 1}: raw {raws[-1]:.2f} s, indexer {seconds:.2f} s")
            if applied != on_chain or rejected:
                raise RuntimeError(f"{applied} applied, {rejected} rejected of {on_chain}")
        if len(digests) != 1:
            raise RuntimeError(f"the rounds disagree on the digest: {digests}")
    raw_s, idx_s = statistics.median(raws), statistics.median(indexed)
    raw_rate, idx_rate = on_chain / raw_s, on_chain / idx_s
    print(f"discovery indexing from anvil: {on_chain} actions in {head - first + 1} blocks")
    print(f"  raw eth_getLogs (JSON decoded)  {raw_rate:10.0f} actions/s  ({raw_s:.2f} s)")
    print(f"  indexer (rules, SQLite, digest) {idx_rate:10.0f} actions/s  ({idx_s:.2f} s)")
    ratio = raw_rate / idx_rate
    print(f"  raw / indexer                   {ratio:10.2f}x   (goal <= {GOAL_RATIO:.1f}x)")
    verdict = "met" if idx_rate >= GOAL_RATE and ratio <= GOAL_RATIO else "NOT met"
    print(f"  goal {GOAL_RATE:.0f} actions/s and within {GOAL_RATIO:.0f}x: {verdict}")
    print(f"  digest at block {head}: {digests.pop()}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actions", type=int, default=20_000, help="actions on chain")
    parser.add_argument("--per-block", type=int, default=200, help="actions mined per block")
    parser.add_argument("--batch-blocks", type=int, default=2000, help="indexer range size")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args()
    if args.actions < 10 or args.per_block < 1 or args.rounds < 1:
        parser.error("--actions >= 10, --per-block >= 1 and --rounds >= 1")
    trio.run(main, args.actions, args.per_block, args.batch_blocks, args.rounds)


if __name__ == "__main__":
    cli()
