"""The SDK end to end, on real nodes: a discovery + identity + content node
(alice) and a second staked content node (bob) on the embedded chain, the SDK
over HTTP (alice's gateway) and libp2p (uploads, verified streams).

An artist signs up through the SDK and uploads a flac with artwork; a fan
finds it by search, follows the artist, sees it in the feed, streams it (the
bytes of the stream file, whole and by range), reposts and saves it, builds a
playlist; trending reflects the listen and the repost. Also: log-in on a new
client recovers the account; refusals (a taken handle, someone else's track, a
wrong password, bad audio before anything is signed); the blocking client; the
CLI on the same node; the README's examples.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from media import MediaError
from node import Node
from sdk import Coliving, ColivingSync, NotFound, Refused
from tests.audio import write_image, write_tone
from tests.test_identity import PASSWORD, WAIT, network

ROOT = Path(__file__).resolve().parent.parent


def handle() -> str:
    return f"u{secrets.token_hex(5)}"


def email() -> str:
    return f"{handle()}@example.com"


@dataclass
class Files:
    flac: Path
    artwork: Path
    text: Path


@pytest.fixture
def files(tmp_path: Path) -> Files:
    text = tmp_path / "notes.txt"
    text.write_text("not a song\n" * 100)
    return Files(
        flac=write_tone(tmp_path / "song.flac", 4.0, rate=48000),
        artwork=write_image(tmp_path / "cover.png", (640, 400)),
        text=text,
    )


@contextlib.asynccontextmanager
async def client(node: Node, **kw: Any) -> AsyncIterator[Coliving]:
    assert node.gateway_url is not None
    async with Coliving.connect(node.gateway_url, **kw) as co:
        yield co


async def test_artist_and_fan_end_to_end(tmp_path: Path, files: Files) -> None:
    async with network(tmp_path) as net:
        alice = net.alice
        assert alice.discovery is not None
        with trio.fail_after(WAIT):
            async with client(alice) as artist:
                a = await artist.signup(email(), PASSWORD, handle=handle(), name="The Artist")
                stages: list[str] = []
                track = await artist.upload_track(
                    files.flac,
                    title="Quiet Harbour Lights",
                    genre="Electronic",
                    artwork=files.artwork,
                    tags=["calm"],
                    progress=lambda stage, fraction: stages.append(stage),
                )
                assert {"transcode", "upload"} <= set(stages)
                assert track["user"]["id"] == a.user_id
                assert abs(track["duration"] - 4.0) < 0.05
                assert set(track["artwork"]) == {"150x150", "480x480", "1000x1000"}
                # every output is content on the node, pinned
                for cid in [track["stream_cid"], track["preview_cid"], *track["artwork"].values()]:
                    assert cid in {str(p.cid) for p in alice.store.pins()}
                album = await artist.create_playlist("First EP", [track["id"]], album=True)
                assert album["is_album"] and album["track_ids"] == [track["id"]]
                renamed = await artist.update_playlist(album["id"], name="First EP (2026)")
                assert renamed["playlist_name"] == "First EP (2026)"
                stream_file = b"".join([c async for c in artist.fetch(track["stream_cid"])])
                assert stream_file[:3] == b"ID3" or stream_file[0] == 0xFF  # an MP3

            async with client(alice) as fan:
                f = await fan.signup(email(), PASSWORD, handle=handle())
                found = await fan.search("harb")  # a prefix of a word of the title
                assert [t["id"] for t in found] == [track["id"]]
                await fan.follow(a.user_id)
                feed = await fan.feed()
                assert {(i["activity"], i["item_kind"], i["item"]["id"]) for i in feed} == {
                    ("upload", "track", track["id"]),
                    ("upload", "playlist", album["id"]),
                }
                got = b"".join([c async for c in fan.stream(track["id"])])
                assert got == stream_file
                part = b"".join([c async for c in fan.stream(track["id"], start=1000, end=5000)])
                assert part == stream_file[1000:5000]
                heard = await fan.listen(track["id"])
                assert heard["accepted"]
                await fan.repost(track["id"])
                await fan.save(track["id"])
                playlist = await fan.create_playlist("Night drive", [track["id"]])
                assert playlist["track_ids"] == [track["id"]]
                assert [u["id"] for u in await fan.reposters(track["id"])] == [f.user_id]
                assert [u["id"] for u in await fan.followers(a.user_id)] == [f.user_id]

                await alice.discovery.refresh_trending()
                trending = await fan.trending("week")
                assert trending and trending[0]["id"] == track["id"]
                top = trending[0]
                assert top["play_count"] == 1 and top["repost_count"] == 1 and top["score"] > 0
                assert (await fan.trending("week", genre="Electronic"))[0]["id"] == track["id"]
                assert await fan.trending("week", genre="Jazz") == []

            # a new client (another device) logs in and gets the same account
            async with client(alice) as again:
                back = await again.login(a.email, PASSWORD)
                assert (back.user_id, back.address) == (a.user_id, a.address)
                assert [t["id"] for t in await again.user_tracks(a.user_id)] == [track["id"]]
                with pytest.raises(NotFound, match="wrong email or password"):
                    await again.login(a.email, PASSWORD + "!")


async def test_refusals(tmp_path: Path, files: Files) -> None:
    async with network(tmp_path) as net:
        with trio.fail_after(WAIT):
            async with client(net.alice) as co:
                name = handle()
                artist = await co.signup(email(), PASSWORD, handle=name)
                with pytest.raises(Refused, match="already has an account"):
                    await co.signup(artist.email, PASSWORD, handle=handle())
                with pytest.raises(Refused, match="taken"):
                    await co.signup(email(), PASSWORD, handle=name.upper())
                # bad audio: refused before anything is uploaded or signed
                before = net.alice.store.stats().blocks
                head = await net.chain.block_number()
                for bad in (files.text, files.artwork):
                    with pytest.raises(MediaError):
                        await co.upload_track(bad, title="x", genre="Electronic")
                with pytest.raises(MediaError):
                    await co.upload_track(
                        files.flac, title="x", genre="Electronic", artwork=files.text
                    )
                assert net.alice.store.stats().blocks == before
                assert await net.chain.block_number() == head
                # an unknown genre: the indexer refuses the action; the SDK says so
                with pytest.raises(Refused, match="did not take"):
                    await co.upload_track(files.flac, title="x", genre="Polka")
                track = await co.upload_track(files.flac, title="Mine", genre="Jazz")

            async with client(net.alice) as other:
                await other.signup(email(), PASSWORD, handle=handle())
                with pytest.raises(Refused, match="did not take"):
                    await other.delete_track(track["id"])
                with pytest.raises(Refused, match="did not take"):
                    await other.update_track(track["id"], title="Stolen")
                with pytest.raises(NotFound):
                    await other.track(10**12)

            async with client(net.alice, account=artist) as co:
                await co.update_track(track["id"], title="Mine, renamed")
                assert (await co.track(track["id"]))["title"] == "Mine, renamed"
                await co.delete_track(track["id"])
                with pytest.raises(NotFound):
                    await co.track(track["id"])


def test_blocking_client(tmp_path: Path, files: Files) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            url = net.alice.gateway_url
            assert url is not None

            def script() -> tuple[int, list[int], int]:
                with ColivingSync(url) as co:
                    co.signup(email(), PASSWORD, handle=handle())
                    track = co.upload_track(files.flac, title="Plain Script", genre="Folk")
                    found = [t["id"] for t in co.search("plain script")]
                    size = sum(len(chunk) for chunk in co.stream(track["id"]))
                    return track["id"], found, size

            with trio.fail_after(WAIT):
                track_id, found, size = await trio.to_thread.run_sync(script)
            assert found == [track_id] and size > 10_000

    trio.run(main)


# -- the CLI on the same node ------------------------------------------------------


async def coliving(home: Path, url: str, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    env = {
        **os.environ,
        "COLIVING_HOME": str(home),
        "COLIVING_GATEWAY": url,
        "COLIVING_PASSWORD": PASSWORD,
        "COLUMNS": "200",
    }
    done = await trio.run_process(
        [sys.executable, "-c", "import node; node.main()", *args],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        stdin=stdin,
    )
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode()


@pytest.mark.slow
async def test_cli(tmp_path: Path, files: Files) -> None:
    async with network(tmp_path) as net:
        url = net.alice.gateway_url
        assert url is not None
        artist_home, fan_home = tmp_path / "artist", tmp_path / "fan"
        artist, fan = handle(), handle()
        with trio.fail_after(3 * WAIT):
            rc, out, err = await coliving(
                artist_home, url, "account", "signup", email(), "--handle", artist
            )
            assert rc == 0, err
            assert (artist_home / "session.json").stat().st_mode & 0o077 == 0
            rc, out, err = await coliving(
                artist_home, url, "track", "upload", str(files.flac), "--title", "Tidal Song",
                "--genre", "Ambient", "--artwork", str(files.artwork),
            )  # fmt: skip
            assert rc == 0, err
            track_id = out.strip().splitlines()[-1]
            assert track_id.isdigit() and "upload" in err
            rc, out, err = await coliving(artist_home, url, "track", "list")
            assert rc == 0 and "Tidal Song" in out, err
            rc, out, err = await coliving(artist_home, url, "account", "whoami")
            assert rc == 0 and f"@{artist}" in out, err

            assert (await coliving(fan_home, url, "account", "signup", email(), "--handle", fan))[
                0
            ] == 0
            for args in (["follow", f"@{artist}"], ["repost", track_id], ["save", track_id]):
                rc, out, err = await coliving(fan_home, url, *args)
                assert rc == 0, (args, err)
            rc, out, err = await coliving(fan_home, url, "search", "tidal")
            assert rc == 0 and "Tidal Song" in out and track_id in out, err
            rc, out, err = await coliving(fan_home, url, "feed")
            assert rc == 0 and "Tidal Song" in out, err
            rc, out, err = await coliving(fan_home, url, "playlist", "create", "Mix", track_id)
            assert rc == 0, err
            playlist_id = out.strip()
            rc, out, err = await coliving(fan_home, url, "playlist", "show", playlist_id)
            assert rc == 0 and "Tidal Song" in out, err
            done = await trio.run_process(
                [sys.executable, "-c", "import node; node.main()", "play", track_id],
                env={**os.environ, "COLIVING_HOME": str(fan_home), "COLIVING_GATEWAY": url},
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert done.returncode == 0, done.stderr.decode()
            track = (await net.http.get(f"/v1/tracks/{track_id}")).json()["data"]
            streamed = b""
            async with httpx.AsyncClient(base_url=url, follow_redirects=True) as http:
                streamed = (await http.get(f"/v1/tracks/{track_id}/stream")).content
            assert done.stdout == streamed and len(streamed) > 10_000
            assert track["play_count"] == 1
            # refusals are one line, exit 1
            rc, out, err = await coliving(fan_home, url, "track", "delete", track_id)
            assert rc == 1 and "error:" in err and "Traceback" not in err
            rc, out, err = await coliving(fan_home, url, "track", "upload", str(files.text),
                                          "--title", "x", "--genre", "Ambient")  # fmt: skip
            assert rc == 1 and "not an audio file" in err and "Traceback" not in err
            rc, out, err = await coliving(tmp_path / "nobody", url, "feed")
            assert rc == 1 and "not logged in" in err


# -- the README's examples -----------------------------------------------------------


def readme_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_sdk_examples() -> None:
    examples = readme_examples()
    assert len(examples) >= 2
    assert any("ColivingSync" in e for e in examples)
    assert any("async with Coliving.connect" in e for e in examples)


@pytest.mark.slow
def test_readme_examples_run(tmp_path: Path, files: Files) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            assert net.alice.gateway_url is not None
            env = {
                **os.environ,
                "COLIVING_GATEWAY": net.alice.gateway_url,
                "COLIVING_EMAIL": email(),
                "COLIVING_PASSWORD": PASSWORD,
                "COLIVING_HANDLE": handle(),
                "SONG": str(files.flac),
            }
            for example in readme_examples():
                with trio.fail_after(WAIT):
                    done = await trio.run_process(
                        [sys.executable, "-c", example],
                        env=env,
                        cwd=tmp_path,
                        capture_stdout=True,
                        capture_stderr=True,
                        check=False,
                    )
                assert done.returncode == 0, (example, done.stderr.decode()[-3000:])

    trio.run(main)


@pytest.mark.slow
async def test_identity_run_on_anvil(anvil_url: str, tmp_path: Path, files: Files) -> None:
    """`coliving identity run --relay-key` in its own process on a real anvil: the
    SDK signs up and publishes through it (the relay on its own RPC pool)."""
    from eth_account import Account

    from chain.local import open_chain

    chain = await open_chain(anvil_url)
    deployment = tmp_path / "deployment.json"
    deployment.write_text(chain.deployment.to_json())
    key = tmp_path / "relay.key"
    key.write_text("0x" + secrets.token_hex(32) + "\n")
    key.chmod(0o600)
    await chain.fund(Account.from_key(key.read_text().strip()).address, 10 * 10**18)
    data_dir = tmp_path / "identity"
    data_dir.mkdir()
    (data_dir / "node.toml").write_text("[discovery]\npoll_interval = 0.05\n")
    args = ["identity", "run", "--relay-key", str(key), "--data-dir", str(data_dir), "--rpc",
            anvil_url, "--deployment", str(deployment), "--gateway", "127.0.0.1:0"]  # fmt: skip
    async with trio.open_nursery() as nursery:
        process = await nursery.start(
            functools.partial(
                trio.run_process,
                [sys.executable, "-c", "import node; node.main()", *args],
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                check=False,
            )
        )
        try:
            with trio.fail_after(WAIT):
                url, said = None, b""
                assert process.stderr is not None
                while url is None or b"identity: accounts" not in said:
                    chunk = await process.stderr.receive_some()
                    assert chunk, said.decode(errors="replace")
                    said += chunk
                    if found := re.search(rb"gateway (http://\S+)", said):
                        url = found.group(1).decode()
                assert b"with a gas relay" in said
                async with Coliving.connect(url) as co:
                    await co.signup(email(), PASSWORD, handle=handle())
                    track = await co.upload_track(files.flac, title="Anvil Song", genre="Rock")
                    assert [t["id"] for t in await co.search("anvil song")] == [track["id"]]
                async with httpx.AsyncClient() as http:
                    metrics = (await http.get(f"{url}/metrics")).text
                assert re.search(r"coliving_relay_relayed_total(\{\})? 2\.0", metrics), metrics
        finally:
            process.terminate()
