"""The compiled contracts: ABI and bytecode from ``chain/artifacts/<Name>.json``.

The artifacts are committed, written by ``node tools/js/compile_contracts.mjs``
from ``chain/contracts/*.sol`` (a test proves they match a fresh compile), so
running a node needs no Solidity compiler.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from eth_typing import ABI

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"

TOKEN = "ColivingToken"
SERVICE_TYPE_MANAGER = "ServiceTypeManager"
REGISTRY = "ServiceProviderRegistry"
ENTITY_MANAGER = "EntityManager"
CONTRACT_NAMES = (TOKEN, SERVICE_TYPE_MANAGER, REGISTRY, ENTITY_MANAGER)


@dataclass(frozen=True)
class Artifact:
    """One compiled contract."""

    name: str
    abi: ABI
    bytecode: str  # 0x-prefixed creation code
    compiler: str


@functools.cache
def load_artifact(name: str) -> Artifact:
    """The artifact of contract ``name``; ``FileNotFoundError`` if there is none."""
    path = ARTIFACTS_DIR / f"{name}.json"
    raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("contractName") != name or not str(raw.get("bytecode", "")).startswith("0x"):
        raise ValueError(f"{path} is not the artifact of {name}")
    return Artifact(
        name=name,
        abi=cast(ABI, raw["abi"]),
        bytecode=str(raw["bytecode"]),
        compiler=str(raw["compiler"]),
    )


def load_abi(name: str) -> ABI:
    return load_artifact(name).abi


def load_bytecode(name: str) -> str:
    return load_artifact(name).bytecode


def all_artifacts() -> tuple[Artifact, ...]:
    """Every artifact on disk (ours and any added later), sorted by name."""
    return tuple(load_artifact(p.stem) for p in sorted(ARTIFACTS_DIR.glob("*.json")))
