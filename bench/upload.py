"""Upload to searchable: a 5-minute track from a file to a search result.

On a real node here (discovery + identity + content roles, the embedded
chain, hypercorn on 127.0.0.1), an artist signed up through the SDK uploads
a generated ``--minutes`` stereo 44.1 kHz flac with artwork:
:meth:`sdk.Coliving.upload_track` transcodes it (320 kbps MP3 and a 30 s
preview), makes the artwork, uploads every output over libp2p, signs the
Track Create, relays it and waits until it is indexed; the clock stops when
a search for its title finds it. Printed next to, in the same run:

- the transcode alone (:func:`media.transcode` on the same file), and
- the decode alone (PyAV reading the flac, no encoding): the floor of any
  transcode, the baseline.

``python -m bench.upload [--minutes 5 --rounds 3]``.
"""

from __future__ import annotations

import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from bench.transcode import arguments, decode_only, transcode_once
from sdk import Coliving


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def decode_seconds(path: Path) -> float:
    return decode_only(path)[0]


def transcode_seconds(path: Path) -> float:
    return transcode_once(path)[0]


async def main(minutes: float, rounds: int) -> None:
    from tests.audio import write_image, write_tone
    from tests.test_identity import PASSWORD, network

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        song = write_tone(base / "song.flac", minutes * 60)
        art = write_image(base / "cover.png", (1400, 1400))
        _say(f"{song.name}: {minutes:g} min, {song.stat().st_size / 1e6:.1f} MB")
        decodes: list[float] = []
        transcodes: list[float] = []
        uploads: list[float] = []
        async with network(base / "node") as net:
            assert net.alice.gateway_url is not None
            async with Coliving.connect(net.alice.gateway_url) as co:
                await co.signup(f"bench{secrets.token_hex(3)}@example.com", PASSWORD,
                                handle=f"bench_{secrets.token_hex(3)}")  # fmt: skip
                for r in range(rounds):
                    decodes.append(await trio.to_thread.run_sync(decode_seconds, song))
                    transcodes.append(await trio.to_thread.run_sync(transcode_seconds, song))
                    title = f"Bench Tone {secrets.token_hex(4)}"
                    t0 = time.perf_counter()
                    track = await co.upload_track(song, title=title, genre="Ambient", artwork=art)
                    found = [t["id"] for t in await co.search(title)]
                    uploads.append(time.perf_counter() - t0)
                    if track["id"] not in found:  # upload_track returns once it is indexed
                        raise RuntimeError(f"{title!r} is not found by search: {found}")
                    _say(
                        f"  round {r + 1}: decode {decodes[-1]:.2f} s, transcode "
                        f"{transcodes[-1]:.2f} s, upload to searchable {uploads[-1]:.2f} s"
                    )
    seconds = minutes * 60
    dec, tra, up = (statistics.median(x) for x in (decodes, transcodes, uploads))
    print(f"upload to searchable, a {minutes:g}-minute flac with artwork ({rounds} rounds, median)")
    print(f"  decode alone (baseline)       {dec:7.2f} s  ({seconds / dec:6.0f}x real time)")
    print(f"  transcode alone (both files)  {tra:7.2f} s  ({seconds / tra:6.0f}x real time)"
          f"  {tra / dec:5.1f}x the decode")  # fmt: skip
    print(f"  upload to searchable          {up:7.2f} s  {up / dec:5.1f}x the decode, "
          f"{up - tra:.2f} s beyond the transcode")  # fmt: skip


def cli() -> None:
    args = arguments(__doc__ or "")
    trio.run(main, args.minutes, args.rounds)


if __name__ == "__main__":
    cli()
