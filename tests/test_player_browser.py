"""A real browser plays a track from the gateway's web player and seeks.

Debian's ``chromium`` (``make test`` installs it when missing, see the
Makefile) is driven by npm ``playwright-core`` from tools/js/player_check.mjs.
The test checks, on the gateway's side, that the seek was a Range request
answered 206.
"""

from __future__ import annotations

import io
import json
import shutil
import wave
from pathlib import Path

import pytest
import trio

from cli.sample import sample_wav
from simnet.local import start_nodes
from tests.conftest import chunks

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
NODE22 = ROOT / "node_modules" / ".bin" / "node"
SCRIPT = ROOT / "tools" / "js" / "player_check.mjs"
PLAYWRIGHT = ROOT / "node_modules" / "playwright-core"


def _node_binary() -> str | None:
    return str(NODE22) if NODE22.exists() else shutil.which("node")


pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian chromium is not installed and could not be "
        "(`make test` runs `apt-get install chromium` as root when it is missing)",
    ),
    pytest.mark.skipif(
        not PLAYWRIGHT.exists() or _node_binary() is None,
        reason="npm dev dependencies missing: run `npm ci` (make test does)",
    ),
]


def long_wav(repeat: int) -> bytes:
    """The sample track ``repeat`` times over: long enough that the browser has
    not buffered the end when it seeks there."""
    with wave.open(io.BytesIO(sample_wav()), "rb") as src:
        params = src.getparams()
        frames = src.readframes(src.getnframes())
    out = io.BytesIO()
    with wave.open(out, "wb") as dst:
        dst.setparams(params)
        dst.writeframes(frames * repeat)
    return out.getvalue()


async def test_browser_plays_and_seeks_with_range_requests(tmp_path: Path) -> None:
    track = long_wav(8)  # about 3 minutes, 34 MB
    node_bin = _node_binary()
    assert node_bin is not None
    async with trio.open_nursery() as nursery:
        (node,) = await start_nodes(nursery, tmp_path, 1, gateway="127.0.0.1:0")
        root = await node.add(chunks(track), name="sample.wav")
        assert node.gateway is not None and node.gateway.player_url is not None
        with trio.fail_after(120):
            result = await trio.run_process(
                [
                    node_bin,
                    str(SCRIPT),
                    "--chromium",
                    str(CHROMIUM),
                    "--user-data-dir",
                    str(tmp_path / "chromium-profile"),
                    "--timeout-ms",
                    "90000",
                    node.gateway.player_url,
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=ROOT,
            )
        recent = list(node.gateway.app.recent)
        nursery.cancel_scope.cancel()
    lines = result.stdout.decode().strip().splitlines()
    assert lines, result.stderr.decode()[-3000:]
    report = json.loads(lines[-1])
    assert result.returncode == 0 and report["ok"], (report, result.stderr.decode()[-3000:])
    assert report["played_to"] > 0.5
    assert report["after_seek"] > report["seek_target"]
    media = [r for r in recent if r.path == f"/ipfs/{root}"]
    assert media, recent
    # The seek went past what was buffered: a Range request from there, answered 206.
    seek_byte = int(len(track) * report["seek_target"] / report["duration"])
    seeks = [
        r
        for r in media
        if r.status == 206
        and r.range is not None
        and int(r.range.removeprefix("bytes=").split("-")[0] or 0) >= seek_byte // 2
    ]
    assert seeks, [(r.range, r.status, r.bytes) for r in media]
