"""Node identity: one secp256k1 key, seen as a libp2p peer ID and an Ethereum address.

The key file holds the 32-byte secret, hex encoded, mode 0600. The same key
signs Noise handshakes (so the peer ID is authenticated on every connection)
and is the operator's delegate wallet on chain; the address is derived from
the peer ID alone, with no extra round trip.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import NewType

import coincurve
from Crypto.Hash import keccak

PeerId = NewType("PeerId", str)
KEY_FILE = "node.key"


class KeyFileError(Exception):
    """The key file is missing, unreadable, malformed or too widely readable."""


def eth_address_of(public_key: coincurve.PublicKey) -> str:
    """EIP-55 checksummed address of a secp256k1 public key."""
    raw = public_key.format(compressed=False)[1:]
    digest = keccak.new(digest_bits=256, data=raw).digest()
    return to_checksum(digest[-20:].hex())


def to_checksum(hex_address: str) -> str:
    lower = hex_address.lower().removeprefix("0x")
    hashed = keccak.new(digest_bits=256, data=lower.encode()).hexdigest()
    return "0x" + "".join(c.upper() if int(hashed[i], 16) >= 8 else c for i, c in enumerate(lower))


@dataclass(frozen=True)
class NodeKey:
    """A secp256k1 private key. Never printed: ``repr`` hides the secret."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise KeyFileError("a secp256k1 secret is 32 bytes")

    def __repr__(self) -> str:
        return f"NodeKey(address={self.eth_address})"

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(coincurve.PrivateKey().secret)

    @property
    def public_key(self) -> coincurve.PublicKey:
        return coincurve.PrivateKey(self.secret).public_key

    @property
    def eth_address(self) -> str:
        return eth_address_of(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return bytes(coincurve.PrivateKey(self.secret).sign(data))

    # -- the key file ---------------------------------------------------------

    @classmethod
    def create(cls, data_dir: Path, *, overwrite: bool = False) -> NodeKey:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = data_dir / KEY_FILE
        if path.exists() and not overwrite:
            raise KeyFileError(f"{path} already exists; refusing to replace a node identity")
        key = cls.generate()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key.secret.hex() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return key

    @classmethod
    def load(cls, data_dir: Path) -> NodeKey:
        path = data_dir / KEY_FILE
        try:
            mode = path.stat().st_mode
            text = path.read_text().strip()
        except FileNotFoundError:
            raise KeyFileError(f"no node key in {data_dir}: run `coliving init` first") from None
        except OSError as exc:
            raise KeyFileError(f"cannot read {path}: {exc}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"{path} is readable by others: chmod 600 it")
        try:
            secret = bytes.fromhex(text)
        except ValueError:
            raise KeyFileError(f"{path} is not a hex secp256k1 secret") from None
        return cls(secret)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> NodeKey:
        if (data_dir / KEY_FILE).exists():
            return cls.load(data_dir)
        return cls.create(data_dir)
