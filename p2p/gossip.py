"""Gossipsub on a Host, with parameters that do not drop messages silently.

py-libp2p 0.8.1's defaults lose most of a burst (LIBP2P-NOTES.md, pitfall 2):
a 120 s heartbeat, spam protection at 10 msg/s per topic (own publishes
included) and 32-entry queues. We heartbeat every second, turn its spam
protection off (our validator is the spam gate: it rejects anyone not staked)
and keep messages few and batched. Invalid messages count against the
forwarder's score, and a forwarder under the graylist threshold is ignored.

Messages are signed by their origin (strict signing), so ``origin`` handed to
validators and subscribers is authenticated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID as GOSSIPSUB_ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.score import ScoreParams, TopicScoreParams
from libp2p.tools.anyio_service import background_trio_service

from p2p.abc import GossipMessage, TaskStatus, Validator
from p2p.host import Host
from p2p.keys import PeerId

log = logging.getLogger(__name__)

__all__ = ["Gossip", "GossipConfig", "GossipMessage", "Validator"]


@dataclass(frozen=True)
class GossipConfig:
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    heartbeat_interval: int = 1
    max_message_size: int = 1 << 20
    invalid_message_weight: float = 10.0
    graylist_threshold: float = -100.0
    # All simnet/devnet peers share 127.0.0.1: IP-diversity rules would starve the mesh.
    eclipse_protection: bool = False
    # seconds before the gossip stream is opened to a peer that dialed us (see
    # Gossip._delay_inbound_hello)
    hello_inbound_after: float = 0.25


# how long the hello to a peer that dialed us waits for that peer's Identify
IDENTIFY_WAIT = 5.0


async def _messages(topic: str, sub: Any) -> AsyncIterator[GossipMessage]:
    async for msg in sub:
        yield GossipMessage(topic, PeerId(ID(msg.from_id).to_base58()), bytes(msg.data))


class Gossip:
    """Publish/subscribe over gossipsub. ``await nursery.start(gossip.run)``."""

    def __init__(self, host: Host, config: GossipConfig | None = None) -> None:
        self.config = cfg = config or GossipConfig()
        self._host = host
        # peers that dialed us and listed no gossipsub in Identify: not offered it
        self.not_offered: set[PeerId] = set()
        self.not_offered_changed = trio.Event()
        score = ScoreParams(
            p4_invalid_messages=TopicScoreParams(
                weight=cfg.invalid_message_weight, cap=1e9, decay=0.99
            ),
            graylist_threshold=cfg.graylist_threshold,
            publish_threshold=cfg.graylist_threshold,
        )
        self._router = GossipSub(
            protocols=[GOSSIPSUB_ID],
            degree=cfg.degree,
            degree_low=cfg.degree_low,
            degree_high=cfg.degree_high,
            heartbeat_interval=cfg.heartbeat_interval,
            heartbeat_initial_delay=0.1,
            score_params=score,
            spam_protection_enabled=False,
            eclipse_protection_enabled=cfg.eclipse_protection,
            max_pending_messages_per_peer=1000,
        )
        self._pubsub = Pubsub(
            host.libp2p_host,
            self._router,
            strict_signing=True,
            max_inbound_rpc_size=cfg.max_message_size,
        )
        if cfg.hello_inbound_after > 0:
            self._delay_inbound_hello(cfg.hello_inbound_after)

    def _delay_inbound_hello(self, seconds: float) -> None:
        """Open the gossip stream to a peer that dialed us a moment after it
        connected, as Identify (Host.later_if_inbound): a client that came for
        a block does not wait behind it, and one that leaves sooner is never
        offered it. Then only if Identify listed gossipsub, or did not answer:
        a light client speaks none, and py-libp2p would retry it for as long
        as it stays, logging an error each time. A node joining the mesh is
        the one dialing, so it is not delayed."""
        pubsub: Any = self._pubsub
        hello = pubsub._handle_new_peer_with_retry  # pubsub starts one per new peer
        host = self._host
        speaks = set(pubsub.protocols)

        async def hello_if_it_gossips(peer_id: Any, *args: Any) -> None:
            if host.dialed_us(peer_id):
                await trio.sleep(seconds)
                listed = await host.identified_protocols(peer_id, wait=IDENTIFY_WAIT)
                if listed is not None and not listed & speaks:
                    log.debug("%s speaks no gossipsub: not offered it", peer_id)
                    self.not_offered.add(PeerId(peer_id.to_base58()))
                    self.not_offered_changed.set()
                    self.not_offered_changed = trio.Event()
                    return
            await hello(peer_id, *args)

        pubsub._handle_new_peer_with_retry = hello_if_it_gossips

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with background_trio_service(self._pubsub), background_trio_service(self._router):
            await self._pubsub.wait_until_ready()
            task_status.started()
            await trio.sleep_forever()

    def set_validator(self, topic: str, validator: Validator) -> None:
        async def adapter(forwarder: ID, msg: object) -> bool:
            try:
                origin = PeerId(ID(msg.from_id).to_base58())  # type: ignore[attr-defined]
                return await validator(origin, PeerId(forwarder.to_base58()), bytes(msg.data))  # type: ignore[attr-defined]
            except Exception:
                log.exception("gossip validator failed; rejecting the message")
                return False

        self._pubsub.set_topic_validator(topic, adapter, True)

    async def subscribe(self, topic: str) -> AsyncIterator[GossipMessage]:
        """Subscribe now; iterate the result to receive validated messages."""
        sub = await self._pubsub.subscribe(topic)
        return _messages(topic, sub)

    async def publish(self, topic: str, data: bytes) -> None:
        if len(data) > self.config.max_message_size:
            raise ValueError(f"gossip message of {len(data)} bytes is over the limit")
        await self._pubsub.publish(topic, data)

    async def wait_for_subscriber(self, peer: PeerId, topic: str) -> None:
        """Until ``peer`` told us it subscribes to ``topic`` (event-driven; wrap in a
        cancel scope for a deadline)."""
        await self._pubsub.wait_for_subscription(ID.from_base58(peer), topic, timeout=math.inf)

    def mesh_peers(self, topic: str) -> list[PeerId]:
        return [PeerId(p.to_base58()) for p in self._router.mesh.get(topic, set())]

    def topic_peers(self, topic: str) -> list[PeerId]:
        return [PeerId(p.to_base58()) for p in self._pubsub.peer_topics.get(topic, set())]

    def score_of(self, peer: PeerId, topic: str) -> float:
        scorer = self._router.scorer
        if scorer is None:
            return 0.0
        return float(scorer.score(ID.from_base58(peer), [topic]))
