"""The chain-backed StakeOracle: who is a staked provider, read from the registry.

``stake_of(peer)`` derives the delegate address from the peer's secp256k1
public key (no round trip: the peer ID carries the key), then answers from a
cache. The cache is filled by one ``eth_call`` batch on a miss and emptied when
the chain says something changed:

- every ``poll_interval`` the oracle reads the head block; if it moved, it
  fetches the registry's and the type manager's logs since the last head; any
  log clears the cache;
- if the block it saw last has a different hash now, or the head went back
  (a reorg, or ``evm_revert`` on a dev chain), it clears the cache too.

After a clear, every peer that was staked is checked again; those that no
longer are go to ``on_unstaked`` (the node drops their provider records). So a
peer that deregisters or is slashed below the minimum stops being accepted
within one poll of the block that did it. Reads run through ChainAccess, off
the trio loop; a cache hit never leaves it.

Failure modes: an unreachable RPC keeps the last known answers, answers
misses with "not staked" at once (no queue of callers behind a dead
endpoint), and is retried with backoff. On every (re)connection the oracle
checks that the endpoint is the deployment's chain and that the registry has
code there; if not, it accepts nobody, says why in ``problem`` and the log,
and keeps checking. The cache is bounded (LRU), so a flood of announcements
from fresh sybil keys costs one ``eth_call`` each and no unbounded memory.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from web3 import Web3

from chain.abi import load_abi
from chain.access import ChainAccess, ChainUnavailable
from chain.deploy import CONTENT_NODE, Deployment, service_type_id, service_type_name
from chain.oracle import Stake
from p2p.abc import TaskStatus
from p2p.host import eth_address_of_peer
from p2p.keys import PeerId

log = logging.getLogger(__name__)


@dataclass
class OracleStats:
    hits: int = 0
    misses: int = 0
    clears: int = 0
    reorgs: int = 0
    rpc_failures: int = 0
    wrong_chain: int = 0


def peer_in_multiaddrs(addrs: list[str], delegate: str) -> PeerId | None:
    """The peer ID named by ``/p2p/...`` in a provider's registered multiaddrs, if its
    key is the delegate's (else a registration could point at someone else's node)."""
    for addr in addrs:
        if "/p2p/" not in addr:
            continue
        candidate = PeerId(addr.rsplit("/p2p/", 1)[1].split("/", 1)[0])
        found = eth_address_of_peer(candidate)
        if found is not None and found.lower() == delegate.lower():
            return candidate
    return None


class WrongChain(Exception):
    """The RPC endpoint is not the chain the deployment file describes."""


class ChainStakeOracle:
    """``await nursery.start(oracle.run)``; then ``await oracle.stake_of(peer)``."""

    def __init__(
        self,
        access: ChainAccess,
        deployment: Deployment,
        *,
        poll_interval: float = 1.0,
        on_unstaked: Callable[[PeerId], None] | None = None,
        max_cached: int = 65536,
    ) -> None:
        self.access = access
        self.deployment = deployment
        self.poll_interval = poll_interval
        self.on_unstaked = on_unstaked
        self.stats = OracleStats()
        w3 = access.w3
        self._registry = w3.eth.contract(
            address=deployment.registry, abi=load_abi("ServiceProviderRegistry")
        )
        self._types = w3.eth.contract(
            address=deployment.service_types, abi=load_abi("ServiceTypeManager")
        )
        self.max_cached = max_cached
        self._cache: OrderedDict[PeerId, Stake | None] = OrderedDict()
        self._head: tuple[int, bytes] | None = None
        self._generation = 0  # bumped at every clear
        # service type -> (exists, minimum stake); one eth_call per miss, not two
        self._type_bounds: dict[bytes, tuple[bool, int]] = {}
        self._members: list[PeerId] | None = None
        self.registered_addrs: dict[PeerId, list[str]] = {}
        self._recheck: set[PeerId] = set()  # accepted peers whose answer was cleared
        self._checked = False  # chain id and registry code verified since the last failure
        self.available = True  # the last RPC round trip worked
        self.problem: str | None = None  # why nobody is accepted right now, if so
        self.head_changed = trio.Event()  # set whenever the oracle processed a new head
        self.polled = trio.Event()  # set after every poll attempt, failed ones too

    @property
    def head(self) -> int | None:
        return None if self._head is None else self._head[0]

    async def stake_of(self, peer: PeerId) -> Stake | None:
        if self.problem is not None:
            return None
        if peer in self._cache:
            self.stats.hits += 1
            self._cache.move_to_end(peer)
            return self._cache[peer]
        self.stats.misses += 1
        address = eth_address_of_peer(peer)
        if address is None:
            self._remember(peer, None)  # not a secp256k1 peer: cannot be registered
            return None
        if not self.available:
            return None  # the RPC is down: unknown counts as unstaked, asked again later
        generation = self._generation
        try:
            stake = await self.access.run(lambda w3: self._read_stake(w3, address))
        except ChainUnavailable:
            self.stats.rpc_failures += 1
            self.available = False
            return None
        if generation == self._generation:  # else it may predate a change: answer, don't keep
            self._remember(peer, stake)
        if peer in self._recheck and (stake is None or not stake.sufficient):
            # it was accepted before the last change and a re-check is under way:
            # whoever asked must not see "unstaked" while its records still stand
            self._recheck.discard(peer)
            if self.on_unstaked is not None:
                self.on_unstaked(peer)
        return stake

    def _remember(self, peer: PeerId, stake: Stake | None) -> None:
        self._cache[peer] = stake
        if len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)

    async def content_nodes(self, *, fresh: bool = False) -> list[PeerId]:
        """Staked content nodes whose registered multiaddrs name their peer ID.

        Cached like stakes: read once, cleared with every registry change
        (``fresh`` reads the chain now, for a caller that suspects the cache lags).
        Also fills ``registered_addrs`` (what each one registered, for dialing).
        """
        if self.problem is not None:
            return []
        if self._members is not None and not fresh:
            return list(self._members)
        if not self.available:
            return []
        generation = self._generation
        try:
            found = await self.access.run(self._read_members)
        except ChainUnavailable:
            self.stats.rpc_failures += 1
            self.available = False
            return []
        if generation == self._generation:
            self._members = [peer for peer, _ in found]
            self.registered_addrs = {peer: addrs for peer, addrs in found}
        return [peer for peer, _ in found]

    def _read_members(self, w3: Web3) -> list[tuple[PeerId, list[str]]]:
        delegates = self._registry.functions.providersOfType(service_type_id(CONTENT_NODE)).call()
        found = []
        for delegate in delegates:
            stake, addrs = self._read_provider(w3, delegate)
            if stake is None or not stake.sufficient or stake.service_type != CONTENT_NODE:
                continue
            peer = peer_in_multiaddrs(addrs, delegate)
            if peer is not None:
                found.append((peer, [a for a in addrs if a.split("/p2p/")[0]]))
        return found

    def _read_stakes(self, peers: list[PeerId], w3: Web3) -> list[Stake | None]:
        addresses = [eth_address_of_peer(p) for p in peers]
        return [None if a is None else self._read_stake(w3, a) for a in addresses]

    def _read_stake(self, w3: Web3, address: str) -> Stake | None:
        return self._read_provider(w3, address)[0]

    def _read_provider(self, w3: Web3, address: str) -> tuple[Stake | None, list[str]]:
        owner, type_id, own, delegated, active, addrs = self._registry.functions.getProvider(
            address
        ).call()
        if int(owner, 16) == 0:
            return None, []
        types = self._type_bounds  # replaced (not mutated) at every clear
        bounds = types.get(type_id)
        if bounds is None:
            exists, minimum, _maximum = self._types.functions.getServiceType(type_id).call()
            bounds = types[type_id] = (exists, minimum)
        exists, minimum = bounds
        amount = own + delegated if active and exists else 0
        return Stake(service_type_name(type_id), amount, minimum), list(addrs)

    # -- watching the chain ---------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        backoff = self.poll_interval
        started = False
        while True:
            try:
                await self.poll()
                backoff = self.poll_interval
            except ChainUnavailable as exc:
                self.stats.rpc_failures += 1
                self.available = False
                self._checked = False
                log.warning("stake oracle: %s; retrying in %.1f s", exc, backoff)
                backoff = min(backoff * 2, 30.0)
            except WrongChain as exc:
                self.stats.wrong_chain += 1
                if self.problem != str(exc):
                    log.error("stake oracle: %s; accepting nobody until this is fixed", exc)
                self.problem = str(exc)
                self._drop_everyone()
                backoff = min(backoff * 2, 30.0)
            self.polled.set()
            self.polled = trio.Event()
            if not started:
                task_status.started()
                started = True
            await trio.sleep(backoff)

    async def check_chain(self) -> None:
        """Raise WrongChain unless the endpoint is the deployment's chain."""
        chain_id, code = await self.access.run(
            lambda w3: (w3.eth.chain_id, w3.eth.get_code(self.deployment.registry))
        )
        if chain_id != self.deployment.chain_id:
            raise WrongChain(
                f"the deployment is for chain id {self.deployment.chain_id}, "
                f"the RPC endpoint serves chain id {chain_id}"
            )
        if not code:
            raise WrongChain(f"no registry contract at {self.deployment.registry} on this chain")

    async def poll(self) -> None:
        """Look at the head once; clear and re-check if the registry changed."""
        if not self._checked:
            await self.check_chain()
            self._checked = True
            if self.problem is not None:
                log.info("stake oracle: chain is right again")
            self.problem = None
        self.available = True
        await self._run_rechecks()  # left over from a poll the RPC broke off
        previous = self._head
        head, changed = await self.access.run(lambda w3: self._scan(w3, previous))
        self._head = head
        if changed:
            await self._clear_and_recheck()
        if previous is None or head != previous:
            self.head_changed.set()
            self.head_changed = trio.Event()

    def _scan(self, w3: Web3, previous: tuple[int, bytes] | None) -> tuple[tuple[int, bytes], bool]:
        block: Any = w3.eth.get_block("latest")
        head = (int(block["number"]), bytes(block["hash"]))
        if previous is None:
            return head, False
        last_number, last_hash = previous
        if head[0] < last_number:
            self.stats.reorgs += 1
            return head, True
        seen_again: Any = w3.eth.get_block(last_number)
        if bytes(seen_again["hash"]) != last_hash:
            self.stats.reorgs += 1
            return head, True
        if head[0] == last_number:
            return head, False
        logs = w3.eth.get_logs(
            {
                "fromBlock": last_number + 1,
                "toBlock": head[0],
                "address": [self.deployment.registry, self.deployment.service_types],
            }
        )
        return head, bool(logs)

    async def _clear_and_recheck(self) -> None:
        """Forget every answer; re-read the peers we accepted, in batches, and report
        those that are no longer staked. An RPC failure midway leaves the rest for
        the next successful poll."""
        self.stats.clears += 1
        self._generation += 1
        self._type_bounds = {}
        self._members = None
        self._recheck.update(p for p, s in self._cache.items() if s is not None and s.sufficient)
        self._cache.clear()
        await self._run_rechecks()

    async def _run_rechecks(self) -> None:
        while self._recheck:
            batch = list(self._recheck)[:64]
            stakes = await self.access.run(functools.partial(self._read_stakes, batch))
            for peer, stake in zip(batch, stakes, strict=True):
                self._recheck.discard(peer)
                self._remember(peer, stake)
                if (stake is None or not stake.sufficient) and self.on_unstaked is not None:
                    self.on_unstaked(peer)

    def _drop_everyone(self) -> None:
        staked = [p for p, s in self._cache.items() if s is not None and s.sufficient]
        staked += list(self._recheck)
        self._cache.clear()
        self._recheck.clear()
        self._generation += 1
        self._type_bounds = {}
        self._members = None
        if self.on_unstaked is not None:
            for peer in staked:
                self.on_unstaked(peer)
