"""The indexing rules: what a ``ManageEntity`` action does to the index.

Every discovery node applies these rules, in block and log order, to the
same chain, so every node holds the same index (and digest). The rules are
written out for humans in docs/discovery-rules.md; this module is that
spec in code, and the two change together (a change is a new rules
version: every node must move at once, or their digests part).

:func:`apply` validates one action against the index as the block's earlier
actions left it, and either writes its row changes through the
:class:`~store.index.BlockWriter` or records a :class:`~store.index.Rejection`
with the reason. It never raises for bad input: a forged signature, someone
else's track, malformed metadata, a taken handle are all rejections.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from protocols.cid import CID
from store.index import BlockWriter, Kind, Rejection, Row, Table

RULES_VERSION: Final = 1
MAX_METADATA_BYTES: Final = 8192  # the contract refuses more, too
MAX_ID: Final = 2**63 - 1  # ids fit a signed 64-bit integer (SQLite, PostgreSQL bigint)
MAX_PLAYLIST_TRACKS: Final = 500
ARTWORK_SIZES: Final = ("150x150", "480x480", "1000x1000")
COVER_SIZES: Final = ("640x", "2000x")

# Audius's genre and mood lists (facts, for compatibility of clients and data)
GENRES: Final = frozenset(
    [
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
        "Soundtrack",
        "World",
        "Jazz",
        "Acoustic",
        "Funk",
        "R&B/Soul",
        "Devotional",
        "Classical",
        "Reggae",
        "Podcasts",
        "Country",
        "Blues",
        "Kids",
        "Audiobooks",
        "Latin",
        "Lo-Fi",
        "Hyperpop",
        "Dancehall",
        "Techno",
        "Trap",
        "House",
        "Disco",
        "Electro",
        "Jungle",
        "Hardstyle",
        "Dubstep",
        "Trance",
        "Downtempo",
        "Moombahton",
        "Spoken Word",
        "Comedy",
        "Tech House",
        "Deep House",
        "Progressive House",
        "Drum & Bass",
        "Future Bass",
        "Jersey Club",
    ]
)
MOODS: Final = frozenset(
    [
        "Peaceful",
        "Romantic",
        "Sentimental",
        "Tender",
        "Easygoing",
        "Yearning",
        "Sophisticated",
        "Sensual",
        "Cool",
        "Gritty",
        "Melancholy",
        "Serious",
        "Brooding",
        "Fiery",
        "Defiant",
        "Aggressive",
        "Rowdy",
        "Excited",
        "Energizing",
        "Empowering",
        "Stirring",
        "Upbeat",
        "Other",
    ]
)
_HANDLE = re.compile(r"[A-Za-z0-9_.]{1,30}")
RESERVED_HANDLES: Final = frozenset(
    [
        "admin",
        "administrator",
        "api",
        "app",
        "coliving",
        "discovery",
        "explore",
        "feed",
        "favorites",
        "health",
        "help",
        "identity",
        "ipfs",
        "library",
        "login",
        "logout",
        "metrics",
        "player",
        "playlist",
        "playlists",
        "relay",
        "search",
        "settings",
        "signup",
        "support",
        "track",
        "tracks",
        "trending",
        "upload",
        "user",
        "users",
        "v1",
        "www",
    ]
) | frozenset(g.lower() for g in GENRES | MOODS)

USER, TRACK, PLAYLIST, ALBUM = "User", "Track", "Playlist", "Album"
ENTITY_ACTIONS: Final[Mapping[str, frozenset[str]]] = {
    USER: frozenset(("Create", "Update", "Follow", "Unfollow")),
    TRACK: frozenset(("Create", "Update", "Delete", "Repost", "Unrepost", "Save", "Unsave")),
    PLAYLIST: frozenset(("Create", "Update", "Delete", "Repost", "Unrepost", "Save", "Unsave")),
    ALBUM: frozenset(("Create", "Update", "Delete", "Repost", "Unrepost", "Save", "Unsave")),
}
# actions that carry metadata; all others must carry none
_WITH_METADATA: Final = frozenset(("Create", "Update"))


@dataclass(frozen=True, slots=True)
class Action:
    """One ``ManageEntity`` event, as the indexer hands it to the rules."""

    block: int
    log_index: int
    tx_hash: bytes
    timestamp: int  # the block's, unix seconds
    user_id: int
    signer: str  # 0x-prefixed, lowercase
    entity_type: str
    entity_id: int
    action: str
    metadata: str


class Refused(Exception):
    """An action the rules refuse; the message is the recorded reason."""


# --- metadata fields ---------------------------------------------------------

Check = Callable[[Any], Any]


def _text(max_len: int, *, min_len: int = 0) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise Refused("must be a string")
        text = value.strip()
        if not min_len <= len(text) <= max_len:
            raise Refused(f"must be {min_len}-{max_len} characters")
        return text

    return check


def _choice(allowed: frozenset[str]) -> Check:
    def check(value: Any) -> str:
        if value not in allowed:
            raise Refused(f"{value!r} is not one of the allowed values")
        return str(value)

    return check


def _cid(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 128:
        raise Refused("must be a CID string")
    try:
        return str(CID.parse(value))
    except Exception:
        raise Refused(f"{value[:64]!r} is not a CID") from None


def _sized_cids(sizes: tuple[str, ...]) -> Check:
    def check(value: Any) -> dict[str, str]:
        if not isinstance(value, dict) or not value:
            raise Refused(f"must be a map of sizes ({', '.join(sizes)}) to CIDs")
        if extra := sorted(set(value) - set(sizes)):
            raise Refused(f"unknown sizes {extra}")
        return {size: _cid(value[size]) for size in sizes if size in value}

    return check


def _tags(value: Any) -> list[str]:
    if not isinstance(value, list) or len(value) > 10:
        raise Refused("must be a list of at most 10 tags")
    tags = [_text(32, min_len=1)(t) for t in value]
    return list(dict.fromkeys(t.lower() for t in tags))


def _date(value: Any) -> str:
    if not isinstance(value, str):
        raise Refused("must be a date YYYY-MM-DD")
    try:
        return datetime.date.fromisoformat(value).isoformat()
    except ValueError:
        raise Refused("must be a date YYYY-MM-DD") from None


def _duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Refused("must be a number of seconds")
    if not 0 < value <= 86_400:
        raise Refused("must be more than 0 and at most 86400 seconds")
    return float(value)


def _track_ids(value: Any) -> list[int]:
    if not isinstance(value, list) or len(value) > MAX_PLAYLIST_TRACKS:
        raise Refused(f"must be a list of at most {MAX_PLAYLIST_TRACKS} track ids")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= MAX_ID:
            raise Refused("must hold track ids (positive integers)")
    return list(value)


@dataclass(frozen=True)
class Field:
    check: Check
    required: bool = False


USER_FIELDS: Final = {
    "handle": Field(_text(30, min_len=1), required=True),
    "name": Field(_text(32)),
    "bio": Field(_text(256)),
    "location": Field(_text(64)),
    "profile_picture": Field(_sized_cids(ARTWORK_SIZES)),
    "cover_photo": Field(_sized_cids(COVER_SIZES)),
}
TRACK_FIELDS: Final = {
    "title": Field(_text(200, min_len=1), required=True),
    "genre": Field(_choice(GENRES), required=True),
    "mood": Field(_choice(MOODS)),
    "tags": Field(_tags),
    "description": Field(_text(2500)),
    "release_date": Field(_date),
    "duration": Field(_duration, required=True),
    "stream_cid": Field(_cid, required=True),
    "original_cid": Field(_cid),
    "preview_cid": Field(_cid),
    "artwork": Field(_sized_cids(ARTWORK_SIZES)),
}
PLAYLIST_FIELDS: Final = {
    "playlist_name": Field(_text(200, min_len=1), required=True),
    "description": Field(_text(1000)),
    "track_ids": Field(_track_ids),
    "artwork": Field(_sized_cids(ARTWORK_SIZES)),
}


def _reject_constant(name: str) -> Any:
    raise Refused(f"metadata: {name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise Refused(f"metadata: key {key!r} appears twice")
        out[key] = value
    return out


def parse_metadata(text: str) -> dict[str, Any]:
    """The metadata's JSON object; Refused for anything else (strict: no
    duplicate keys, no NaN or Infinity, at most MAX_METADATA_BYTES)."""
    if len(text.encode("utf-8", errors="surrogatepass")) > MAX_METADATA_BYTES:
        raise Refused(f"metadata over {MAX_METADATA_BYTES} bytes")
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise Refused("metadata is not valid JSON") from None
    if not isinstance(value, dict):
        raise Refused("metadata must be a JSON object")
    return value


def checked_fields(
    fields: Mapping[str, Field], given: Mapping[str, Any], *, base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``given`` validated against ``fields``; merged over ``base`` (an update:
    a key set to null removes an optional field)."""
    if unknown := sorted(set(given) - set(fields)):
        raise Refused(f"metadata: unknown keys {unknown}")
    out = {k: v for k, v in (base or {}).items() if k in fields}
    for name, value in given.items():
        spec = fields[name]
        if value is None:
            if spec.required:
                raise Refused(f"metadata: {name} is required")
            out.pop(name, None)
            continue
        try:
            out[name] = spec.check(value)
        except Refused as exc:
            raise Refused(f"metadata: {name} {exc}") from None
    if missing := sorted(n for n, f in fields.items() if f.required and out.get(n) is None):
        raise Refused(f"metadata: missing {missing}")
    return out


