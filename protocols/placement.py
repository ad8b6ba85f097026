"""Where a CID lives: rendezvous (highest random weight) hashing.

Every staked content node ranks the same way: the score of node ``p`` for
``cid`` is the first 8 bytes of ``sha256(peer_id_bytes(p) || cid_bytes)``;
the owners are the R highest scores. Everyone who reads the registry gets the
same ranking, so a client knows where to look with no lookup, and a node that
joins or leaves moves only the CIDs it ranks in (about R/N of them).

Liveness layers on top: :func:`owners` takes the first R nodes of the ranking
that are *live* (reachable now), so a dead owner's place is taken by the next
node in the ranking until it comes back, and the data follows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from protocols.cid import CID

DEFAULT_REPLICAS = 3


def score(peer: bytes, cid: CID) -> int:
    return int.from_bytes(hashlib.sha256(peer + cid.to_bytes()).digest()[:8], "big")


def ranking(cid: CID, members: Iterable[bytes]) -> list[bytes]:
    """All members, best first (ties, impossible in practice, broken by bytes)."""
    return sorted(set(members), key=lambda p: (score(p, cid), p), reverse=True)


def owners(
    cid: CID,
    members: Sequence[bytes],
    replicas: int = DEFAULT_REPLICAS,
    *,
    live: Callable[[bytes], bool] = lambda _: True,
) -> list[bytes]:
    """The first ``replicas`` live members of the ranking."""
    return first_live(ranking(cid, members), replicas, live=live)


def first_live(
    ranked: Sequence[bytes],
    replicas: int = DEFAULT_REPLICAS,
    *,
    live: Callable[[bytes], bool] = lambda _: True,
) -> list[bytes]:
    """The owners from a ranking already made: its first ``replicas`` live members."""
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    out: list[bytes] = []
    for peer in ranked:
        if live(peer):
            out.append(peer)
            if len(out) == replicas:
                break
    return out
