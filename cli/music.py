"""The artist's and fan's commands, on the SDK (:mod:`sdk`).

``coliving account signup|login|whoami|logout``, ``coliving track
upload|list|delete``, ``coliving playlist create|add|show``, and
``follow``, ``unfollow``, ``repost``, ``save``, ``search``, ``trending``,
``feed``, ``play``.

They talk to a discovery node's gateway: ``--gateway URL``, else
``$COLIVING_GATEWAY``, else the one the last ``login`` used. ``login`` and
``signup`` keep the session in ``<home>/session.json`` (``$COLIVING_HOME``,
else ``~/.coliving``; mode 0600): it holds the wallet's secret, as the
browser's hedgehog keeps it in local storage. The password is asked for
(``$COLIVING_PASSWORD`` is taken, for scripts). ``play`` writes the verified
stream to stdout, so ``coliving play 2000123 | ffplay -nodisp -`` plays;
everything else goes to stderr but listings, which are tables on stdout.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import trio
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeElapsedColumn
from rich.table import Table

from sdk import Account, Coliving, ColivingError

T = TypeVar("T")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

account_app = typer.Typer(help="Sign up, log in, and who you are.", no_args_is_help=True)
track_app = typer.Typer(help="Upload, list and delete tracks.", no_args_is_help=True)
playlist_app = typer.Typer(help="Create and edit playlists and albums.", no_args_is_help=True)

AUDIO_HELP = "An audio file: wav, flac, aiff, mp3, m4a, ogg, opus."
Gateway = Annotated[
    str | None,
    typer.Option(
        "--gateway",
        "-g",
        help="A discovery node's gateway URL (env COLIVING_GATEWAY, else the last login's).",
    ),
]
ContentNode = Annotated[
    str | None,
    typer.Option(
        "--node",
        "-n",
        help="A content node's multiaddr for uploads and streams (default: the discovery "
        "node's own).",
    ),
]


def home() -> Path:
    env = os.environ.get("COLIVING_HOME")
    return Path(env) if env else Path.home() / ".coliving"


def session_path() -> Path:
    return home() / "session.json"


def load_session() -> dict[str, Any]:
    path = session_path()
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ColivingError(f"{path} is damaged ({exc}): log in again") from None
    return saved if isinstance(saved, dict) else {}


def save_session(gateway: str, node: str | None, account: Account) -> None:
    path = session_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"gateway": gateway, "node": node, "account": account.to_json()}
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(document, fh)
    tmp.replace(path)


def _gateway(given: str | None, session: dict[str, Any]) -> str:
    gateway = given or os.environ.get("COLIVING_GATEWAY") or session.get("gateway")
    if not gateway:
        raise ColivingError(
            "which discovery node? pass --gateway http://HOST:PORT or set COLIVING_GATEWAY "
            "(`coliving devnet` prints one)"
        )
    return str(gateway) if "://" in str(gateway) else f"http://{gateway}"


def _password(confirm: bool = False) -> str:
    env = os.environ.get("COLIVING_PASSWORD")
    if env:
        return env
    return str(typer.prompt("password", hide_input=True, confirmation_prompt=confirm))


def run(
    body: Callable[[Coliving], Awaitable[T]],
    gateway: str | None,
    node: str | None = None,
    *,
    signed_in: bool = True,
) -> T:
    """Connect (as the saved session's user if ``signed_in``), run ``body``,
    and turn what a user can act on into one line of error."""
    from media import MediaError

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    try:
        session = load_session()
        url = _gateway(gateway, session)
        account = None
        if signed_in:
            if "account" not in session:
                raise ColivingError("not logged in: `coliving account login EMAIL` first")
            account = Account.from_json(session["account"])
        node = node or session.get("node")

        async def main() -> T:
            async with Coliving.connect(url, node=node, account=account) as co:
                return await body(co)

        return trio.run(main)
    except (ColivingError, MediaError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("stopped")
        raise typer.Exit(130) from None


# -- account -------------------------------------------------------------------


@account_app.command("signup")
def signup(
    email: Annotated[str, typer.Argument(help="Your email (with the password, your log-in).")],
    handle: Annotated[str, typer.Option(help="Your @handle: a-z, 0-9, _ and ., up to 30.")],
    name: Annotated[str | None, typer.Option(help="Your display name.")] = None,
    bio: Annotated[str | None, typer.Option(help="A few words about you.")] = None,
    artwork: Annotated[
        Path | None, typer.Option(help="A profile picture.", exists=True, dir_okay=False)
    ] = None,
    gateway: Gateway = None,
    node: ContentNode = None,
) -> None:
    """Create an account (no ETH needed: the relay pays) and log in."""
    password = _password(confirm=True)
    url = _gateway(gateway, {})

    async def body(co: Coliving) -> Account:
        return await co.signup(email, password, handle=handle, name=name, bio=bio, artwork=artwork)

    account = run(body, url, node, signed_in=False)
    save_session(url, node, account)
    err.print(f"signed up as @{account.handle} (user {account.user_id}, wallet {account.address})")


@account_app.command("login")
def login(
    email: Annotated[str, typer.Argument(help="The email you signed up with.")],
    gateway: Gateway = None,
    node: ContentNode = None,
) -> None:
    """Log in on this machine: your wallet is recovered from your email and password."""
    password = _password()
    url = _gateway(gateway, load_session() if gateway is None else {})
    account = run(lambda co: co.login(email, password), url, node, signed_in=False)
    save_session(url, node, account)
    err.print(f"logged in as @{account.handle} (user {account.user_id})")


@account_app.command("whoami")
def whoami(gateway: Gateway = None) -> None:
    """Who is logged in, as the discovery node sees them."""
    user = run(lambda co: co.whoami(), gateway)
    _users_table("you", [user])


@account_app.command("logout")
def logout() -> None:
    """Forget the session on this machine (the account stays)."""
    path = session_path()
    if path.exists():
        path.unlink()
        err.print("logged out")
    else:
        err.print("not logged in")


# -- tracks --------------------------------------------------------------------


@track_app.command("upload")
def upload(
    file: Annotated[Path, typer.Argument(help=AUDIO_HELP, exists=True, dir_okay=False)],
    title: Annotated[str, typer.Option(help="The track's title.")],
    genre: Annotated[str, typer.Option(help="A genre, e.g. Electronic, Hip-Hop/Rap, Jazz.")],
    artwork: Annotated[
        Path | None, typer.Option(help="Cover art (any image).", exists=True, dir_okay=False)
    ] = None,
    mood: Annotated[str | None, typer.Option(help="A mood, e.g. Peaceful.")] = None,
    tags: Annotated[str | None, typer.Option(help="Comma-separated tags.")] = None,
    description: Annotated[str | None, typer.Option(help="A description.")] = None,
    gateway: Gateway = None,
    node: ContentNode = None,
) -> None:
    """Transcode FILE to a 320 kbps stream and a 30 s preview, upload them and
    the artwork, and publish the track; prints its id."""
    tag_list = [t.strip() for t in tags.split(",") if t.strip()] if tags else None

    async def body(co: Coliving) -> dict[str, Any]:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=err,
        ) as bar:
            tasks = {
                "transcode": bar.add_task("transcode", total=1.0),
                "upload": bar.add_task("upload", total=1.0),
            }

            def progress(stage: str, fraction: float) -> None:
                bar.update(tasks[stage], completed=fraction)

            return await co.upload_track(
                file,
                title=title,
                genre=genre,
                artwork=artwork,
                mood=mood,
                tags=tag_list,
                description=description,
                progress=progress,
            )

    track = run(body, gateway, node)
    err.print(f"published {track['title']!r} ({track['duration']:.1f} s)")
    typer.echo(track["id"])


@track_app.command("list")
def track_list(
    who: Annotated[str | None, typer.Argument(help="A @handle or user id (default: you).")] = None,
    limit: Annotated[int, typer.Option(help="How many.")] = 20,
    gateway: Gateway = None,
) -> None:
    """A user's tracks."""

    async def body(co: Coliving) -> list[Any]:
        user_id = co.account.user_id if who is None and co.account else None
        if user_id is None:
            user_id = (await co.resolve_user(who or "")).get("id")
        return await co.user_tracks(int(user_id or 0), limit=limit)

    _tracks_table("tracks", run(body, gateway, signed_in=who is None))


@track_app.command("delete")
def track_delete(
    track_id: Annotated[int, typer.Argument(help="The track's id.")], gateway: Gateway = None
) -> None:
    """Delete one of your tracks (it disappears from every listing)."""
    run(lambda co: co.delete_track(track_id), gateway)
    err.print(f"deleted track {track_id}")


# -- playlists -----------------------------------------------------------------


@playlist_app.command("create")
def playlist_create(
    name: Annotated[str, typer.Argument(help="The playlist's name.")],
    tracks: Annotated[list[int] | None, typer.Argument(help="Track ids, in order.")] = None,
    album: Annotated[bool, typer.Option("--album", help="An album (of your tracks).")] = False,
    description: Annotated[str | None, typer.Option(help="A description.")] = None,
    gateway: Gateway = None,
) -> None:
    """Create a playlist (or an album); prints its id."""
    got = run(
        lambda co: co.create_playlist(
            name, list(tracks or []), album=album, description=description
        ),
        gateway,
    )
    typer.echo(got["id"])


@playlist_app.command("add")
def playlist_add(
    playlist_id: Annotated[int, typer.Argument(help="The playlist's id.")],
    track_id: Annotated[int, typer.Argument(help="The track to add at the end.")],
    gateway: Gateway = None,
) -> None:
    """Add a track to the end of one of your playlists."""
    got = run(lambda co: co.add_to_playlist(playlist_id, track_id), gateway)
    err.print(f"{got['playlist_name']!r} has {len(got.get('track_ids') or [])} tracks")


@playlist_app.command("show")
def playlist_show(
    playlist_id: Annotated[int, typer.Argument(help="The playlist's id.")],
    gateway: Gateway = None,
) -> None:
    """A playlist and its tracks."""

    async def body(co: Coliving) -> tuple[dict[str, Any], list[Any]]:
        return await co.playlist(playlist_id), await co.playlist_tracks(playlist_id, limit=100)

    playlist, tracks = run(body, gateway, signed_in=False)
    _tracks_table(playlist["playlist_name"], tracks)


# -- social, search, playback ------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add the music commands to the ``coliving`` command line."""
    app.add_typer(account_app, name="account")
    app.add_typer(track_app, name="track")
    app.add_typer(playlist_app, name="playlist")
    for command in (follow, unfollow, repost, save, search, trending, feed, play):
        app.command()(command)


def follow(
    who: Annotated[str, typer.Argument(help="A @handle or user id.")], gateway: Gateway = None
) -> None:
    """Follow a user: their tracks and reposts come to your feed."""

    async def body(co: Coliving) -> str:
        user = await co.resolve_user(who)
        await co.follow(int(user["id"]))
        return str(user["handle"])

    err.print(f"following @{run(body, gateway)}")


def unfollow(
    who: Annotated[str, typer.Argument(help="A @handle or user id.")], gateway: Gateway = None
) -> None:
    """Stop following a user."""

    async def body(co: Coliving) -> str:
        user = await co.resolve_user(who)
        await co.unfollow(int(user["id"]))
        return str(user["handle"])

    err.print(f"no longer following @{run(body, gateway)}")


def repost(
    track_id: Annotated[int, typer.Argument(help="The track's id.")], gateway: Gateway = None
) -> None:
    """Repost a track to your followers."""
    run(lambda co: co.repost(track_id), gateway)
    err.print(f"reposted track {track_id}")


def save(
    track_id: Annotated[int, typer.Argument(help="The track's id.")], gateway: Gateway = None
) -> None:
    """Save a track to your favorites."""
    run(lambda co: co.save(track_id), gateway)
    err.print(f"saved track {track_id}")


def search(
    query: Annotated[str, typer.Argument(help="Words, or the start of them.")],
    users: Annotated[bool, typer.Option("--users", help="Search users.")] = False,
    playlists: Annotated[bool, typer.Option("--playlists", help="Search playlists.")] = False,
    limit: Annotated[int, typer.Option(help="How many.")] = 10,
    gateway: Gateway = None,
) -> None:
    """Search tracks (or users, or playlists) by title, name or tags."""
    kind: Literal["tracks", "users", "playlists"] = (
        "users" if users else "playlists" if playlists else "tracks"
    )
    found = run(lambda co: co.search(query, kind, limit=limit), gateway, signed_in=False)
    if kind == "users":
        _users_table(f"users matching {query!r}", found)
    elif kind == "playlists":
        _playlists_table(f"playlists matching {query!r}", found)
    else:
        _tracks_table(f"tracks matching {query!r}", found)


def trending(
    genre: Annotated[str | None, typer.Option(help="Only this genre.")] = None,
    week: Annotated[bool, typer.Option("--week", help="This week (the default).")] = False,
    month: Annotated[bool, typer.Option("--month", help="This month.")] = False,
    all_time: Annotated[bool, typer.Option("--all-time", help="All time.")] = False,
    limit: Annotated[int, typer.Option(help="How many.")] = 10,
    gateway: Gateway = None,
) -> None:
    """Trending tracks (plays, reposts and saves, newer counting more)."""
    del week
    window = "month" if month else "allTime" if all_time else "week"
    found = run(
        lambda co: co.trending(window, genre=genre, limit=limit),  # type: ignore[arg-type]
        gateway,
        signed_in=False,
    )
    _tracks_table(f"trending ({window}{', ' + genre if genre else ''})", found, score=True)


def feed(
    limit: Annotated[int, typer.Option(help="How many.")] = 20, gateway: Gateway = None
) -> None:
    """New tracks and reposts from the people you follow."""
    items = run(lambda co: co.feed(limit=limit), gateway)
    table = Table(title="your feed")
    for column in ("what", "id", "title", "by", "when"):
        table.add_column(column)
    for item in items:
        thing = item.get("item") or {}
        table.add_row(
            f"{item.get('activity', '')} {item.get('item_kind', '')}".strip(),
            str(thing.get("id", "")),
            str(thing.get("title") or thing.get("playlist_name") or ""),
            _by(thing),
            _when(item.get("activity_at")),
        )
    out.print(table)


def play(
    track_id: Annotated[int, typer.Argument(help="The track's id.")],
    gateway: Gateway = None,
    node: ContentNode = None,
) -> None:
    """Write a track's stream (MP3, every block verified) to stdout and count
    the play; pipe it to a player: ``coliving play ID | ffplay -nodisp -``."""
    if sys.stdout.isatty():
        err.print("[red]error:[/red] stdout is a terminal: pipe it to a player or a file")
        raise typer.Exit(2)
    session = load_session()
    signed_in = "account" in session

    async def body(co: Coliving) -> int:
        sent = 0
        sink = sys.stdout.buffer
        async for chunk in co.stream(track_id):
            await trio.to_thread.run_sync(sink.write, chunk)
            sent += len(chunk)
        await trio.to_thread.run_sync(sink.flush)
        await co.listen(track_id)
        return sent

    try:
        sent = run(body, gateway, node, signed_in=signed_in)
    except BrokenPipeError:  # the player quit: fine
        raise typer.Exit(0) from None
    err.print(f"played {sent:,} bytes")


# -- tables --------------------------------------------------------------------


def _when(at: Any) -> str:
    import datetime

    if not isinstance(at, int | float):
        return ""
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M")


def _by(item: dict[str, Any]) -> str:
    owner = item.get("user") or {}
    return f"@{owner['handle']}" if isinstance(owner, dict) and owner.get("handle") else ""


def _tracks_table(title: str, tracks: list[Any], *, score: bool = False) -> None:
    table = Table(title=title)
    columns = ["id", "title", "by", "genre", "length", "plays", "reposts", "saves"]
    for column in [*columns, *(["score"] if score else [])]:
        table.add_column(column, justify="right" if column in ("id", "plays") else "left")
    for t in tracks:
        length = float(t.get("duration") or 0)
        row = [
            str(t.get("id", "")),
            str(t.get("title", "")),
            _by(t),
            str(t.get("genre", "")),
            f"{int(length // 60)}:{int(length % 60):02d}",
            str(t.get("play_count", 0)),
            str(t.get("repost_count", 0)),
            str(t.get("favorite_count", 0)),
        ]
        if score:
            row.append(f"{float(t.get('score') or 0):.2f}")
        table.add_row(*row)
    out.print(table)


def _users_table(title: str, users: list[Any]) -> None:
    table = Table(title=title)
    for column in ("id", "handle", "name", "followers", "following", "tracks"):
        table.add_column(column)
    for u in users:
        table.add_row(
            str(u.get("id", "")),
            f"@{u.get('handle', '')}",
            str(u.get("name") or ""),
            str(u.get("follower_count", 0)),
            str(u.get("followee_count", 0)),
            str(u.get("track_count", 0)),
        )
    out.print(table)


def _playlists_table(title: str, playlists: list[Any]) -> None:
    table = Table(title=title)
    for column in ("id", "name", "by", "tracks", "album"):
        table.add_column(column)
    for p in playlists:
        table.add_row(
            str(p.get("id", "")),
            str(p.get("playlist_name", "")),
            _by(p),
            str(len(p.get("track_ids") or [])),
            "yes" if p.get("is_album") else "",
        )
    out.print(table)