# --- the rules ---------------------------------------------------------------


def apply(writer: BlockWriter, action: Action) -> bool:
    """Apply ``action``: True if it changed the index, False if it was refused
    (and the refusal recorded)."""
    try:
        _apply(writer, action)
    except Refused as exc:
        writer.reject(
            Rejection(
                block=action.block,
                log_index=action.log_index,
                tx_hash=action.tx_hash,
                user_id=action.user_id,
                entity_type=action.entity_type[:32],
                entity_id=action.entity_id,
                action=action.action[:32],
                reason=str(exc)[:300],
            )
        )
        return False
    return True


def _apply(w: BlockWriter, a: Action) -> None:
    allowed = ENTITY_ACTIONS.get(a.entity_type)
    if allowed is None:
        raise Refused(f"unknown entity type {a.entity_type[:32]!r}")
    if a.action not in allowed:
        raise Refused(f"{a.entity_type} has no action {a.action[:32]!r}")
    for name, value in (("user id", a.user_id), ("entity id", a.entity_id)):
        if not 1 <= value <= MAX_ID:
            raise Refused(f"{name} {value} out of range 1..{MAX_ID}")
    if a.action in _WITH_METADATA:
        metadata = parse_metadata(a.metadata)
    elif a.metadata not in ("", "{}"):
        raise Refused(f"{a.action} carries no metadata")
    else:
        metadata = {}

    if a.entity_type == USER and a.action == "Create":
        _create_user(w, a, metadata)
        return
    user = w.get("users", (a.user_id,))
    if user is None:
        raise Refused(f"no user {a.user_id}")
    if user["wallet"] != a.signer.lower():
        raise Refused("signer is not the user's wallet")

    if a.entity_type == USER:
        if a.action == "Update":
            if a.entity_id != a.user_id:
                raise Refused("a user updates only itself")
            _update_user(w, a, user, metadata)
        else:
            _follow(w, a)
    elif a.action in ("Create", "Update", "Delete"):
        if a.entity_type == TRACK:
            _track(w, a, metadata)
        else:
            _playlist(w, a, metadata)
    else:
        _social(w, a)


