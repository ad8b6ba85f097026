"""Query latency of the discovery index: ``python -m bench.discovery_query``.

The catalogue is synthetic and built straight into a
:class:`~store.sqlite_index.SqliteIndex` with :meth:`SqliteIndex.bulk_load`
(rows in the shapes of store/index.py, no chain, no journal, no digest: the
index a discovery node holds after indexing a chain of that size), at the
default scale of issue 15:

- 100,000 users (handles ``<word><n>``, names of two words);
- 1,000,000 tracks, owners drawn Zipf-like (a few artists have many tracks),
  titles of 2-4 words from a 4,000-word vocabulary, 12 genres, created over
  the last 400 days;
- 10,000,000 follows (each user follows 100 others, popular artists more
  often), 1,000,000 reposts and 500,000 saves within the last 60 days, play
  counts on a long tail; trending scores refreshed once after the load.

Then, per operation, ``--queries`` random queries (a warm-up of 100 first),
and the p50 / p99 of their wall time in this process (Python call included):
search (tracks, users: a one- or two-word prefix query), trending (week,
month, all; a genre or none; first page or a later one), feed (a random
user's first page or a later one), lookups (user by id, by handle, track by
id). Goals (issue 15): search p99 <= 20 ms, trending <= 10 ms, feed <= 20 ms,
lookups <= 2 ms. ``--scale 0.01`` runs the same at a hundredth of the size.
Progress to stderr, figures to stdout.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from store.index import Page, Row
from store.sqlite_index import SqliteIndex

GENRES = (
    "Electronic",
    "Rock",
    "Metal",
    "Alternative",
    "Hip-Hop/Rap",
    "Experimental",
    "Punk",
    "Folk",
    "Pop",
    "Ambient",
    "Jazz",
    "Classical",
)
DAY = 86_400
CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
GOALS_MS = {"search": 20.0, "trending": 10.0, "feed": 20.0, "lookup": 2.0}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def vocabulary(rng: random.Random, size: int = 4000) -> list[str]:
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    words: set[str] = set()
    while len(words) < size:
        length = rng.randint(2, 4)
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(length)))
    return sorted(words)


class Catalogue:
    """The synthetic rows, generated lazily from one seed."""

    def __init__(self, scale: float, seed: int, now: int) -> None:
        self.users = max(100, int(100_000 * scale))
        self.tracks = max(1000, int(1_000_000 * scale))
        self.follows_each = min(100, self.users - 1)
        self.reposts = int(1_000_000 * scale)
        self.saves = int(500_000 * scale)
        self.now = now
        self.seed = seed
        rng = random.Random(seed)
        self.words = vocabulary(rng)

    def _owner(self, rng: random.Random) -> int:
        # Zipf-like: user k is chosen with weight ~ 1/k
        return min(self.users, int(self.users ** rng.random()))

    def user_rows(self) -> Iterator[Row]:
        rng = random.Random(self.seed + 1)
        for u in range(1, self.users + 1):
            created = self.now - rng.randint(400, 800) * DAY
            handle = f"{rng.choice(self.words)}{u}"
            yield {
                "user_id": u,
                "wallet": f"0x{u:040x}",
                "handle": handle,
                "handle_lc": handle.lower(),
                "name": f"{rng.choice(self.words).title()} {rng.choice(self.words).title()}",
                "bio": None,
                "location": None,
                "profile_picture": None,
                "cover_photo": None,
                "created_block": 1,
                "created_at": created,
                "updated_block": 1,
            }

    def track_rows(self) -> Iterator[Row]:
        rng = random.Random(self.seed + 2)
        for t in range(1, self.tracks + 1):
            created = self.now - rng.randint(0, 400 * DAY)
            title = " ".join(rng.choice(self.words) for _ in range(rng.randint(2, 4))).title()
            yield {
                "track_id": t,
                "owner_id": self._owner(rng),
                "title": title,
                "genre": rng.choice(GENRES),
                "mood": None,
                "tags": [],
                "description": None,
                "release_date": None,
                "duration": float(rng.randint(90, 420)),
                "stream_cid": CID,
                "original_cid": None,
                "preview_cid": None,
                "artwork": None,
                "deleted": False,
                "created_block": 1,
                "created_at": created,
                "updated_block": 1,
            }

    def follow_rows(self) -> Iterator[Row]:
        rng = random.Random(self.seed + 3)
        for follower in range(1, self.users + 1):
            followees: set[int] = set()
            while len(followees) < self.follows_each:
                other = self._owner(rng) if rng.random() < 0.5 else rng.randint(1, self.users)
                if other != follower:
                    followees.add(other)
            for followee in sorted(followees):
                yield {
                    "follower_id": follower,
                    "followee_id": followee,
                    "block": 1,
                    "created_at": self.now - rng.randint(0, 300 * DAY),
                }

    def _item_rows(self, count: int, seed: int) -> Iterator[Row]:
        rng = random.Random(seed)
        seen: set[tuple[int, int]] = set()
        while len(seen) < count:
            user = rng.randint(1, self.users)
            # recent tracks are reposted more: the newest tenth takes half
            track = (
                rng.randint(1, self.tracks)
                if rng.random() < 0.5
                else self.tracks - rng.randint(0, self.tracks // 10)
            )
            if (user, track) in seen:
                continue
            seen.add((user, track))
            yield {
                "user_id": user,
                "kind": "track",
                "item_id": track,
                "block": 1,
                "created_at": self.now - rng.randint(0, 60 * DAY),
            }

    def repost_rows(self) -> Iterator[Row]:
        return self._item_rows(self.reposts, self.seed + 4)

    def save_rows(self) -> Iterator[Row]:
        return self._item_rows(self.saves, self.seed + 5)

    def plays(self) -> list[tuple[int, int]]:
        rng = random.Random(self.seed + 6)
        return [(t, int(rng.paretovariate(1.2))) for t in range(1, self.tracks + 1, 3)]


def _timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(
    store: SqliteIndex, cat: Catalogue, queries: int, seed: int
) -> dict[str, tuple[str, list[float]]]:
    """Per operation: its goal's kind and the latencies (ms)."""
    rng = random.Random(seed)
    words = cat.words

    def prefix() -> str:
        word = rng.choice(words)
        q = word[: rng.randint(3, len(word))]
        return q if rng.random() < 0.7 else f"{rng.choice(words)} {q}"

    def page(first: float = 0.7) -> Page:
        return Page(limit=10, offset=0 if rng.random() < first else rng.randint(1, 10) * 10)

    ops: dict[str, tuple[str, Callable[[], Any]]] = {
        "search tracks": ("search", lambda: store.search_tracks(prefix(), page(0.9))),
        "search users": ("search", lambda: store.search_users(prefix(), page(0.9))),
        "trending": (
            "trending",
            lambda: store.trending(
                rng.choice(("week", "month", "all")),
                rng.choice((None, None, *GENRES)),
                page(),
            ),
        ),
        "feed": ("feed", lambda: store.feed(rng.randint(1, cat.users), page())),
        "user by id": ("lookup", lambda: store.user(rng.randint(1, cat.users))),
        "user by handle": (
            "lookup",
            lambda: store.user_by_handle(f"{rng.choice(words)}{rng.randint(1, cat.users)}"),
        ),
        "track by id": ("lookup", lambda: store.track(rng.randint(1, cat.tracks))),
    }
    results: dict[str, tuple[str, list[float]]] = {}
    for name, (kind, fn) in ops.items():
        _timed(fn, 100)
        results[name] = (kind, _timed(fn, queries))
        _say(f"  {name}: p99 {_pct(results[name][1], 0.99):.2f} ms")
    return results


