"""``/health``: a node's state, signed with its node key so anyone can check who says it.

The document is ``{"health": {...}, "signature": {...}}``. To verify one:

1. ``data = json.dumps(doc["health"], sort_keys=True, separators=(",", ":"),
   ensure_ascii=False).encode()`` (the canonical bytes that were signed);
2. check ``doc["signature"]["value"]`` (hex, DER-encoded ECDSA over
   secp256k1 of ``sha256(data)``) with ``doc["signature"]["public_key"]``
   (hex, 33-byte compressed SEC1 point);
3. check that the public key is the peer's: a secp256k1 libp2p peer ID embeds
   its public key, so the Ethereum address derived from the peer ID
   (``doc["health"]["peer_id"]``) must equal the one derived from the key.

:func:`verify` does all three. Any JSON library and secp256k1 library can do
the same (the signature is the one ``coincurve``/libsecp256k1 and OpenSSL
produce by default).
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import time
from typing import TYPE_CHECKING, Any

import coincurve

from p2p.host import eth_address_of_peer
from p2p.keys import PeerId, eth_address_of

if TYPE_CHECKING:
    from node import Node

ALGORITHM = "secp256k1-ecdsa-sha256-der"
MAX_BANS_SHOWN = 32


def canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def version() -> str:
    try:
        return importlib.metadata.version("coliving")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


async def health_body(node: Node) -> dict[str, Any]:
    stake = await node.oracle.stake_of(node.peer_id)
    disk = shutil.disk_usage(node.config.data_dir)
    stats = node.store.stats()
    repair = repair_status(node)
    return {
        "version": version(),
        "peer_id": node.peer_id,
        # where a light client (the SDK) dials this node for uploads and fetches
        "addrs": [str(a) for a in node.host.addrs()],
        # the discovery role: indexed block, index digest, lag behind the chain head
        "discovery": None if node.discovery is None else node.discovery.health(),
        "eth_address": node.key.eth_address,
        "stake": None
        if stake is None
        else {
            "service_type": stake.service_type,
            # wei as decimal strings: JSON numbers lose precision past 2**53
            "amount": str(stake.amount),
            "minimum": str(stake.minimum),
            "sufficient": stake.sufficient,
        },
        "staked": stake is not None and stake.sufficient,
        "disk": {
            "total": disk.total,
            "used": disk.used,
            "free": disk.free,
            "store_bytes": stats.bytes_used,
            "blocks": stats.blocks,
            "pins": stats.pins,
            # blocks no pin reaches, and what the node keeps of them (decisions.md 21)
            "unpinned_bytes": node.store.usage().unpinned_bytes,
            "cache_bytes": node.config.cache_bytes,
        },
        "peers": len(node.host.connected_peers()),
        # peers whose streams and connections the node refuses, and why (docs/decisions.md 22)
        "banned": [
            {"peer": peer, "reason": reason, "seconds_left": round(left)}
            for peer, reason, left in node.conduct.bans.current()[:MAX_BANS_SHOWN]
        ],
        # None until the node's repair loop has run (or on a node without one)
        "last_repair": _plain(getattr(repair, "last_round", None)),
        "replication_backlog": _plain(getattr(repair, "backlog", None)),
        "repair_rounds": _plain(getattr(repair, "rounds", None)),
        "time": round(time.time(), 3),
    }


def repair_status(node: object) -> Any:
    """The node's repair status object, if it has one (read with getattr: the
    replicator is newer than the gateway and its shape may still move)."""
    status = getattr(node, "repair_status", None)
    if status is None:
        status = getattr(getattr(node, "replicator", None), "status", None)
    return status


def _plain(value: Any) -> Any:
    """``value`` if JSON can carry it as is, else its text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)


def sign(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    public = node.key.public_key.format(compressed=True)
    return {
        "health": body,
        "signature": {
            "alg": ALGORITHM,
            "public_key": public.hex(),
            "value": node.key.sign(canonical(body)).hex(),
        },
    }


def verify(document: Any) -> bool:
    """True when ``document`` is signed by the key of the peer ID it names."""
    try:
        body = document["health"]
        sig = document["signature"]
        if sig["alg"] != ALGORITHM or not isinstance(body, dict):
            return False
        public = coincurve.PublicKey(bytes.fromhex(sig["public_key"]))
        claimed = eth_address_of_peer(PeerId(body["peer_id"]))
        if claimed is None or claimed != eth_address_of(public):
            return False
        return bool(public.verify(bytes.fromhex(sig["value"]), canonical(body)))
    except (KeyError, TypeError, ValueError):
        return False
