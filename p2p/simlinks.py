"""Simulated links and gossip instrumentation for the simnet (never used by a real node).

:func:`install` patches, for this process only, the write of py-libp2p's
secured session (the layer between Noise and Yamux: every byte of gossip,
Bitswap, queries and uploads passes through it, after encryption is set up)
and counts duplicate gossip messages. Each secured connection gets a FIFO
and a forwarding task; a write of ``n`` bytes from peer A to peer B

- waits ``n / bandwidth`` (serialisation on that connection),
- is handed to B ``latency (+ jitter)`` later, in order (the task sleeps until
  then), so latency is pipelined as on a real link, not paid per write;
- with probability ``loss`` is handed over one retransmission timeout later
  (``max(200 ms, 2 x latency)``), and everything behind it waits too: TCP
  hides loss as head-of-line delay, and that is what the shim reproduces;
- across a partition is held until the partition heals (a blackhole, as a
  cut cable looks to TCP: connections stay up, bytes stop).

The link of a pair is chosen by the peers' classes (``LinkModel.classes``):
a rule for the unordered class pair, else the default. Limits: delays are
per connection, not per host uplink (two connections of one node do not
share its bandwidth); the TCP handshake and Noise handshake are not delayed;
loss never breaks a connection. It needs no privileges and scales with the
process (no network namespaces), which is why the simnet uses it.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.secure_session import SecureSession

QUEUE = 64  # writes in flight per connection before the writer blocks


@dataclass(frozen=True)
class LinkSpec:
    latency: float = 0.0  # seconds
    jitter: float = 0.0
    bandwidth: float = 0.0  # bytes per second; 0 unlimited
    loss: float = 0.0

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> LinkSpec:
        mbps = float(raw.get("bandwidth_mbps", 0.0))
        return cls(
            latency=float(raw.get("latency_ms", 0.0)) / 1000,
            jitter=float(raw.get("jitter_ms", 0.0)) / 1000,
            bandwidth=mbps * 1e6 / 8,
            loss=float(raw.get("loss", 0.0)),
        )

    @property
    def trivial(self) -> bool:
        return not (self.latency or self.jitter or self.bandwidth or self.loss)


@dataclass
class LinkModel:
    """Link rules, partitions and counters for one process."""

    default: LinkSpec = field(default_factory=LinkSpec)
    pairs: dict[frozenset[str], LinkSpec] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)  # peer id -> class
    sides: dict[str, int] = field(default_factory=dict)  # peer id -> partition side
    seed: int = 0
    bytes_out: Counter[str] = field(default_factory=Counter)  # peer id -> bytes written
    duplicates: Counter[tuple[str, str]] = field(default_factory=Counter)  # (peer, msg id)
    retransmits: int = 0
    held: int = 0  # writes held by a partition

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.healed = trio.Event()
        self.nursery: trio.Nursery | None = None

    @classmethod
    def from_config(cls, raw: Mapping[str, Any], *, seed: int = 0) -> LinkModel:
        model = cls(default=LinkSpec.from_config(raw.get("default", {})), seed=seed)
        for a, b, spec in raw.get("pairs", []):
            model.pairs[frozenset((a, b))] = LinkSpec.from_config(spec)
        return model

    def link(self, a: str, b: str) -> LinkSpec:
        ca, cb = self.classes.get(a, "default"), self.classes.get(b, "default")
        return self.pairs.get(frozenset((ca, cb)), self.default)

    def cut(self, a: str, b: str) -> bool:
        return bool(self.sides) and self.sides.get(a, 0) != self.sides.get(b, 0)

    def partition(self, sides: Mapping[str, int]) -> None:
        self.sides = dict(sides)
        self.healed = trio.Event()

    def heal(self) -> None:
        self.sides = {}
        self.healed.set()


_model: LinkModel | None = None
_original_write = SecureSession.write
_original_seen = Pubsub._is_msg_seen


def message_id(data: bytes) -> str:
    """The simnet's id of a gossip payload (the same on every node)."""
    return hashlib.sha256(data).hexdigest()[:16]


class _Pipe:
    """One connection's FIFO of (deliver at, bytes)."""

    def __init__(self, session: Any, local: str, remote: str) -> None:
        self.send, self.recv = trio.open_memory_channel[tuple[float, bytes]](QUEUE)
        self.local, self.remote = local, remote
        self.last = 0.0
        self.broken: BaseException | None = None
        self.session = session

    async def forward(self, model: LinkModel) -> None:
        async for deliver_at, data in self.recv:
            await trio.sleep_until(deliver_at)
            if model.cut(self.local, self.remote):
                model.held += 1
                while model.cut(self.local, self.remote):
                    await model.healed.wait()
            try:
                await _original_write(self.session, data)
            except Exception as exc:
                self.broken = exc
                return


async def _write(self: Any, data: bytes) -> None:
    model = _model
    if model is None or model.nursery is None:
        await _original_write(self, data)
        return
    local, remote = self.local_peer.to_base58(), self.remote_peer.to_base58()
    model.bytes_out[local] += len(data)
    link = model.link(local, remote)
    pipe: _Pipe | None = self.__dict__.get("_sim_pipe")
    if pipe is None:
        if link.trivial and not model.sides:
            await _original_write(self, data)  # no shaping: keep the fast path
            return
        pipe = self.__dict__["_sim_pipe"] = _Pipe(self, local, remote)
        model.nursery.start_soon(pipe.forward, model)
    if pipe.broken is not None:
        raise pipe.broken
    if link.bandwidth:
        await trio.sleep(len(data) / link.bandwidth)
    delay = link.latency + (model.rng.uniform(0, link.jitter) if link.jitter else 0.0)
    if link.loss and model.rng.random() < link.loss:
        model.retransmits += 1
        delay += max(0.2, 2 * link.latency)
    deliver_at = max(trio.current_time() + delay, pipe.last)
    pipe.last = deliver_at
    await pipe.send.send((deliver_at, bytes(data)))


def _is_msg_seen(self: Any, msg: Any) -> bool:
    seen: bool = _original_seen(self, msg)
    model = _model
    if seen and model is not None:
        model.duplicates[(self.host.get_id().to_base58(), message_id(bytes(msg.data)))] += 1
    return seen


def install(model: LinkModel, nursery: trio.Nursery) -> None:
    """Shape every secured connection of this process by ``model`` from now on."""
    global _model
    model.nursery = nursery
    _model = model
    SecureSession.write = _write  # type: ignore[method-assign]
    Pubsub._is_msg_seen = _is_msg_seen  # type: ignore[method-assign]


def uninstall() -> None:
    global _model
    _model = None
    SecureSession.write = _original_write  # type: ignore[method-assign]
    Pubsub._is_msg_seen = _original_seen  # type: ignore[method-assign]


def current() -> LinkModel | None:
    return _model


__all__ = ["LinkModel", "LinkSpec", "install", "message_id", "uninstall"]
