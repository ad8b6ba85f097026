"""How much the stake gate costs: ``python -m bench.stake``.

On the embedded chain and (if installed) on a real anvil, in one run:

- raw ``eth_call`` rate: the registry's ``getProvider`` called back to back
  through web3, synchronously: the floor any oracle pays per lookup;
- uncached ``stake_of``: a registered peer the oracle has not seen (one
  ``eth_call`` in the worker thread, plus the thread hop from trio);
- cached ``stake_of``: the answer every later announcement gets;
- announcement validation: the gossip validator on a well-formed announcement
  from a staked peer (CBOR decode, freshness, cached stake).

Goals (issue 3): cached <= 1 ms; uncached within 1.5x of raw ``eth_call``.
Prints per-call time and rate, and the ratio uncached / raw.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable

import trio

from chain.deploy import bind
from chain.local import LocalChain, open_chain
from p2p.host import peer_id_of_key
from p2p.keys import NodeKey, PeerId
from protocols import announce
from protocols.cid import CID, RAW


async def _register(chain: LocalChain, count: int) -> list[PeerId]:
    peers = []
    for _ in range(count):
        key = NodeKey.generate()
        await chain.register(key)
        peers.append(peer_id_of_key(key))
    return peers


async def _per_call(fn: Callable[[], Awaitable[object]], calls: int) -> float:
    """Seconds per call, the median of 5 rounds."""
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            await fn()
        rounds.append((time.perf_counter() - t0) / calls)
    return statistics.median(rounds)


async def measure(chain: LocalChain, label: str, *, peers: int, calls: int) -> dict[str, float]:
    registered = await _register(chain, peers)
    registry = bind(chain.access.w3, chain.deployment).registry
    address = NodeKey.generate().eth_address

    def raw_calls() -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            registry.functions.getProvider(address).call()
        return (time.perf_counter() - t0) / calls

    raw = statistics.median([await trio.to_thread.run_sync(raw_calls) for _ in range(5)])

    oracle = chain.oracle()
    await oracle.poll()
    i = 0

    async def uncached() -> None:
        nonlocal i
        oracle._cache.clear()  # a miss every time, on a registered peer
        await oracle.stake_of(registered[i % len(registered)])
        i += 1

    miss = await _per_call(uncached, calls)
    await oracle.stake_of(registered[0])
    hit = await _per_call(lambda: oracle.stake_of(registered[0]), calls * 50)

    validator = announce.AnnounceValidator(oracle)
    cid = CID.for_block(RAW, b"track")
    data = announce.encode(announce.Announcement(time.time(), 600, (), (cid,)))

    async def validate() -> None:
        assert await validator(registered[0], registered[0], data)

    check = await _per_call(validate, calls * 50)
    figures = {"raw": raw, "uncached": miss, "cached": hit, "validate": check}
    print(f"\n{label}")
    for name, seconds in figures.items():
        print(f"  {name:<9} {seconds * 1e3:8.3f} ms/call  {1 / seconds:10,.0f} /s")
    print(f"  uncached / raw eth_call = {miss / raw:.2f}  (goal <= 1.5)")
    print(f"  cached = {hit * 1e3:.4f} ms  (goal <= 1 ms)")
    return figures


async def main(peers: int, calls: int, anvil: bool) -> None:
    print(f"stake oracle benchmark: {peers} registered peers, {calls} calls per round")
    embedded = await open_chain()
    await measure(embedded, "embedded chain (py-evm in process)", peers=peers, calls=calls)
    if not anvil:
        return
    from tests.anvil import anvil_available, start_anvil

    if not anvil_available():
        print("\nanvil: not installed (npm ci installs it); skipped")
        return
    with start_anvil() as url:
        chain = await open_chain(url)
        await measure(chain, f"anvil over JSON-RPC ({url})", peers=peers, calls=calls)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=20, help="registered peers to look up")
    parser.add_argument("--calls", type=int, default=100, help="calls per timed round")
    parser.add_argument("--no-anvil", action="store_true", help="embedded chain only")
    parser.add_argument("--quick", action="store_true", help="a few calls: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.peers, args.calls = 3, 5
    trio.run(main, args.peers, args.calls, not args.no_anvil)


if __name__ == "__main__":
    cli()
