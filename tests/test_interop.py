"""A stock JavaScript IPFS peer (Helia 7 + @helia/bitswap) fetches from a Coliving node.

Helia runs under the Node 22 binary that ``npm ci`` installs (npm package
``node@22``); see tools/js/helia_fetch.mjs. It dials the node over TCP +
Noise + Yamux, learns ``/ipfs/bitswap/1.2.0`` through identify, and fetches
the file by CID over Bitswap with no other routing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from simnet.local import start_nodes
from tests.conftest import chunks

ROOT = Path(__file__).resolve().parent.parent
NODE22 = ROOT / "node_modules" / ".bin" / "node"
FETCH = ROOT / "tools" / "js" / "helia_fetch.mjs"

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        not NODE22.exists(), reason="npm dev dependencies missing: run `npm ci` (make test does)"
    ),
]


@pytest.mark.parametrize("size", [1000, 3 * 262_144 + 17, 50 * 262_144])
async def test_helia_fetches_by_cid_from_a_coliving_node(tmp_path: Path, size: int) -> None:
    payload = os.urandom(size)
    out = tmp_path / "fetched.bin"
    async with trio.open_nursery() as nursery:
        (node,) = await start_nodes(nursery, tmp_path, 1)
        root = await node.add(chunks(payload), name="interop")
        with trio.fail_after(90):
            result = await trio.run_process(
                [
                    str(NODE22),
                    str(FETCH),
                    "--timeout-ms",
                    "60000",
                    node.host.addrs()[0],
                    str(root),
                    str(out),
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=ROOT,
            )
        nursery.cancel_scope.cancel()
    report = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert result.returncode == 0 and report["ok"], (report, result.stderr.decode()[-2000:])
    assert report["bytes"] == size
    assert out.read_bytes() == payload
    assert node.bitswap.stats.blocks_served >= 1
