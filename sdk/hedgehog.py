"""Hedgehog's client-side crypto in Python, byte-compatible with ``@audius/hedgehog`` 2.1.0.

A hedgehog account keeps the wallet's secret with the user: the server
stores only what these functions produce, and cannot open it.

- ``lookup_key(email, password)``: hex scrypt of ``lower(email) + ":::" +
  password`` with the fixed salt LOOKUP_SALT (the UTF-8 bytes of that
  string, 0x included), N=32768, r=8, p=1, 32 bytes. The server files the
  account under it; knowing it takes knowing both.
- the wallet is a 16-byte BIP39 entropy: its English mnemonic, that
  mnemonic's seed (no passphrase), the key at ``m/44'/60'/0'/0/0``.
- ``encrypt_entropy(password, entropy)``: a random 16-byte iv, key =
  scrypt(password, salt = the UTF-8 bytes of the iv's *hex string*), the
  same parameters; cipherText = AES-256-CBC (PKCS#7) of
  ``"hedgehog-entropy:::" + entropy hex``. The prefix is how a wrong
  password is told from a right one: it fails the padding or the prefix.

Strings are UTF-8 (the npm client's ``Buffer.from``); the email is
lowercased with ``str.lower``, which is JavaScript's ``toLowerCase`` for
the ASCII addresses the identity service accepts. Hex is lowercase, no 0x,
as the npm client writes it. Pure functions: nothing here talks to a server.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Final

from Crypto.Cipher import AES
from Crypto.Util.Padding import pad, unpad
from eth_account import Account
from eth_account.hdaccount import ETHEREUM_DEFAULT_PATH
from eth_account.hdaccount.deterministic import HDPath
from eth_account.hdaccount.mnemonic import Mnemonic
from eth_account.signers.local import LocalAccount
from eth_account.types import Language

__all__ = [
    "WALLET_PATH",
    "WrongPassword",
    "create_wallet",
    "decrypt_entropy",
    "encrypt_entropy",
    "lookup_key",
    "recover_wallet",
    "wallet_from_entropy",
]

LOOKUP_SALT: Final = "0x4f7242b39969c3ac4c6712524d633ce9"  # hedgehog's, fixed for every account
ENTROPY_PREFIX: Final = "hedgehog-entropy:::"
WALLET_PATH: Final = ETHEREUM_DEFAULT_PATH  # m/44'/60'/0'/0/0
SCRYPT_N: Final = 32768
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
KEY_BYTES: Final = 32
SCRYPT_MAXMEM: Final = 64 * 2**20  # the work needs 32 MiB (128 * N * r); hashlib's default is 32
ENTROPY_BYTES: Final = 16  # what hedgehog makes: a 12-word mnemonic
_BIP39_ENTROPY: Final = frozenset({16, 20, 24, 28, 32})


class WrongPassword(ValueError):
    """The password does not open this cipherText (or the cipherText is not hedgehog's)."""


def _scrypt(secret: str, salt: str) -> bytes:
    return hashlib.scrypt(
        secret.encode("utf-8"),
        salt=salt.encode("utf-8"),
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        dklen=KEY_BYTES,
        maxmem=SCRYPT_MAXMEM,
    )


def lookup_key(email: str, password: str) -> str:
    """The account's lookupKey: 64 lowercase hex digits."""
    return _scrypt(f"{email.lower()}:::{password}", LOOKUP_SALT).hex()


def create_wallet() -> bytes:
    """A new wallet's secret: 16 random bytes of BIP39 entropy."""
    return secrets.token_bytes(ENTROPY_BYTES)


def encrypt_entropy(password: str, entropy: bytes) -> tuple[str, str]:
    """``(iv_hex, cipher_hex)``: what the server stores as ``iv`` and ``cipherText``."""
    _check_entropy(entropy)
    iv = secrets.token_bytes(AES.block_size)
    iv_hex = iv.hex()
    cipher = AES.new(_scrypt(password, iv_hex), AES.MODE_CBC, iv)
    plain = (ENTROPY_PREFIX + entropy.hex()).encode("utf-8")
    return iv_hex, cipher.encrypt(pad(plain, AES.block_size)).hex()


def decrypt_entropy(password: str, iv_hex: str, cipher_hex: str) -> bytes:
    """The entropy that ``encrypt_entropy`` sealed (WrongPassword if it does not open)."""
    try:
        iv = bytes.fromhex(iv_hex)
        sealed = bytes.fromhex(cipher_hex)
    except ValueError:
        raise ValueError("iv and cipherText must be hex") from None
    if len(iv) != AES.block_size or not sealed or len(sealed) % AES.block_size:
        raise ValueError("iv must be 16 bytes and cipherText whole AES blocks")
    plain = AES.new(_scrypt(password, iv_hex), AES.MODE_CBC, iv).decrypt(sealed)
    try:
        text = unpad(plain, AES.block_size).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise WrongPassword("wrong password: the cipherText does not decrypt") from None
    if not text.startswith(ENTROPY_PREFIX):
        raise WrongPassword("wrong password: the decrypted text is not hedgehog's")
    try:
        entropy = bytes.fromhex(text[len(ENTROPY_PREFIX) :])
    except ValueError:
        raise WrongPassword("wrong password: the decrypted entropy is not hex") from None
    if len(entropy) not in _BIP39_ENTROPY:
        raise WrongPassword("wrong password: the decrypted entropy is not BIP39's")
    return entropy


def wallet_from_entropy(entropy: bytes) -> LocalAccount:
    """The account hedgehog derives: BIP39 mnemonic, seed, ``m/44'/60'/0'/0/0``."""
    _check_entropy(entropy)
    words = Mnemonic(Language.ENGLISH).to_mnemonic(entropy)
    seed = Mnemonic.to_seed(words, passphrase="")
    account: LocalAccount = Account.from_key(HDPath(WALLET_PATH).derive(seed))
    return account


def recover_wallet(password: str, iv_hex: str, cipher_hex: str) -> LocalAccount:
    """A log-in's last step: the wallet of a stored ``{iv, cipherText}``."""
    return wallet_from_entropy(decrypt_entropy(password, iv_hex, cipher_hex))


def _check_entropy(entropy: bytes) -> None:
    if len(entropy) not in _BIP39_ENTROPY:
        raise ValueError(f"BIP39 entropy is 16 to 32 bytes in steps of 4, not {len(entropy)}")
