"""Our importer gives the CIDs IPFS's reference importer gives.

tests/vectors/unixfs_cids.json was made by ``node tools/js/cid_vectors.mjs``
(npm ipfs-unixfs-importer, ``{cidVersion: 1, rawLeaves: true}``, default
chunker and layout), not by this code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from protocols.cid import CID
from protocols.unixfs import FileImporter, decode_file_node
from tests.conftest import pattern

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors" / "unixfs_cids.json").read_text()
)["vectors"]


def test_vectors_cover_the_cases_the_issue_names() -> None:
    sizes = {v["size"] for v in VECTORS}
    assert {0, 1, 262_144, 262_145, 10 << 20} <= sizes
    assert any(v["size"] > 174 * 262_144 and v["depth"] == 2 for v in VECTORS)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['size']}B")
def test_cid_matches_reference_importer(vector: dict[str, Any]) -> None:
    importer = FileImporter()
    data = pattern(vector["size"])
    blocks = []
    # Feed in uneven slices: the result must not depend on how bytes arrive.
    step = 100_003
    for start in range(0, len(data), step):
        blocks += importer.feed(data[start : start + step])
    root, tail = importer.finish()
    blocks += tail
    assert str(root) == vector["cid"]
    assert root.codec_name == vector["root_codec"]
    leaves = [b for b in blocks if b.cid.codec_name == "raw"]
    assert len(leaves) == vector["leaves"]
    assert str(leaves[0].cid) == vector["first_leaf_cid"]
    by_cid = {b.cid: b.data for b in blocks}
    if "root_block_hex" in vector:
        assert by_cid[root].hex() == vector["root_block_hex"]
    if root.codec_name == "dag-pb":
        node = decode_file_node(by_cid[root])
        assert node.filesize == vector["size"]
        assert len(node.links) == vector["root_links"]


def test_parse_round_trips_reference_cids() -> None:
    for vector in VECTORS:
        assert str(CID.parse(vector["cid"])) == vector["cid"]
