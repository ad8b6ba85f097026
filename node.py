"""One Coliving node, composed from its parts; and the light client.

A :class:`Node` owns a host, gossip, a store and the protocol services, each
started with ``nursery.start`` so that ``await nursery.start(node.run)``
returns once the node is listening and subscribed. A :class:`Client` is a
light libp2p peer: it uploads to a node and fetches by CID over Bitswap from
whichever peers hold the content, but stores nothing for others.

The ``coliving`` console command is :func:`main` (see cli/app.py).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import math
import random
import tempfile
import time
import tomllib
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
import trio.lowlevel

from chain.oracle import AllowlistOracle, StakeOracle, WatchingOracle, is_staked_content_node
from p2p.abc import GossipLike, HostLike, Stream, StreamError, StreamHandler, TaskStatus
from p2p.gossip import Gossip, GossipConfig, GossipMessage
from p2p.host import AddressError, DialError, Host, HostConfig, peer_id_bytes, peer_id_from_bytes
from p2p.keys import NodeKey, PeerId
from protocols import announce, query
from protocols import upload as upload_proto
from protocols.bitswap import Bitswap, BitswapConfig, Fetch
from protocols.cid import CID
from protocols.conduct import MALFORMED, Conduct
from protocols.errors import DecodingError, NotFoundError, ProtocolError, is_offence
from protocols.replication import ReplicationConfig, Replicator
from store.blockstore import BlockStore, Collected, Collection, StoreError

if TYPE_CHECKING:
    from chain.access import ChainAccess
    from discovery.service import DiscoveryConfig, DiscoveryService, MusicChain
    from gateway import Gateway
    from identity.accounts import IdentityConfig
    from identity.service import IdentityService

log = logging.getLogger("coliving.node")
DIAL_BACKOFF = 30.0  # seconds before a member that could not be dialed is tried again
PROBE_TIMEOUT = 10.0  # a connected member that cannot open a stream in this long is gone
# (not less: on a loaded host a live peer can take seconds, and dropping it costs a redial)
GOSSIP_DEGREE = 6  # staked members a node keeps connected (gossipsub's mesh degree D)
MISBEHAVIOUR_KEPT = 1024  # peers whose last ban's reason is kept (simnet reports read them)
RECENT_ROOTS = 4096  # fetched roots remembered, newest first, for the cache a collection keeps
RELAY_RPC_SLOTS = 8  # concurrent chain calls of the gas relay on an RPC chain


class ConfigError(ValueError):
    """A configuration value or file is wrong; the message names it."""


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node is told. Loadable from ``<data_dir>/node.toml``."""

    data_dir: Path
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    allow_all: bool = False
    announce_interval: float = 1.0
    announce_ttl: int = 3600
    # the stake oracle: None = the allowlist above; else a JSON-RPC URL of the
    # chain the deployment file (contract addresses) describes
    rpc: str | None = None
    deployment: str | None = None
    chain_poll_interval: float = 1.0
    # placement: each CID is kept on this many staked content nodes
    replicas: int = 3
    repair_interval: float = 10.0
    liveness_interval: float = 30.0  # how often a connected member is probed
    bitswap: BitswapConfig = field(default_factory=BitswapConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    # HTTP gateway (files by CID, web player, /health, /metrics) on "HOST:PORT"
    # (port 0: any free one, see Node.gateway_url); None: no gateway
    gateway: str | None = None
    # Blocks no pin reaches (gateway streams, range reads, unpinned fetches)
    # are a cache. Every gc_interval seconds, if they take more than
    # cache_bytes, a collection removes them but for the files fetched last,
    # newest first, up to half of cache_bytes.
    cache_bytes: int = 1 << 30
    gc_interval: float = 30.0
    # the discovery role (index the chain's music data, answer queries, count
    # plays): None = a content node only; ``[discovery]`` in node.toml
    discovery: DiscoveryConfig | None = None
    # the identity role (hedgehog accounts and the gas relay on the gateway's
    # /identity/): None = none; ``[identity]`` in node.toml; needs the discovery role
    identity: IdentityConfig | None = None

    def __post_init__(self) -> None:
        if not self.listen:
            raise ConfigError("listen: give at least one multiaddr")
        if self.announce_interval <= 0:
            raise ConfigError("announce_interval must be positive")
        if not announce.MIN_TTL <= self.announce_ttl <= announce.MAX_TTL:
            raise ConfigError(
                f"announce_ttl must be in [{announce.MIN_TTL}, {announce.MAX_TTL}] seconds"
            )
        if self.rpc is not None:
            if self.rpc == "embedded":
                raise ConfigError(
                    "rpc: the embedded chain lives inside one process; use `coliving devnet` "
                    "for it, or give a node the URL of a JSON-RPC endpoint (anvil, geth...)"
                )
            if not self.rpc.startswith(("http://", "https://")):
                raise ConfigError(f"rpc must be an http(s) URL, not {self.rpc!r}")
            if self.deployment is None:
                raise ConfigError(
                    "rpc needs deployment: the JSON file naming the contract addresses "
                    "(written by `coliving chain deploy`)"
                )
        if self.chain_poll_interval <= 0:
            raise ConfigError("chain_poll_interval must be positive")
        if self.gateway is not None:
            from gateway.server import GatewayConfigError, parse_bind

            try:
                parse_bind(self.gateway)
            except GatewayConfigError as exc:
                raise ConfigError(str(exc)) from None
        if not 1 <= self.replicas <= 64:
            raise ConfigError("replicas must be between 1 and 64")
        if self.repair_interval <= 0:
            raise ConfigError("repair_interval must be positive")
        if not isinstance(self.cache_bytes, int) or self.cache_bytes < 0:
            raise ConfigError("cache_bytes must be a whole number of bytes, 0 or more")
        if self.gc_interval <= 0:
            raise ConfigError("gc_interval must be positive")
        if self.identity is not None:
            if self.discovery is None:
                raise ConfigError(
                    "the identity role needs the discovery role on the same node (its "
                    "accounts live in the index database and its relay sends to the chain "
                    "the index reads): add [discovery] to node.toml"
                )
            key_file = self.identity.relay_key_file
            if key_file is not None and not key_file.is_file():
                raise ConfigError(f"[identity] relay_key_file {key_file} is not a file")

    @classmethod
    def load(cls, data_dir: Path, **overrides: Any) -> NodeConfig:
        """Defaults, then ``node.toml`` in the data directory, then ``overrides``."""
        values: dict[str, Any] = {}
        path = data_dir / "node.toml"
        if path.exists():
            try:
                values = tomllib.loads(path.read_text())
            except (tomllib.TOMLDecodeError, OSError) as exc:
                raise ConfigError(f"{path}: {exc}") from None
            known = {f.name for f in fields(cls)} - {"data_dir", "bitswap", "gossip"}
            unknown = set(values) - known
            if unknown:
                raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
            for name in ("listen", "bootstrap", "allow"):
                if name in values:
                    if not isinstance(values[name], list) or not all(
                        isinstance(v, str) for v in values[name]
                    ):
                        raise ConfigError(f"{path}: {name} must be a list of strings")
                    values[name] = tuple(values[name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "cache_bytes" in values:
            values["cache_bytes"] = parse_size(values["cache_bytes"], "cache_bytes")
        if isinstance(values.get("discovery"), dict | bool):
            values["discovery"] = discovery_config(values["discovery"], path)
        if isinstance(values.get("identity"), dict | bool):
            values["identity"] = identity_config(values["identity"], path)
        try:
            return cls(data_dir=data_dir, **values)
        except TypeError as exc:
            raise ConfigError(f"{path}: {exc}") from None


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_UNITS |= {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_size(value: object, name: str) -> int:
    """A number of bytes: an int, or text such as "512MiB" or "2 GB"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        number = value.strip().rstrip("BbIiKkMmGgTt ")
        unit = value.strip()[len(number) :].strip().lower()
        try:
            amount = float(number)
        except ValueError:
            amount = -1.0
        if unit in _SIZE_UNITS and 0 <= amount < math.inf:
            return int(amount * _SIZE_UNITS[unit])
    raise ConfigError(f"{name}: {value!r} is not a size (say 1073741824, 512MiB or 2GB)")


def discovery_config(raw: dict[str, Any] | bool, where: Path) -> DiscoveryConfig | None:
    """``[discovery]`` of node.toml (or ``true`` for the defaults) as a DiscoveryConfig."""
    from discovery.indexer import IndexerConfig
    from discovery.listens import ListenConfig
    from discovery.service import DiscoveryConfig

    if raw is False:
        return None
    table = {} if raw is True else dict(raw)
    listens = table.pop("listens", {})
    if not isinstance(listens, dict):
        raise ConfigError(f"{where}: [discovery.listens] must be a table")
    indexer_keys = {f.name for f in fields(IndexerConfig)}
    own_keys = {"trending_interval"}
    if unknown := sorted(set(table) - indexer_keys - own_keys):
        raise ConfigError(
            f"{where}: unknown keys in [discovery]: {unknown}; "
            f"known: {sorted(indexer_keys | own_keys | {'listens'})}"
        )
    listen_keys = {f.name for f in fields(ListenConfig)}
    if unknown := sorted(set(listens) - listen_keys):
        raise ConfigError(
            f"{where}: unknown keys in [discovery.listens]: {unknown}; known: {sorted(listen_keys)}"
        )
    try:
        indexer = IndexerConfig(**{k: v for k, v in table.items() if k in indexer_keys})
        return DiscoveryConfig(
            indexer=indexer,
            listens=ListenConfig(**listens),
            **{k: v for k, v in table.items() if k in own_keys},
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: [discovery]: {exc}") from None


def identity_config(raw: dict[str, Any] | bool, where: Path) -> IdentityConfig | None:
    """``[identity]`` of node.toml (or ``true`` for the defaults, without a relay) as an
    IdentityConfig; a relative ``relay_key_file`` is taken from node.toml's directory."""
    from identity.accounts import IdentityConfig
    from identity.relay import RelayConfig

    if raw is False:
        return None
    table = {} if raw is True else dict(raw)
    relay = table.pop("relay", {})
    if not isinstance(relay, dict):
        raise ConfigError(f"{where}: [identity.relay] must be a table")
    own_keys = {f.name for f in fields(IdentityConfig)} - {"relay"}
    if unknown := sorted(set(table) - own_keys):
        raise ConfigError(
            f"{where}: unknown keys in [identity]: {unknown}; known: {sorted(own_keys | {'relay'})}"
        )
    relay_keys = {f.name for f in fields(RelayConfig)}
    if unknown := sorted(set(relay) - relay_keys):
        raise ConfigError(
            f"{where}: unknown keys in [identity.relay]: {unknown}; known: {sorted(relay_keys)}"
        )
    if "relay_key_file" in table:
        key_file = table["relay_key_file"]
        if not isinstance(key_file, str) or not key_file:
            raise ConfigError(
                f"{where}: [identity] relay_key_file must be the path of a file holding the "
                "relay wallet's hex private key (never the key itself)"
            )
        table["relay_key_file"] = where.parent / Path(key_file).expanduser()
    try:
        relay_config = RelayConfig(**relay)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: [identity.relay]: {exc}") from None
    try:
        return IdentityConfig(relay=relay_config, **table)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: [identity]: {exc}") from None


def _music_chain_from_config(config: NodeConfig) -> MusicChain:
    """The data contract of the chain the config names (rpc + deployment)."""
    from chain.deploy import Deployment
    from chain.entity import EntityReader
    from discovery.service import MusicChain

    if config.rpc is None or config.deployment is None:
        raise ConfigError(
            "the discovery role indexes a chain: give rpc and deployment (or run "
            "`coliving devnet`, which starts one on the embedded chain)"
        )
    path = Path(config.deployment).expanduser()
    try:
        deployment = Deployment.from_json(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"deployment {path}: {exc}") from None
    if deployment.entity_manager is None:
        raise ConfigError(f"deployment {path} names no EntityManager contract")
    return MusicChain(
        source=EntityReader.for_rpc(config.rpc, deployment),
        chain_id=deployment.chain_id,
        contract=deployment.entity_manager,
        start_block=deployment.entity_manager_block,
    )


def _oracle_from_config(config: NodeConfig, me: PeerId) -> StakeOracle:
    if config.rpc is None:
        return AllowlistOracle([PeerId(p) for p in config.allow] + [me], allow_all=config.allow_all)
    from chain.access import ChainAccess, ChainConfig, connect
    from chain.deploy import Deployment
    from chain.stake import ChainStakeOracle

    assert config.deployment is not None
    path = Path(config.deployment).expanduser()
    try:
        deployment = Deployment.from_json(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"deployment {path}: {exc}") from None
    access = ChainAccess(connect(ChainConfig(rpc=config.rpc)))
    return ChainStakeOracle(access, deployment, poll_interval=config.chain_poll_interval)


class _Peer:
    """Shared plumbing of nodes and clients: host, bitswap, provider lookup."""

    host: HostLike
    bitswap: Bitswap
    store: BlockStore

    async def connect(self, addr: str) -> PeerId:
        return await self.host.connect(addr)

    async def ask(
        self, peer: PeerId, op: str, *, within: float = query.REPLY_TIMEOUT, **args: Any
    ) -> dict[str, Any]:
        """One query to ``peer``; its reply within ``within`` seconds or TooSlowError."""
        stream = await self.host.open_stream(peer, [query.PROTOCOL])
        with trio.fail_after(within):
            return await query.ask(stream, op, **args)

    async def providers_from(self, peer: PeerId, cid: CID) -> list[PeerId]:
        """Ask ``peer`` who holds ``cid``; learn their addresses; dial them."""
        try:
            reply = await self.ask(peer, "providers", cid=cid)
        except (StreamError, ProtocolError, DecodingError, trio.TooSlowError) as exc:
            log.info("providers query to %s failed: %s", peer, exc)
            return []
        found: list[PeerId] = []
        for entry in reply.get("providers", [])[:64]:
            if not isinstance(entry, dict) or not isinstance(entry.get("peer"), str):
                continue
            provider = PeerId(entry["peer"])
            addrs = [a for a in entry.get("addrs", []) if isinstance(a, str)][:8]
            if provider == self.host.peer_id or provider in self.bitswap.conduct:
                continue
            if self.host.is_connected(provider) or await self._dial_any(provider, addrs):
                found.append(provider)
        return found

    async def _dial_any(self, peer: PeerId, addrs: Sequence[str]) -> bool:
        for addr in addrs:
            full = addr if "/p2p/" in addr else f"{addr}/p2p/{peer}"
            try:
                await self.host.connect(full)
                return True
            except (DialError, AddressError) as exc:
                log.info("cannot reach provider %s at %s: %s", peer, addr, exc)
        return False


class Node(_Peer):
    """A content node: stores, serves, announces. ``await nursery.start(node.run)``."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        key: NodeKey | None = None,
        oracle: StakeOracle | None = None,
        host: HostLike | None = None,
        gossip: GossipLike | None = None,
        store: BlockStore | None = None,
        music: MusicChain | None = None,
    ) -> None:
        """``host``, ``gossip`` and ``store`` default to libp2p's and LMDB in
        ``data_dir``; simnet.virtual passes p2p.memory's (a host with its gossip).
        With ``config.discovery`` the node also takes the discovery role, on
        the data contract of ``music`` (default: the one config.rpc names);
        with ``config.identity`` also the identity role, on the same chain."""
        self.config = config
        self.key = key or NodeKey.load_or_create(config.data_dir)
        self.store = store if store is not None else BlockStore.open(config.data_dir / "store")
        if host is None:
            host = Host(self.key, HostConfig(listen=config.listen, bootstrap=config.bootstrap))
        if gossip is None:
            if not isinstance(host, Host):
                raise TypeError("a host other than p2p.host.Host needs its own gossip")
            gossip = Gossip(host, config.gossip)
        self.host: HostLike = host
        self.peer_id = self.host.peer_id
        self.oracle: StakeOracle = oracle or _oracle_from_config(config, self.peer_id)
        if isinstance(self.oracle, WatchingOracle) and self.oracle.on_unstaked is None:
            self.oracle.on_unstaked = self._peer_unstaked
        self.unstaked_dropped = 0
        self.gossip: GossipLike = gossip
        self.validator = announce.AnnounceValidator(
            self.oracle, on_malformed=functools.partial(self._malformed, "announce")
        )
        # what each peer did wrong, on every protocol; a banned peer is refused by all
        self.conduct = Conduct()
        self.conduct.on_ban.append(self._banned)
        if isinstance(self.host, Host):
            self.host.refuse = self.conduct.__contains__
        self.bitswap = Bitswap(self.host, self.store, config=config.bitswap, conduct=self.conduct)
        self.replicator = Replicator(
            self,
            ReplicationConfig(replicas=config.replicas, interval=config.repair_interval),
        )
        self.uploads = upload_proto.UploadService(
            self.store, self._uploaded, on_malformed=functools.partial(self._malformed, "upload")
        )
        self.announcer = announce.Announcer(
            self._publish_announcement,
            self.host.addrs,
            lambda: [p.cid for p in self.store.pins()],
            interval=config.announce_interval,
            ttl=config.announce_ttl,
        )
        # why each peer was last banned, the last MISBEHAVIOUR_KEPT peers
        self.misbehaviour: OrderedDict[PeerId, str] = OrderedDict()
        self._dial_failed: dict[PeerId, float] = {}
        self._probed: dict[PeerId, float] = {}
        self.announcements_received = 0
        self.announced = trio.Event()  # set at every accepted announcement (tests wait on it)
        self.gateway: Gateway | None = None  # started by run() when config.gateway is set
        # fetched roots, newest last; kept in the store when the node stops
        self._recent = OrderedDict((cid, None) for cid in self.store.recent()[-RECENT_ROOTS:])
        self.collections: list[Collected] = []  # the last few (tests read them)
        self.swept = Collected()  # every collection's removals added up (for /metrics)
        self.collected = trio.Event()  # set after every collection (tests wait on it)
        self._collecting = trio.Lock()
        self.discovery: DiscoveryService | None = None
        if config.discovery is not None:
            from discovery.service import DiscoveryService, open_index

            self.discovery = DiscoveryService(
                open_index(config.data_dir),
                music if music is not None else _music_chain_from_config(config),
                gossip=self.gossip,
                oracle=self.oracle,
                config=config.discovery,
                stream_base=lambda: self.gateway_url,
                on_malformed=functools.partial(self._malformed, "listens"),
            )
        self.identity: IdentityService | None = None
        if config.identity is not None:
            self.identity = self._open_identity(config.identity)

    def _open_identity(self, config: IdentityConfig) -> IdentityService:
        """The identity role, in the discovery index's file, relaying to the chain and
        the EntityManager that the discovery role indexes."""
        from identity.service import IdentityService, RelayKeyError
        from store.identity import IdentityStoreError

        assert self.discovery is not None  # (NodeConfig requires it)
        music = self.discovery.chain
        try:
            return IdentityService.open(
                self.config.data_dir / "index.sqlite",  # (discovery.service.open_index's)
                config,
                handles=self.discovery.store,
                access=self._chain_access() if config.relay_key_file is not None else None,
                contract=music.contract,
                chain_id=music.chain_id,
            )
        except (RelayKeyError, IdentityStoreError) as exc:
            raise ConfigError(str(exc)) from None

    def _chain_access(self) -> ChainAccess | None:
        """The web3 for the relay's sends: on an RPC chain a pool of its own
        (RELAY_RPC_SLOTS concurrent estimates, sends and receipt polls, never
        queued behind the indexer's or the oracle's reads), else the discovery
        reader's (the embedded chain, tests), else the stake oracle's."""
        from chain.access import ChainAccess, ChainConfig

        assert self.discovery is not None
        if self.config.rpc is not None and self.config.rpc.startswith(("http://", "https://")):
            return ChainAccess.pool(ChainConfig(rpc=self.config.rpc), RELAY_RPC_SLOTS)
        for holder in (self.discovery.chain.source, self.oracle):
            access = getattr(holder, "access", None)
            if isinstance(access, ChainAccess):
                return access
        return None

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                if isinstance(self.oracle, WatchingOracle):
                    await nursery.start(self.oracle.run)
                await nursery.start(self.host.run)
                await nursery.start(self.gossip.run)
                self.gossip.set_validator(announce.TOPIC, self.validator)
                messages = await self.gossip.subscribe(announce.TOPIC)
                nursery.start_soon(self._consume_announcements, messages)
                await nursery.start(self.bitswap.run)
                self.host.set_handler(upload_proto.PROTOCOL, self._gated(self.uploads.handle))
                self.host.set_handler(query.PROTOCOL, self._gated(self._serve_query))
                await nursery.start(self.announcer.run)
                nursery.start_soon(self._expire_loop)
                await self.host.dial_bootstrap()
                await nursery.start(self.replicator.run)
                nursery.start_soon(self._keep_degree_loop)
                nursery.start_soon(self._collect_loop)
                if self.discovery is not None:
                    from protocols import discovery as discovery_proto

                    await nursery.start(self.discovery.run)
                    self.host.set_handler(
                        discovery_proto.PROTOCOL, self._gated(self._serve_discovery)
                    )
                if self.config.gateway is not None:
                    from gateway import Gateway, GatewayConfig

                    self.gateway = Gateway(self, GatewayConfig(bind=self.config.gateway))
                    await nursery.start(self.gateway.run)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._save_recent()
            self.store.close()
            if self.identity is not None:
                self.identity.close()
            if self.discovery is not None:
                self.discovery.close()

    def _save_recent(self) -> None:
        try:
            self.store.save_recent(list(self._recent))
        except StoreError as exc:  # (a full disk): the next start keeps no cache order
            log.warning("%s", exc)

    @property
    def gateway_url(self) -> str | None:
        """``http://host:port`` of the running gateway (None: no gateway)."""
        return None if self.gateway is None else self.gateway.url

    # -- content ------------------------------------------------------------

    async def add(self, chunks: AsyncIterable[bytes], *, name: str = "") -> CID:
        """Import a local file (as an upload from ourselves) and pin it."""
        from protocols.unixfs import FileImporter

        importer = FileImporter()
        session = self.store.begin_session(f"add {name!r}")
        try:
            async for chunk in chunks:
                self.store.put_many(importer.feed(chunk), session=session)
            root, tail = importer.finish()
            self.store.put_many(tail, session=session)
            self.store.pin(root, size=importer.size, name=name, session=session)
        except BaseException:
            self.store.end_session(session)
            raise
        await self._pinned(root)
        return root

    async def find_providers(self, cid: CID) -> list[PeerId]:
        """Holders of ``cid``: the provider index first, then our peers' answers."""
        found = [peer_id_from_bytes(raw) for raw in self.store.providers(cid)]
        found = [p for p in found if p != self.peer_id and p not in self.conduct]
        reachable = []
        for peer in found:
            if self.host.is_connected(peer) or await self._dial_any(
                peer, self.host.peer_addrs(peer)
            ):
                reachable.append(peer)
        if reachable:
            return reachable
        for peer in self.host.connected_peers():
            reachable += [p for p in await self.providers_from(peer, cid) if p not in reachable]
            if self.store.has(cid) or reachable:
                break
        return reachable

    async def fetch(
        self, cid: CID, *, pin: bool = True, name: str = "", start: int = 0, end: int | None = None
    ) -> Fetch:
        """A Fetch of ``cid`` (or of bytes [start, end) of it, never pinned), from
        this store where it holds the blocks and from the network for the rest;
        pinned here when done if ``pin`` and no range is asked."""
        ranged = start != 0 or end is not None
        providers = [] if self.store.is_pinned(cid) else await self.find_providers(cid)
        if not providers and not self.store.has(cid):
            raise NotFoundError(f"no provider of {cid} is known or reachable")
        pin_name = name if pin and not ranged and not self.store.is_pinned(cid) else None
        self._recent[cid] = None
        self._recent.move_to_end(cid)
        if len(self._recent) > RECENT_ROOTS:
            self._recent.popitem(last=False)
        return self.bitswap.fetch(cid, providers, pin_name=pin_name, start=start, end=end)

    # -- the store's cache --------------------------------------------------

    async def collect(self, *, force: bool = False) -> Collected | None:
        """Remove the blocks no pin reaches, but for those fetches in progress
        need and the files fetched last (newest first, up to half of
        cache_bytes). Without ``force``, only if they take more than cache_bytes.
        Runs in short steps, the node serving meanwhile."""
        async with self._collecting:  # (one at a time: the loop's, and any caller's)
            if not force and self.store.usage().unpinned_bytes <= self.config.cache_bytes:
                return None
            return await self._collect()

    async def _collect(self) -> Collected:
        collection = Collection(
            self.store,
            cache=list(reversed(self._recent)),
            cache_bytes=self.config.cache_bytes // 2,
            active=self.bitswap.active_roots,
        )
        started = time.perf_counter()
        with contextlib.closing(collection.steps()) as steps:  # (closed if cancelled)
            for _ in steps:
                await trio.lowlevel.checkpoint()
        done = collection.result
        log.info(
            "store collection: removed %d blocks (%.1f MiB) in %.0f ms; kept %d cached files "
            "(%.1f MiB)",
            done.removed_blocks,
            done.removed_bytes / 2**20,
            (time.perf_counter() - started) * 1000,
            done.cached_roots,
            done.cached_bytes / 2**20,
        )
        self._save_recent()  # (a crash loses only what was fetched since)
        self.collections = [*self.collections[-7:], done]
        self.swept.removed_blocks += done.removed_blocks
        self.swept.removed_bytes += done.removed_bytes
        self.collected.set()
        self.collected = trio.Event()
        return done

    async def _collect_loop(self) -> None:
        while True:
            await trio.sleep(self.config.gc_interval)
            try:
                await self.collect()
            except StoreError as exc:  # (the disk failed): the node serves on
                log.warning("%s", exc)

    async def _pinned(self, cid: CID) -> None:
        self.announcer.announce(cid)

    async def _uploaded(self, cid: CID) -> int:
        """An upload is pinned here: announce it, have the other owners replicate it
        before the uploader hears back; return the number of copies."""
        await self._pinned(cid)
        return await self.replicator.replicate(cid)

    # -- what the replicator needs (protocols.replication.ReplicaHost) ------

    def peer_bytes(self, peer: PeerId) -> bytes:
        return peer_id_bytes(peer)

    def peer_of_bytes(self, raw: bytes) -> PeerId:
        return peer_id_from_bytes(raw)

    async def reach(self, peers: Sequence[PeerId]) -> set[PeerId]:
        """Connected peers among ``peers``, dialing the others (a failed dial is not
        retried for DIAL_BACKOFF seconds)."""
        now = trio.current_time()
        registered = getattr(self.oracle, "registered_addrs", {})

        async def dial(peer: PeerId) -> None:
            addrs = [*self.host.peer_addrs(peer), *registered.get(peer, [])]
            if not addrs or not await self._dial_any(peer, addrs):
                self._dial_failed[peer] = trio.current_time()

        async def probe(peer: PeerId) -> None:
            # A connection can outlive its peer (a machine that lost its power or
            # its network sends no FIN): open a stream, or drop the connection.
            self._probed[peer] = now
            try:
                with trio.fail_after(PROBE_TIMEOUT):
                    stream = await self.host.open_stream(peer, [query.PROTOCOL])
                await stream.reset()
            except (StreamError, trio.TooSlowError):
                log.info("%s is connected but does not answer: disconnecting", peer)
                await self.host.disconnect(peer)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                if self.host.is_connected(peer):
                    if now - self._probed.get(peer, -math.inf) >= self.config.liveness_interval:
                        nursery.start_soon(probe, peer)
                    continue
                if peer in self.conduct:
                    continue  # (its connections are closed as they open)
                if now - self._dial_failed.get(peer, -math.inf) < DIAL_BACKOFF:
                    continue
                nursery.start_soon(dial, peer)
        return {p for p in peers if self.host.is_connected(p)}

    def is_connected(self, peer: PeerId) -> bool:
        return self.host.is_connected(peer)

    async def keep_degree(self, rng: random.Random) -> list[PeerId]:
        """Dial random registered members while this node has fewer than
        GOSSIP_DEGREE connections (the peers gossip can mesh with: bootstrap
        peers count too); the ones dialed.

        Stands in for py-libp2p's auto-connector (off, see p2p.host.HostConfig),
        which dials everyone it has heard of: here only staked members, and only
        as many as the gossip mesh needs. Without a chain (an allowlist) the
        bootstrap peers are the whole topology."""
        need = GOSSIP_DEGREE - len(self.host.connected_peers())
        if need <= 0:
            return []
        registered: dict[PeerId, list[str]] = getattr(self.oracle, "registered_addrs", {})
        members = sorted(p for p in registered if p != self.peer_id)
        now = trio.current_time()
        candidates = [
            p
            for p in members
            if not self.host.is_connected(p)
            and p not in self.conduct
            and now - self._dial_failed.get(p, -math.inf) >= DIAL_BACKOFF
        ]
        chosen = rng.sample(candidates, min(need, len(candidates)))
        await self.reach(chosen)
        return chosen

    async def _keep_degree_loop(self) -> None:
        rng = random.Random(self.peer_id)  # a node's choices repeat from run to run
        while True:
            await self.keep_degree(rng)
            await trio.sleep(self.config.repair_interval)

    def reannounce(self) -> None:
        for pin in self.store.pins():
            self.announcer.announce(pin.cid)

    async def pull(self, cid: CID, holders: Sequence[PeerId]) -> int:
        """Fetch ``cid`` from ``holders``, pin and announce it; its size."""
        fetch = self.bitswap.fetch(cid, holders, pin_name="")
        async for _ in fetch.leaves():
            pass
        await self._pinned(cid)
        return fetch.bytes

    async def _publish_announcement(self, data: bytes) -> None:
        await self.gossip.publish(announce.TOPIC, data)

    async def _consume_announcements(self, messages: AsyncIterator[GossipMessage]) -> None:
        async for message in messages:
            if message.origin == self.peer_id:
                continue
            try:
                ann = announce.decode(message.data)
            except DecodingError:
                continue  # the validator already refused it; defensive only
            if message.origin in self.conduct:
                continue  # its records went with its ban; they stay gone until it ends
            if not await is_staked_content_node(self.oracle, message.origin):
                # validated while staked, queued, and unstaked meanwhile: the
                # oracle already dropped this peer's records; don't bring them back
                continue
            self.store.add_providers(peer_id_bytes(message.origin), ann.roots, ttl=ann.ttl)
            try:
                self.host.add_addrs(message.origin, list(ann.addrs))
            except AddressError as exc:
                log.info("announcement from %s has a bad address: %s", message.origin, exc)
            self.announcements_received += 1
            self.announced.set()
            self.announced = trio.Event()

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(60)
            removed = self.store.expire_providers()
            if removed:
                log.debug("expired %d provider records", removed)

    def _peer_unstaked(self, peer: PeerId) -> None:
        """The oracle no longer accepts ``peer``: its provider records go now."""
        self.unstaked_dropped += self.store.expire_providers(peer=peer_id_bytes(peer))
        log.info("%s is no longer staked; its provider records are dropped", peer)
        self.replicator.poke()  # ownership moved

    def _banned(self, peer: PeerId, reason: str) -> None:
        self.misbehaviour[peer] = reason
        self.misbehaviour.move_to_end(peer)
        while len(self.misbehaviour) > MISBEHAVIOUR_KEPT:
            self.misbehaviour.popitem(last=False)
        self.store.expire_providers(peer=peer_id_bytes(peer))

    def _malformed(self, protocol: str, peer: PeerId, reason: str) -> None:
        self.conduct.offend(peer, protocol, reason, MALFORMED)

    def _gated(self, handler: StreamHandler) -> StreamHandler:
        """``handler``, for streams from peers not banned: a banned peer's are reset."""

        async def gated(stream: Stream) -> None:
            if stream.remote_peer in self.conduct:
                await stream.reset()
                return
            await handler(stream)

        return gated

    # -- queries ------------------------------------------------------------

    async def _serve_query(self, stream: Stream) -> None:
        requester = stream.remote_peer

        async def answer(op: str, args: dict[str, Any]) -> dict[str, Any]:
            if op == "replicate":
                await self.replicator.accept_replica(args["cid"], requester)
                return {"ok": True}
            return await self._answer(op, args)

        try:
            await query.serve(stream, answer)
        except DecodingError as exc:
            log.info("bad query from %s: %s", stream.remote_peer, exc)
            await stream.reset()
            if is_offence(exc):
                self._malformed("query", stream.remote_peer, f"malformed query: {exc}")

    async def _serve_discovery(self, stream: Stream) -> None:
        """``/coliving/discovery/1.0.0``: protocols.discovery.serve has reset the
        stream of a request that does not parse; here it counts against the peer."""
        assert self.discovery is not None
        try:
            await self.discovery.serve_stream(stream)
        except DecodingError as exc:
            log.info("bad discovery request from %s: %s", stream.remote_peer, exc)
            if is_offence(exc):
                self._malformed(
                    "discovery", stream.remote_peer, f"malformed discovery request: {exc}"
                )

    async def _answer(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op == "providers":
            cid: CID = args["cid"]
            entries = []
            if self.store.has(cid):
                entries.append({"peer": self.peer_id, "addrs": self.host.addrs()})
            for raw in self.store.providers(cid)[:32]:
                peer = peer_id_from_bytes(raw)
                if peer != self.peer_id:
                    entries.append({"peer": peer, "addrs": self.host.peer_addrs(peer)[:8]})
            return {"providers": entries}
        if op == "peers":
            return {
                "peers": [
                    {"peer": p, "addrs": self.host.peer_addrs(p)[:8]}
                    for p in self.host.connected_peers()
                ]
            }
        stats = self.store.stats()
        return {
            "peer": self.peer_id,
            "addrs": self.host.addrs(),
            "pins": stats.pins,
            "blocks": stats.blocks,
            "bytes": stats.bytes_used,
        }


class Client(_Peer):
    """A light peer: uploads to a node, fetches by CID. Not staked, serves nobody."""

    def __init__(self, *, data_dir: Path | None = None, key: NodeKey | None = None) -> None:
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="coliving-client-")
            data_dir = Path(self._tmp.name)
        self.store = BlockStore.open(data_dir / "store")
        self.key = key or NodeKey.generate()
        # a light peer: it asks nobody to Identify (9 ms off a cold fetch's first
        # byte, bench.transfer), since it hands out no one's addresses
        self.host = Host(self.key, HostConfig(listen=("/ip4/127.0.0.1/tcp/0",), identify=False))
        self.peer_id = self.host.peer_id
        self.bitswap = Bitswap(self.host, self.store)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.host.run)
                await nursery.start(self.bitswap.run)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self.store.close()
            if self._tmp is not None:
                self._tmp.cleanup()

    async def upload(
        self,
        node: PeerId,
        chunks: AsyncIterable[bytes],
        *,
        name: str = "",
        size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> upload_proto.Uploaded:
        stream = await self.host.open_stream(node, [upload_proto.PROTOCOL])
        try:
            return await upload_proto.upload(
                stream, chunks, name=name, size=size, progress=progress
            )
        except BaseException:
            await stream.reset()
            raise

    async def fetch(self, cid: CID, via: Sequence[PeerId]) -> Fetch:
        """Ask ``via`` nodes who holds ``cid`` and fetch from all holders at once."""
        providers: list[PeerId] = []
        for node in via:
            providers += [p for p in await self.providers_from(node, cid) if p not in providers]
        if not providers:
            raise NotFoundError(f"none of the nodes asked knows a holder of {cid}")
        return self.bitswap.fetch(cid, providers)


async def file_chunks(path: Path, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
    """Read a file in slices without blocking the trio loop for long."""
    async with await trio.open_file(path, "rb") as fh:
        while chunk := await fh.read(chunk_size):
            yield chunk


def now_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def freeze_startup_heap() -> None:
    """Leave the objects made by start-up (modules, classes, libp2p's tables) out
    of the cyclic garbage collector's full passes, which otherwise walk all of
    them: 65 ms a pass with libp2p loaded (about 98,000 objects), a stall that
    landed on fetches' first bytes. Call once per process, after the imports;
    garbage that already exists is collected first so nothing is pinned."""
    gc.collect()
    gc.freeze()


def main() -> None:
    from cli.app import run

    freeze_startup_heap()
    run()


if __name__ == "__main__":
    main()
