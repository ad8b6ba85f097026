"""Peer conduct (protocols.conduct): points that decay, the bans they reach.

Pure logic on a clock the tests move; the bans on real hosts are in
tests/test_bad_input.py.
"""

from __future__ import annotations

import pytest

from p2p.keys import PeerId
from protocols.conduct import BAN_AT, MALFORMED, MAX_TRACKED, PROVEN, Bans, Conduct

MALLORY = PeerId("12D3KooWMalloryWhoKeepsTrying")
BOB = PeerId("12D3KooWBobWhoErredOnce")


def on_clock() -> tuple[Conduct, list[float], list[tuple[PeerId, str]]]:
    now = [0.0]
    conduct = Conduct(half_life=600, clock=lambda: now[0])
    banned: list[tuple[PeerId, str]] = []
    conduct.on_ban.append(lambda peer, reason: banned.append((peer, reason)))
    return conduct, now, banned


def test_four_malformed_requests_in_a_row_are_a_ban() -> None:
    conduct, _, banned = on_clock()
    for _ in range(3):
        assert not conduct.offend(MALLORY, "query", "not cbor", MALFORMED)
    assert MALLORY not in conduct and banned == []
    assert conduct.offend(MALLORY, "query", "not cbor, again", MALFORMED)
    assert MALLORY in conduct and banned == [(MALLORY, "not cbor, again")]
    assert conduct.offences == {"query": 4}
    # more while banned: counted, but no second ban and no second callback
    assert conduct.offend(MALLORY, "upload", "junk", PROVEN)
    assert banned == [(MALLORY, "not cbor, again")] and conduct.offences["upload"] == 1
    assert BOB not in conduct and conduct.points(BOB) == 0


def test_points_halve_every_half_life() -> None:
    conduct, now, banned = on_clock()
    conduct.offend(BOB, "upload", "bad header", MALFORMED)
    now[0] = 600
    assert conduct.points(BOB) == pytest.approx(MALFORMED / 2)
    now[0] = 1200
    assert conduct.points(BOB) == pytest.approx(MALFORMED / 4)
    # one a quarter of an hour apart, for ever: never a ban
    for _ in range(100):
        now[0] += 900
        assert not conduct.offend(BOB, "upload", "bad header", MALFORMED)
    assert banned == []


def test_one_malformed_request_every_five_minutes_kept_up_is_a_ban() -> None:
    conduct, now, banned = on_clock()
    for _ in range(100):
        if conduct.offend(MALLORY, "query", "not cbor", MALFORMED):
            break
        now[0] += 290
    assert banned and now[0] < 290 * 100


def test_a_proven_lie_is_a_ban_at_once_and_a_ban_ends() -> None:
    conduct, now, banned = on_clock()
    assert PROVEN >= BAN_AT
    assert conduct.offend(MALLORY, "bitswap", "a block nobody asked for", PROVEN)
    assert banned == [(MALLORY, "a block nobody asked for")]
    now[0] = conduct.bans.first
    assert MALLORY not in conduct
    assert conduct.points(MALLORY) == 0  # a ban starts the count again
    assert not conduct.offend(MALLORY, "query", "not cbor", MALFORMED)


def test_the_peers_tracked_are_bounded() -> None:
    conduct, now, _ = on_clock()
    conduct.offend(MALLORY, "query", "not cbor", 3 * MALFORMED)
    for i in range(MAX_TRACKED + 1):
        now[0] += 0.001
        conduct.offend(PeerId(f"12D3KooWPeer{i}"), "query", "not cbor", 1)
    assert len(conduct._points) <= MAX_TRACKED
    assert conduct.points(MALLORY) > 2 * MALFORMED  # the worst are the ones kept


def test_a_half_life_must_be_positive() -> None:
    with pytest.raises(ValueError, match="half_life"):
        Conduct(half_life=0)


def test_a_ban_ends_and_the_next_one_lasts_twice_as_long() -> None:
    now = [0.0]
    bans = Bans(first=600, longest=1000, clock=lambda: now[0])
    peer = PeerId("12D3KooWBannedForAWhilePeer")
    bans.add(peer, "sent junk")
    bans.add(peer, "more junk, in the same message")  # no second offence while banned
    assert peer in bans and bans.reasons == {peer: "sent junk"} and bans.until(peer) == 600
    now[0] = 599.9
    assert peer in bans
    now[0] = 600
    assert peer not in bans and bans.reasons == {} and bans.until(peer) is None
    bans.add(peer, "junk again")
    assert bans.until(peer) == 600 + 1000  # twice as long, up to the longest
    assert PeerId("12D3KooWSomeoneElse") not in bans and 7 not in bans
    assert len(bans) == 1 and bans.current() == [(peer, "junk again", 1000)]


def test_a_peer_with_no_ban_for_the_longest_starts_again_from_the_first() -> None:
    now = [0.0]
    bans = Bans(first=10, longest=100, clock=lambda: now[0])
    bans.add(MALLORY, "junk")
    now[0] = 10
    bans.add(MALLORY, "junk")
    assert bans.until(MALLORY) == 10 + 20
    now[0] = 30 + 100.5  # a clean record for longer than the longest ban
    bans.add(MALLORY, "junk")
    assert bans.until(MALLORY) == now[0] + 10


def test_the_ban_records_are_bounded() -> None:
    now = [0.0]
    bans = Bans(first=10, clock=lambda: now[0])
    for i in range(MAX_TRACKED + 10):
        bans.add(PeerId(f"12D3KooWPeer{i}"), "junk")
    assert len(bans._record) == MAX_TRACKED and len(bans.reasons) == MAX_TRACKED
    assert PeerId("12D3KooWPeer0") not in bans  # the oldest went
    assert PeerId(f"12D3KooWPeer{MAX_TRACKED + 9}") in bans
