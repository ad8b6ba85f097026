"""The Python SDK: one class for everything a Coliving client does.

A :class:`Coliving` talks to two kinds of node:

- a **discovery node**'s gateway over HTTP (``gateway``, e.g.
  ``http://127.0.0.1:8080``): the query API under ``/v1``, the identity
  service under ``/identity`` (hedgehog accounts and the gas relay), and
  ``/health``, which names the chain, the data contract and the node's
  libp2p addresses;
- a **content node** over libp2p (``node``, a multiaddr with ``/p2p/``;
  by default the discovery node's own first address): uploads go there and
  are replicated to the staked owners; streams are fetched over Bitswap,
  every block checked against its CID, so the bytes are verified whoever
  served them.

Every user action is an EntityManager call signed by the user's wallet in
this process (the key never leaves it) and sent through the relay, which
pays the gas. An action returns once the discovery node has indexed the
block it landed in; one the indexer refused (a handle taken, a track that is
not yours) raises :class:`Refused`.

From trio code::

    async with Coliving.connect("http://127.0.0.1:8080") as co:
        await co.signup("ada@example.com", "correct horse", handle="ada")
        track = await co.upload_track(Path("song.flac"), title="Song", genre="Electronic")
        async for chunk in co.stream(track["id"]):
            ...

From a plain script, :class:`sdk.ColivingSync` has the same methods without
``await``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import httpx
import trio
from eth_account.signers.local import LocalAccount

from chain.entity import sign_action
from chain.listen import sign_listen
from sdk import hedgehog

if TYPE_CHECKING:
    from node import Client

Kind = Literal["track", "playlist", "album"]
Progress = Callable[[str, float], None]  # (stage, fraction done 0..1)

USER_ID_LOW: Final = 3_000_000  # Audius's offsets: new ids start above them
TRACK_ID_LOW: Final = 2_000_000
PLAYLIST_ID_LOW: Final = 400_000
ID_HIGH: Final = 2**53  # ids stay exact in JavaScript numbers (the web app)
INDEX_POLL: Final = 0.1  # seconds between checks that an action is indexed
_ENTITY: Final = {"track": "Track", "playlist": "Playlist", "album": "Album"}


class ColivingError(Exception):
    """Something the network refused or could not do; the message says what."""


class NotFound(ColivingError):
    """No such user, track or playlist (or an unknown email and password)."""


class Refused(ColivingError):
    """The node or the indexer refused the request or action."""


class RateLimited(ColivingError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ColivingError):
    """The node cannot be reached, or its chain is down."""


@dataclass(frozen=True)
class Network:
    """What a discovery node says about itself (its ``/health``)."""

    chain_id: int
    entity_manager: str
    peer_id: str
    addrs: tuple[str, ...]


@dataclass(frozen=True)
class Account:
    """A signed-in user: the wallet (from the hedgehog entropy) and the user."""

    email: str
    entropy: bytes
    user_id: int
    handle: str

    @property
    def wallet(self) -> LocalAccount:
        return hedgehog.wallet_from_entropy(self.entropy)

    @property
    def address(self) -> str:
        return str(self.wallet.address)

    def to_json(self) -> dict[str, Any]:
        """A session to save (it holds the wallet's secret: keep it private)."""
        return {
            "email": self.email,
            "entropy": self.entropy.hex(),
            "user_id": self.user_id,
            "handle": self.handle,
        }

    @classmethod
    def from_json(cls, saved: Mapping[str, Any]) -> Account:
        try:
            return cls(
                email=str(saved["email"]),
                entropy=bytes.fromhex(str(saved["entropy"])),
                user_id=int(saved["user_id"]),
                handle=str(saved["handle"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ColivingError(f"the saved session is damaged ({exc}): log in again") from None


def _new_id(low: int) -> int:
    return low + secrets.randbelow(ID_HIGH - low)


def _error_of(response: httpx.Response) -> ColivingError:
    try:
        message = str(response.json().get("error") or response.text)
    except (ValueError, AttributeError):
        message = response.text or response.reason_phrase
    status = response.status_code
    if status == 404:
        return NotFound(message)
    if status == 429:
        try:
            wait = float(response.headers.get("retry-after", "1"))
        except ValueError:
            wait = 1.0
        return RateLimited(message, wait)
    if status >= 500:
        return Unavailable(f"{message} (HTTP {status})")
    return Refused(message)


class Coliving:
    """A client of the network. Make one with :meth:`connect`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        network: Network,
        nursery: trio.Nursery,
        *,
        node: str | None = None,
        index_timeout: float = 60.0,
    ) -> None:
        self.http = http
        self.network = network
        self.account: Account | None = None
        self.index_timeout = index_timeout
        self._nursery = nursery
        self._node_addr = node or (network.addrs[0] if network.addrs else None)
        self._client: Client | None = None
        self._peer: Any = None
        self._client_lock = trio.Lock()

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        gateway: str,
        *,
        node: str | None = None,
        account: Account | None = None,
        timeout: float = 30.0,  # noqa: ASYNC109 (each HTTP request's, not the call's)
        index_timeout: float = 60.0,
    ) -> AsyncIterator[Coliving]:
        """A client of the discovery node at ``gateway`` (and of the content
        node at ``node``), signed in as ``account`` if given. An error from
        the body comes out as itself, not inside an exception group."""
        try:
            async with (
                httpx.AsyncClient(base_url=gateway.rstrip("/"), timeout=timeout) as http,
                trio.open_nursery() as nursery,  # the libp2p client runs here, when needed
            ):
                network = await _network(http, gateway)
                co = cls(http, network, nursery, node=node, index_timeout=index_timeout)
                co.account = account
                try:
                    yield co
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            leaf = _sole(group)
            if leaf is None:
                raise
            raise leaf from None

    # -- plumbing ---------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(f"{self.http.base_url} does not answer: {exc}") from None
        if response.status_code >= 400:
            raise _error_of(response)
        return response

    async def _data(self, path: str, params: Mapping[str, Any]) -> Any:
        """The ``data`` of a ``/v1`` answer."""
        given = {k: v for k, v in params.items() if v is not None}
        return (await self._request("GET", path, params=given)).json()["data"]

    async def _get(self, path: str, **params: Any) -> dict[str, Any]:
        data = await self._data(path, params)
        if not isinstance(data, dict):
            raise ColivingError(f"{path} answered {type(data).__name__}, not an object")
        return data

    async def _list(self, path: str, **params: Any) -> list[Any]:
        data = await self._data(path, params)
        if not isinstance(data, list):
            raise ColivingError(f"{path} answered {type(data).__name__}, not a list")
        return data

    def _me(self) -> Account:
        if self.account is None:
            raise ColivingError("not signed in: sign up or log in first")
        return self.account

    async def _act(
        self,
        entity_type: str,
        entity_id: int,
        action: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        account: Account | None = None,
        entropy: bytes | None = None,
        user_id: int | None = None,
    ) -> int:
        """Sign one action and relay it; the block it landed in (not yet indexed:
        :meth:`_landed` waits for that)."""
        if account is not None:
            entropy, user_id = account.entropy, account.user_id
        assert entropy is not None and user_id is not None
        wallet = hedgehog.wallet_from_entropy(entropy)
        text = "" if metadata is None else json.dumps(metadata, separators=(",", ":"))
        signed = sign_action(
            wallet.key,
            chain_id=self.network.chain_id,
            contract=self.network.entity_manager,
            user_id=user_id,
            entity_type=entity_type,
            entity_id=entity_id,
            action=action,
            metadata=text,
        )
        body = {
            "contractAddress": self.network.entity_manager,
            "senderAddress": str(wallet.address),
            "encodedABI": "0x" + signed.calldata().hex(),
            "gasLimit": 0,
        }
        sent = (await self._request("POST", "/identity/relay", json=body)).json()
        return int(sent["block"])

    async def _landed(self, path: str, block: int, what: str) -> dict[str, Any]:
        """The ``data`` at ``path`` once ``block`` is indexed (Refused if the
        indexer did not take the action, so nothing is there)."""
        deadline = trio.current_time() + self.index_timeout
        settled = False  # the block is known indexed: the next answer is final
        while True:
            try:
                response = await self.http.get(path)
            except httpx.HTTPError as exc:
                raise Unavailable(f"{self.http.base_url} does not answer: {exc}") from None
            if response.status_code not in (200, 404):
                raise _error_of(response)
            document = response.json()
            if response.status_code == 404:  # an error answer names no block: ask one that does
                if settled:  # indexed, and still not there: refused
                    raise Refused(
                        f"the discovery node did not take the {what} (the indexer "
                        "refused it: see docs/discovery-rules.md)"
                    )
                if await self._indexed_block() >= block:
                    settled = True
                    continue
            elif int(document.get("latest_indexed_block") or 0) >= block:
                data = document.get("data")
                if not isinstance(data, dict):
                    raise ColivingError(f"{path} answered {data!r}, not an object")
                return data
            if trio.current_time() > deadline:
                raise Unavailable(f"block {block} was not indexed in {self.index_timeout:.0f} s")
            await trio.sleep(INDEX_POLL)

    async def _indexed_block(self) -> int:
        """The block the discovery node has indexed up to (any /v1 answer says)."""
        got = await self._request("GET", "/v1/tracks/trending", params={"limit": 1})
        return int(got.json().get("latest_indexed_block") or 0)

    # -- accounts ---------------------------------------------------------------

    async def email_free(self, email: str) -> bool:
        got = await self._request("GET", "/identity/users/check", params={"email": email})
        return not got.json()["exists"]

    async def handle_free(self, handle: str) -> bool:
        got = await self._request("GET", "/identity/users/check", params={"handle": handle})
        return not got.json()["exists"]

    async def signup(
        self,
        email: str,
        password: str,
        *,
        handle: str,
        name: str | None = None,
        bio: str | None = None,
        artwork: Path | None = None,
    ) -> Account:
        """Create a hedgehog account and the user on chain; signed in as it."""
        if not await self.email_free(email):
            raise Refused(f"{email} already has an account: log in instead")
        if not await self.handle_free(handle):
            raise Refused(f"the handle {handle!r} is taken")
        metadata: dict[str, Any] = {"handle": handle}
        if name:
            metadata["name"] = name
        if bio:
            metadata["bio"] = bio
        if artwork is not None:
            metadata["profile_picture"] = await self._artwork(artwork, None)
        entropy, iv, cipher, key = await trio.to_thread.run_sync(_new_account, email, password)
        wallet = hedgehog.wallet_from_entropy(entropy)
        auth = {"iv": iv, "cipherText": cipher, "lookupKey": key}
        await self._request("POST", "/identity/authentication", json=auth)
        user = {"username": email, "walletAddress": str(wallet.address)}
        await self._request("POST", "/identity/user", json=user)
        user_id = _new_id(USER_ID_LOW)
        block = await self._act(
            "User", user_id, "Create", metadata, entropy=entropy, user_id=user_id
        )
        row = await self._landed(f"/v1/users/{user_id}", block, "sign-up")
        self.account = Account(email=email, entropy=entropy, user_id=user_id, handle=row["handle"])
        return self.account

    async def login(self, email: str, password: str) -> Account:
        """Open the account of ``email`` with ``password`` (on any device)."""
        key = await trio.to_thread.run_sync(hedgehog.lookup_key, email, password)
        try:
            got = await self._request(
                "GET", "/identity/authentication", params={"lookupKey": key, "username": email}
            )
        except NotFound:
            raise NotFound("wrong email or password") from None
        auth = got.json()
        try:
            entropy = await trio.to_thread.run_sync(
                hedgehog.decrypt_entropy, password, auth["iv"], auth["cipherText"]
            )
        except hedgehog.WrongPassword:
            raise NotFound("wrong email or password") from None
        address = str(hedgehog.wallet_from_entropy(entropy).address)
        try:
            user = await self._get(f"/v1/users/wallet/{address}")
        except NotFound:
            raise NotFound(
                f"the account of {email} has no user on chain yet (wallet {address})"
            ) from None
        self.account = Account(
            email=email, entropy=entropy, user_id=int(user["id"]), handle=user["handle"]
        )
        return self.account

    async def whoami(self) -> dict[str, Any]:
        """The signed-in user as the discovery node has it."""
        return await self.user(self._me().user_id)

    async def update_profile(self, **fields: Any) -> dict[str, Any]:
        """Change name, bio, location (or ``artwork=Path``) of the signed-in user."""
        me = self._me()
        current = await self.user(me.user_id)
        metadata = {"handle": current["handle"]}
        for name in ("name", "bio", "location", "profile_picture"):
            if current.get(name):
                metadata[name] = current[name]
        artwork = fields.pop("artwork", None)
        if artwork is not None:
            metadata["profile_picture"] = await self._artwork(Path(artwork), None)
        metadata.update({k: v for k, v in fields.items() if v is not None})
        block = await self._act("User", me.user_id, "Update", metadata, account=me)
        return await self._landed(f"/v1/users/{me.user_id}", block, "profile update")

    # -- content ----------------------------------------------------------------

    async def _content_client(self) -> tuple[Client, Any]:
        async with self._client_lock:
            if self._client is None:
                from node import Client

                if self._node_addr is None:
                    raise Unavailable("no content node to talk to: give node=<multiaddr>")
                client = Client()
                await self._nursery.start(client.run)
                try:
                    with trio.fail_after(15):
                        self._peer = await client.connect(self._node_addr)
                except (OSError, trio.TooSlowError, Exception) as exc:
                    raise Unavailable(f"cannot reach {self._node_addr}: {exc}") from None
                self._client = client
            return self._client, self._peer

    async def add_bytes(
        self, data: bytes, *, name: str = "", progress: Callable[[int], None] | None = None
    ) -> str:
        """Upload ``data`` to the content node; its CID (pinned and replicated there)."""
        client, peer = await self._content_client()

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 1 << 20):
                yield data[i : i + (1 << 20)]

        done = await client.upload(peer, chunks(), name=name, size=len(data), progress=progress)
        return str(done.cid)

    async def _artwork(self, path: Path, progress: Callable[[int], None] | None) -> dict[str, str]:
        from media import ARTWORK_SIZES, artwork_variants

        variants = await trio.to_thread.run_sync(artwork_variants, path)
        cids: dict[str, str] = {}
        for size in ARTWORK_SIZES:
            key = f"{size}x{size}"
            cids[key] = await self.add_bytes(variants[size], name=key + ".jpg", progress=progress)
        return cids

    async def upload_track(
        self,
        path: Path,
        *,
        title: str,
        genre: str,
        artwork: Path | None = None,
        mood: str | None = None,
        tags: list[str] | None = None,
        description: str | None = None,
        release_date: str | None = None,
        keep_original: bool = False,
        max_duration: float = 3600.0,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Transcode ``path`` (any common audio file), upload the stream file,
        the 30-second preview and artwork, and publish the track; the track as
        indexed. ``progress(stage, fraction)`` with stage ``"transcode"`` then
        ``"upload"``. Bad audio is a :class:`media.MediaError` before anything
        is uploaded or signed."""
        from media import transcode

        me = self._me()
        report = progress or (lambda stage, fraction: None)
        path = Path(path)
        if artwork is not None:  # a bad image fails here, before the long work
            from media import artwork_variants

            await trio.to_thread.run_sync(artwork_variants, artwork)
        shown = -1.0

        def transcoding(fraction: float) -> None:  # in the worker thread
            nonlocal shown
            if fraction - shown >= 0.01:
                shown = fraction
                trio.from_thread.run_sync(report, "transcode", fraction)

        done = await trio.to_thread.run_sync(
            lambda: transcode(path, max_duration=max_duration, progress=transcoding)
        )
        report("transcode", 1.0)
        total = len(done.stream) + len(done.preview) + (path.stat().st_size if keep_original else 0)
        sent = 0

        def step(n: int) -> None:
            nonlocal sent
            sent += n
            report("upload", min(1.0, sent / max(1, total)))

        metadata: dict[str, Any] = {
            "title": title,
            "genre": genre,
            "duration": round(done.duration, 3),
            "stream_cid": await self.add_bytes(done.stream, name=f"{path.stem}.mp3", progress=step),
            "preview_cid": await self.add_bytes(
                done.preview, name=f"{path.stem}-preview.mp3", progress=step
            ),
        }
        if keep_original:
            original = await trio.Path(path).read_bytes()
            metadata["original_cid"] = await self.add_bytes(original, name=path.name, progress=step)
        if artwork is not None:
            metadata["artwork"] = await self._artwork(artwork, None)
        for name, value in (
            ("mood", mood),
            ("tags", tags),
            ("description", description),
            ("release_date", release_date),
        ):
            if value:
                metadata[name] = value
        report("upload", 1.0)
        track_id = _new_id(TRACK_ID_LOW)
        block = await self._act("Track", track_id, "Create", metadata, account=me)
        return await self._landed(f"/v1/tracks/{track_id}", block, "track upload")

    async def update_track(self, track_id: int, **fields: Any) -> dict[str, Any]:
        """Change a track's title, genre, mood, tags, description or release date."""
        me = self._me()
        block = await self._act(
            "Track", track_id, "Update", {k: v for k, v in fields.items() if v is not None},
            account=me,
        )  # fmt: skip
        track = await self._landed(f"/v1/tracks/{track_id}", block, "track update")
        changed = [k for k, v in fields.items() if v is not None and track.get(k) != v]
        if changed:
            raise Refused(f"the indexer did not take the update of track {track_id}: {changed}")
        return track

    async def delete_track(self, track_id: int) -> None:
        me = self._me()
        await self.track(track_id)  # NotFound for an unknown one
        block = await self._act("Track", track_id, "Delete", account=me)
        await self._gone(f"/v1/tracks/{track_id}", block, f"delete of track {track_id}")

    async def _gone(self, path: str, block: int, what: str) -> None:
        try:
            await self._landed(path, block, what)
        except Refused:
            return  # 404 once indexed: gone, as asked
        raise Refused(f"the indexer did not take the {what} (is it yours?)")

    # -- playlists and albums ------------------------------------------------------

    async def create_playlist(
        self,
        name: str,
        track_ids: list[int] | None = None,
        *,
        album: bool = False,
        description: str | None = None,
        artwork: Path | None = None,
    ) -> dict[str, Any]:
        me = self._me()
        metadata: dict[str, Any] = {"playlist_name": name, "track_ids": list(track_ids or [])}
        if description:
            metadata["description"] = description
        if artwork is not None:
            metadata["artwork"] = await self._artwork(artwork, None)
        playlist_id = _new_id(PLAYLIST_ID_LOW)
        kind = "Album" if album else "Playlist"
        block = await self._act(kind, playlist_id, "Create", metadata, account=me)
        return await self._landed(f"/v1/playlists/{playlist_id}", block, kind.lower())

    async def update_playlist(
        self,
        playlist_id: int,
        *,
        name: str | None = None,
        track_ids: list[int] | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        """Rename, reorder, add or remove tracks (the whole new list)."""
        me = self._me()
        current = await self.playlist(playlist_id)
        kind = "Album" if current.get("is_album") else "Playlist"
        metadata: dict[str, Any] = {
            "playlist_name": name or current["playlist_name"],
            "track_ids": list(current.get("track_ids") or []) if track_ids is None else track_ids,
        }
        if description is not None or current.get("description"):
            metadata["description"] = description or current["description"]
        if current.get("artwork"):
            metadata["artwork"] = current["artwork"]
        block = await self._act(kind, playlist_id, "Update", metadata, account=me)
        got = await self._landed(f"/v1/playlists/{playlist_id}", block, "playlist update")
        # the index lists live tracks only: a deleted one drops out of the list
        if not set(got.get("track_ids") or []) <= set(metadata["track_ids"]) or (
            metadata["track_ids"] and not got.get("track_ids")
        ):
            raise Refused(f"the indexer did not take the update of playlist {playlist_id}")
        return got

    async def add_to_playlist(self, playlist_id: int, track_id: int) -> dict[str, Any]:
        current = await self.playlist(playlist_id)
        tracks = [*list(current.get("track_ids") or []), track_id]
        return await self.update_playlist(playlist_id, track_ids=tracks)

    async def delete_playlist(self, playlist_id: int) -> None:
        me = self._me()
        current = await self.playlist(playlist_id)
        kind = "Album" if current.get("is_album") else "Playlist"
        block = await self._act(kind, playlist_id, "Delete", account=me)
        await self._gone(f"/v1/playlists/{playlist_id}", block, f"delete of {kind.lower()}")

    # -- social -----------------------------------------------------------------

    async def _social(self, entity_type: str, item_id: int, action: str) -> None:
        me = self._me()
        block = await self._act(entity_type, item_id, action, account=me)
        await self._landed(f"/v1/users/{me.user_id}", block, action.lower())

    async def follow(self, user_id: int) -> None:
        await self._social("User", user_id, "Follow")

    async def unfollow(self, user_id: int) -> None:
        await self._social("User", user_id, "Unfollow")

    async def repost(self, item_id: int, kind: Kind = "track") -> None:
        await self._social(_ENTITY[kind], item_id, "Repost")

    async def unrepost(self, item_id: int, kind: Kind = "track") -> None:
        await self._social(_ENTITY[kind], item_id, "Unrepost")

    async def save(self, item_id: int, kind: Kind = "track") -> None:
        await self._social(_ENTITY[kind], item_id, "Save")

    async def unsave(self, item_id: int, kind: Kind = "track") -> None:
        await self._social(_ENTITY[kind], item_id, "Unsave")

    async def listen(self, track_id: int) -> dict[str, Any]:
        """Report a play: signed by the signed-in user, anonymous otherwise."""
        body: dict[str, Any] = {"track_id": track_id}
        if self.account is not None:
            now = int(time.time())
            signature = sign_listen(
                self.account.wallet.key,
                chain_id=self.network.chain_id,
                user_id=self.account.user_id,
                track_id=track_id,
                timestamp=now,
            )
            body.update(user_id=self.account.user_id, timestamp=now, signature=signature.hex())
        got = await self._request("POST", f"/v1/tracks/{track_id}/listen", json=body)
        data: dict[str, Any] = got.json()["data"]
        return data

    # -- queries ----------------------------------------------------------------

    async def user(self, user_id: int) -> dict[str, Any]:
        return await self._get(f"/v1/users/{int(user_id)}")

    async def user_by_handle(self, handle: str) -> dict[str, Any]:
        return await self._get(f"/v1/users/handle/{handle}")

    async def resolve_user(self, who: str | int) -> dict[str, Any]:
        """A user by id, or by handle (with or without a leading @)."""
        if isinstance(who, int) or str(who).isdigit():
            return await self.user(int(who))
        return await self.user_by_handle(str(who).removeprefix("@"))

    async def user_tracks(self, user_id: int, *, limit: int = 10, offset: int = 0) -> list[Any]:
        return await self._list(f"/v1/users/{int(user_id)}/tracks", limit=limit, offset=offset)

    async def user_playlists(self, user_id: int, *, limit: int = 10, offset: int = 0) -> list[Any]:
        return await self._list(f"/v1/users/{int(user_id)}/playlists", limit=limit, offset=offset)

    async def followers(self, user_id: int, *, limit: int = 10, offset: int = 0) -> list[Any]:
        return await self._list(f"/v1/users/{int(user_id)}/followers", limit=limit, offset=offset)

    async def following(self, user_id: int, *, limit: int = 10, offset: int = 0) -> list[Any]:
        return await self._list(f"/v1/users/{int(user_id)}/following", limit=limit, offset=offset)

    async def feed(self, *, limit: int = 10, offset: int = 0) -> list[Any]:
        """The signed-in user's feed: tracks and reposts of whom they follow."""
        me = self._me()
        return await self._list(f"/v1/users/{me.user_id}/feed", limit=limit, offset=offset)

    async def track(self, track_id: int) -> dict[str, Any]:
        return await self._get(f"/v1/tracks/{int(track_id)}")

    async def reposters(self, track_id: int, *, limit: int = 10, offset: int = 0) -> list[Any]:
        return await self._list(f"/v1/tracks/{int(track_id)}/reposts", limit=limit, offset=offset)

    async def savers(self, track_id: int, *, limit: int = 10, offset: int = 0) -> list[Any]:
        return await self._list(f"/v1/tracks/{int(track_id)}/favorites", limit=limit, offset=offset)

    async def playlist(self, playlist_id: int) -> dict[str, Any]:
        return await self._get(f"/v1/playlists/{int(playlist_id)}")

    async def playlist_tracks(
        self, playlist_id: int, *, limit: int = 10, offset: int = 0
    ) -> list[Any]:
        path = f"/v1/playlists/{int(playlist_id)}/tracks"
        return await self._list(path, limit=limit, offset=offset)

    async def search(
        self,
        query: str,
        kind: Literal["tracks", "users", "playlists"] = "tracks",
        *,
        limit: int = 10,
        offset: int = 0,
    ) -> list[Any]:
        return await self._list(f"/v1/{kind}/search", query=query, limit=limit, offset=offset)

    async def trending(
        self,
        time: Literal["week", "month", "allTime"] = "week",
        *,
        genre: str | None = None,
        limit: int = 10,
        offset: int = 0,
    ) -> list[Any]:
        return await self._list(
            "/v1/tracks/trending", time=time, genre=genre, limit=limit, offset=offset
        )

    def stream_url(self, track_id: int) -> str:
        """The gateway URL a player opens (a redirect to ``/ipfs/<stream CID>``)."""
        return f"{self.http.base_url}/v1/tracks/{int(track_id)}/stream"

    async def stream(
        self, track_id: int, *, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """The stream file of a track, bytes [start, end), fetched over Bitswap
        from whichever nodes hold it; every block is checked against its CID."""
        track = await self.track(track_id)
        async for chunk in self.fetch(str(track["stream_cid"]), start=start, end=end):
            yield chunk

    async def fetch(
        self, cid: str, *, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Verified bytes [start, end) of the file ``cid``."""
        from protocols.cid import CID
        from protocols.errors import DecodingError

        try:
            root = CID.parse(cid)
        except DecodingError as exc:
            raise ColivingError(f"{cid!r} is not a CID: {exc}") from None
        client, peer = await self._content_client()
        providers = await client.providers_from(peer, root)
        if peer not in providers:
            providers.append(peer)
        fetch = client.bitswap.fetch(root, providers, start=start, end=end)
        async for chunk in fetch.leaves():
            yield chunk


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside (nested) groups of one, if that is what it is."""
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup):
        if len(inner.exceptions) != 1:
            return None
        inner = inner.exceptions[0]
    return inner


def _new_account(email: str, password: str) -> tuple[bytes, str, str, str]:
    """Entropy, iv, cipherText, lookupKey of a new hedgehog account (slow: scrypt)."""
    entropy = hedgehog.create_wallet()
    iv, cipher = hedgehog.encrypt_entropy(password, entropy)
    return entropy, iv, cipher, hedgehog.lookup_key(email, password)


async def _network(http: httpx.AsyncClient, gateway: str) -> Network:
    try:
        response = await http.get("/health")
    except httpx.HTTPError as exc:
        raise Unavailable(f"no node answers at {gateway}: {exc}") from None
    if response.status_code != 200:
        raise Unavailable(f"{gateway}/health answered {response.status_code}")
    try:
        health = response.json()["health"]
        discovery = health["discovery"]
        if not discovery:
            raise Unavailable(f"{gateway} is not a discovery node (no discovery role)")
        return Network(
            chain_id=int(discovery["chain_id"]),
            entity_manager=str(discovery["entity_manager"]),
            peer_id=str(health["peer_id"]),
            addrs=tuple(str(a) for a in health.get("addrs", [])),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise Unavailable(f"{gateway}/health is not a Coliving node's ({exc})") from None
