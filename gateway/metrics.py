"""``/metrics``: Prometheus text for one node, from a registry of its own.

Each node has its own :class:`CollectorRegistry` (tests and the simnet run many
nodes in one process, so the global registry would mix them). Node counters
are read at scrape time by :class:`NodeCollector` (with the identity role's
accounts and relay counters on a node that has it); the gateway's own request
counters live in :class:`GatewayMetrics`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway.health import repair_status

if TYPE_CHECKING:
    from identity.service import IdentityService
    from node import Node

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _count(value: Any) -> int:
    """A queue length from whatever the node exposes: a number or a collection."""
    if isinstance(value, int | float):
        return int(value)
    try:
        return len(value)
    except TypeError:
        return 0


def _counted_by(name: str, doc: str, label: str, counts: Mapping[str, int]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, n in sorted(counts.items()):
        family.add_metric([value], n)
    return family


class NodeCollector:
    """Reads a node's counters on each scrape."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterable[Metric]:
        node = self.node
        bs = node.bitswap.stats
        for name, doc, value in (
            ("blocks_served", "Blocks sent to peers over Bitswap.", bs.blocks_served),
            ("bytes_served", "Block bytes sent to peers over Bitswap.", bs.bytes_served),
            ("blocks_fetched", "Verified blocks received over Bitswap.", bs.blocks_fetched),
            ("bytes_fetched", "Verified block bytes received over Bitswap.", bs.bytes_fetched),
            ("bad_blocks", "Blocks refused: unasked for or not matching their CID.", bs.bad_blocks),
        ):
            yield CounterMetricFamily(f"coliving_bitswap_{name}", doc, value=value)
        yield GaugeMetricFamily(
            "coliving_peers_connected",
            "Peers with an open connection.",
            value=len(node.host.connected_peers()),
        )
        yield GaugeMetricFamily(
            "coliving_peers_banned",
            "Peers banned for misbehaving: their streams are reset, their connections closed.",
            value=len(node.conduct.bans),
        )
        yield _counted_by(
            "coliving_peer_offences",
            "Protocol violations by peers (malformed messages, wrong blocks), by protocol.",
            "protocol",
            node.conduct.offences,
        )
        yield CounterMetricFamily(
            "coliving_gossip_accepted",
            "Announcements the validator accepted.",
            value=node.validator.accepted,
        )
        yield _counted_by(
            "coliving_gossip_rejected",
            "Announcements the validator rejected, by reason.",
            "reason",
            node.validator.rejected,
        )
        stats = node.store.stats()
        yield GaugeMetricFamily("coliving_pins", "Pinned root CIDs.", value=stats.pins)
        yield GaugeMetricFamily("coliving_store_blocks", "Blocks stored.", value=stats.blocks)
        yield GaugeMetricFamily(
            "coliving_store_bytes", "Bytes of block data stored.", value=stats.bytes_used
        )
        usage = node.store.usage()
        yield GaugeMetricFamily(
            "coliving_store_unpinned_bytes",
            "Bytes of blocks no pin reaches: the cache a collection keeps under cache_bytes.",
            value=usage.unpinned_bytes,
        )
        yield CounterMetricFamily(
            "coliving_store_collected_bytes",
            "Bytes of unpinned blocks the node's collections removed.",
            value=node.swept.removed_bytes,
        )
        yield GaugeMetricFamily(
            "coliving_repair_queue",
            "Owned CIDs not yet held here (replication backlog, as of the last repair round).",
            value=_count(getattr(repair_status(node), "backlog", 0)),
        )
        if node.identity is not None:
            yield from _identity_metrics(node.identity)


def _identity_metrics(service: IdentityService) -> Iterable[Metric]:
    """The identity role's counters: accounts, log-ins, and the gas relay."""
    accounts = service.accounts
    yield CounterMetricFamily(
        "coliving_identity_signups",
        "Accounts registered (POST /identity/user).",
        value=accounts.signups,
    )
    yield CounterMetricFamily(
        "coliving_identity_auth_saved",
        "Auth documents stored (sign-ups and password resets), password changes apart.",
        value=accounts.auths_saved,
    )
    yield CounterMetricFamily(
        "coliving_identity_password_changes",
        "Auth documents replaced by a password change (with oldLookupKey).",
        value=accounts.password_changes,
    )
    yield _counted_by(
        "coliving_identity_logins",
        "Log-in attempts (GET /identity/authentication and its check), by outcome.",
        "outcome",
        accounts.logins,
    )
    yield _counted_by(
        "coliving_identity_rate_limited",
        "Identity requests refused by a token bucket, by bucket.",
        "kind",
        accounts.rate_limited,
    )
    yield _counted_by(
        "coliving_identity_refused",
        "Identity requests refused (bad input, taken, not found), by reason.",
        "reason",
        accounts.refused,
    )
    relay = service.relay
    if relay is None:
        return
    yield CounterMetricFamily(
        "coliving_relay_relayed",
        "EntityManager actions the gas relay sent and saw mined.",
        value=relay.relayed,
    )
    yield _counted_by(
        "coliving_relay_refused",
        "Relay requests refused (malformed, replay, wrong contract, chain), by reason.",
        "reason",
        relay.refused,
    )
    yield _counted_by(
        "coliving_relay_rate_limited",
        "Relay requests refused by a token bucket, by kind (ip or wallet).",
        "kind",
        relay.rate_limited,
    )


class GatewayMetrics:
    """The gateway's own counters, plus the node's, in one per-node registry."""

    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(node))
        self.requests = Counter(
            "coliving_gateway_requests",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.bytes_sent = Counter(
            "coliving_gateway_bytes_sent",
            "Content bytes sent in HTTP responses.",
            registry=self.registry,
        )
        self.first_byte = Histogram(
            "coliving_gateway_first_byte_seconds",
            "From a content request to its first body byte.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