def _handle_free(w: BlockWriter, handle: str, user_id: int) -> None:
    if not _HANDLE.fullmatch(handle):
        raise Refused("metadata: handle must be 1-30 of a-z, 0-9, _ and .")
    if handle.lower() in RESERVED_HANDLES:
        raise Refused(f"handle {handle!r} is reserved")
    holder = w.user_by_handle(handle.lower())
    if holder is not None and holder["user_id"] != user_id:
        raise Refused(f"handle {handle!r} is taken")


def _user_row(a: Action, fields: Mapping[str, Any], base: Row | None) -> Row:
    row: Row = (
        dict(base)
        if base
        else {
            "user_id": a.user_id,
            "wallet": a.signer.lower(),
            "created_block": a.block,
            "created_at": a.timestamp,
        }
    )
    for name in USER_FIELDS:
        row[name] = fields.get(name)
    row["handle_lc"] = row["handle"].lower()
    row["updated_block"] = a.block
    return row


def _create_user(w: BlockWriter, a: Action, metadata: Mapping[str, Any]) -> None:
    if a.entity_id != a.user_id:
        raise Refused("a new user's entity id is its user id")
    if w.get("users", (a.user_id,)) is not None:
        raise Refused(f"user {a.user_id} exists")
    if w.user_by_wallet(a.signer.lower()) is not None:
        raise Refused("this wallet already has a user")
    fields = checked_fields(USER_FIELDS, metadata)
    _handle_free(w, fields["handle"], a.user_id)
    w.put("users", (a.user_id,), _user_row(a, fields, None))


def _update_user(w: BlockWriter, a: Action, user: Row, metadata: Mapping[str, Any]) -> None:
    fields = checked_fields(USER_FIELDS, metadata, base=user)
    if fields["handle"].lower() != user["handle_lc"] or fields["handle"] != user["handle"]:
        _handle_free(w, fields["handle"], a.user_id)
    w.put("users", (a.user_id,), _user_row(a, fields, user))


def _live(w: BlockWriter, table: Table, item_id: int, what: str) -> Row:
    row = w.get(table, (item_id,))
    if row is None or row["deleted"]:
        raise Refused(f"no {what} {item_id}")
    return row