def main(scale: float, queries: int, seed: int, keep: Path | None) -> None:
    now = int(time.time())
    cat = Catalogue(scale, seed, now)
    with tempfile.TemporaryDirectory() as tmp:
        path = (keep or Path(tmp)) / "bench-index.sqlite"
        if keep is not None and path.exists():
            _say(f"reusing {path}")
            store = SqliteIndex(path)
        else:
            _say(
                f"building {cat.users} users, {cat.tracks} tracks, "
                f"{cat.users * cat.follows_each} follows, {cat.reposts} reposts, "
                f"{cat.saves} saves into {path}"
            )
            t0 = time.perf_counter()
            store = SqliteIndex(path)
            store.bulk_load(
                users=cat.user_rows(),
                tracks=cat.track_rows(),
                follows=cat.follow_rows(),
                reposts=cat.repost_rows(),
                saves=cat.save_rows(),
            )
            store.add_plays(cat.plays())
            store.refresh_trending(now)
            _say(f"  built in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        store.refresh_trending(now)
        refresh = time.perf_counter() - t0
        try:
            results = measure(store, cat, queries, seed)
        finally:
            store.close()
        size = path.stat().st_size
    print(
        f"discovery index queries: {cat.users} users, {cat.tracks} tracks, "
        f"{cat.users * cat.follows_each} follows ({size / 1e9:.2f} GB file); "
        f"{queries} queries each"
    )
    print(f"  {'operation':<16} {'p50 ms':>8} {'p99 ms':>8} {'goal p99':>9}")
    met = True
    for name, (kind, samples) in results.items():
        goal = GOALS_MS[kind]
        p50, p99 = statistics.median(samples), _pct(samples, 0.99)
        met &= p99 <= goal
        print(f"  {name:<16} {p50:8.2f} {p99:8.2f} {goal:8.0f}{'' if p99 <= goal else '  MISSED'}")
    print(f"  trending refresh: {refresh:.1f} s (every trending_interval, off the query path)")
    print(f"  all goals met: {'yes' if met else 'no'}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of issue 15's size")
    parser.add_argument("--queries", type=int, default=2000, help="queries per operation")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--keep", type=Path, help="build the index in this directory, reuse it")
    args = parser.parse_args()
    if not 0 < args.scale <= 10 or args.queries < 10:
        parser.error("--scale in (0, 10] and --queries >= 10")
    main(args.scale, args.queries, args.seed, args.keep)


if __name__ == "__main__":
    cli()
