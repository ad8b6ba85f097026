"""The committed contract artifacts are exactly what the pinned solc-js builds.

``node tools/js/compile_contracts.mjs --check`` recompiles chain/contracts/*.sol
in memory with the npm ``solc`` from package.json and fails if any file in
chain/artifacts differs, is missing or has no source.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "js" / "compile_contracts.mjs"


def _pinned(package: str) -> str:
    manifest = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))
    return str(manifest["devDependencies"][package])


def test_artifacts_match_a_fresh_compile() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    installed = ROOT / "node_modules" / "solc" / "package.json"
    if not installed.exists():
        pytest.skip("node_modules/solc is missing: run `npm ci` to check the artifacts")
    version = json.loads(installed.read_text(encoding="utf-8"))["version"]
    assert version == _pinned("solc"), "node_modules is stale: run `npm ci`"
    result = subprocess.run(
        [node, str(SCRIPT), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "match a fresh compile" in result.stdout


def test_pins_are_exact_and_consistent() -> None:
    """solc in package.json, the pragma and the artifacts name one compiler version."""
    solc = _pinned("solc")
    for package in ("solc", "@openzeppelin/contracts", "@foundry-rs/anvil"):
        assert _pinned(package)[0].isdigit(), f"{package} must be pinned exactly"
    for source in sorted((ROOT / "chain" / "contracts").glob("*.sol")):
        assert f"pragma solidity {solc};" in source.read_text(encoding="utf-8"), source.name
    for artifact in sorted((ROOT / "chain" / "artifacts").glob("*.json")):
        meta = json.loads(artifact.read_text(encoding="utf-8"))
        assert meta["compiler"].startswith(f"{solc}+"), artifact.name
        assert meta["evmVersion"] == "cancun"