def _track(w: BlockWriter, a: Action, metadata: Mapping[str, Any]) -> None:
    key = (a.entity_id,)
    existing = w.get("tracks", key)
    if a.action == "Create":
        if existing is not None:
            raise Refused(f"track {a.entity_id} exists")
        fields = checked_fields(TRACK_FIELDS, metadata)
        row: Row = {
            "track_id": a.entity_id,
            "owner_id": a.user_id,
            "deleted": False,
            "created_block": a.block,
            "created_at": a.timestamp,
        }
    else:
        if existing is None or existing["deleted"]:
            raise Refused(f"no track {a.entity_id}")
        if existing["owner_id"] != a.user_id:
            raise Refused(f"track {a.entity_id} belongs to user {existing['owner_id']}")
        if a.action == "Delete":
            w.put("tracks", key, {**existing, "deleted": True, "updated_block": a.block})
            return
        fields = checked_fields(TRACK_FIELDS, metadata, base=existing)
        row = dict(existing)
    for name in TRACK_FIELDS:
        row[name] = fields.get(name)
    if row["tags"] is None:
        row["tags"] = []
    row["updated_block"] = a.block
    w.put("tracks", key, row)


def _playlist(w: BlockWriter, a: Action, metadata: Mapping[str, Any]) -> None:
    key = (a.entity_id,)
    is_album = a.entity_type == ALBUM
    what = "album" if is_album else "playlist"
    existing = w.get("playlists", key)
    if a.action == "Create":
        if existing is not None:
            raise Refused(f"playlist or album {a.entity_id} exists")
        fields = checked_fields(PLAYLIST_FIELDS, metadata)
        row: Row = {
            "playlist_id": a.entity_id,
            "owner_id": a.user_id,
            "is_album": is_album,
            "deleted": False,
            "created_block": a.block,
            "created_at": a.timestamp,
        }
    else:
        if existing is None or existing["deleted"] or bool(existing["is_album"]) != is_album:
            raise Refused(f"no {what} {a.entity_id}")
        if existing["owner_id"] != a.user_id:
            raise Refused(f"{what} {a.entity_id} belongs to user {existing['owner_id']}")
        if a.action == "Delete":
            w.put("playlists", key, {**existing, "deleted": True, "updated_block": a.block})
            return
        fields = checked_fields(PLAYLIST_FIELDS, metadata, base=existing)
        row = dict(existing)
    track_ids = fields.get("track_ids") or []
    if a.action == "Create" or "track_ids" in metadata:
        for track_id in track_ids:
            track = _live(w, "tracks", track_id, "track")
            if is_album and track["owner_id"] != a.user_id:
                raise Refused(f"an album holds its owner's tracks; track {track_id} is not")
    for name in PLAYLIST_FIELDS:
        row[name] = fields.get(name)
    row["track_ids"] = track_ids
    row["updated_block"] = a.block
    w.put("playlists", key, row)


def _follow(w: BlockWriter, a: Action) -> None:
    if a.entity_id == a.user_id:
        raise Refused("a user cannot follow itself")
    if w.get("users", (a.entity_id,)) is None:
        raise Refused(f"no user {a.entity_id}")
    key = (a.user_id, a.entity_id)
    following = w.get("follows", key) is not None
    if a.action == "Follow":
        if following:
            raise Refused(f"already follows user {a.entity_id}")
        row = {
            "follower_id": a.user_id,
            "followee_id": a.entity_id,
            "block": a.block,
            "created_at": a.timestamp,
        }
        w.put("follows", key, row)
    else:
        if not following:
            raise Refused(f"does not follow user {a.entity_id}")
        w.delete("follows", key)


def _social(w: BlockWriter, a: Action) -> None:
    kind: Kind = "track" if a.entity_type == TRACK else "playlist"
    if kind == "track":
        item = _live(w, "tracks", a.entity_id, "track")
    else:
        item = _live(w, "playlists", a.entity_id, a.entity_type.lower())
        if bool(item["is_album"]) != (a.entity_type == ALBUM):
            raise Refused(f"no {a.entity_type.lower()} {a.entity_id}")
    table: Table = "reposts" if a.action in ("Repost", "Unrepost") else "saves"
    verb, done_verb = ("repost", "reposted") if table == "reposts" else ("save", "saved")
    key = (a.user_id, kind, a.entity_id)
    done = w.get(table, key) is not None
    if a.action in ("Repost", "Save"):
        if item["owner_id"] == a.user_id:
            raise Refused(f"a user cannot {verb} its own {kind}")
        if done:
            raise Refused(f"already {done_verb} {kind} {a.entity_id}")
        row = {
            "user_id": a.user_id,
            "kind": kind,
            "item_id": a.entity_id,
            "block": a.block,
            "created_at": a.timestamp,
        }
        w.put(table, key, row)
    else:
        if not done:
            raise Refused(f"has not {done_verb} {kind} {a.entity_id}")
        w.delete(table, key)
