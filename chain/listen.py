"""A listen signed by the listener's wallet: its canonical message, signing, recovery.

The message a wallet signs (EIP-191 ``personal_sign``, version 0x45) is this
UTF-8 text, each value a decimal integer with no sign, no leading zeros and
no spaces, lines joined by ``\\n`` with none at the end::

    coliving-listen/1
    chain_id:<chain id>
    user_id:<user id>
    track_id:<track id>
    timestamp:<unix seconds>

Text, so that a wallet shows the listener what it signs. The domain tag keeps
a listen signature from being replayed as anything else the wallet signs
(and the reverse), and the chain id keeps one network's listens off another.
The text is a function of the four numbers, so it doubles as the listen's
identity: :func:`listen_message` is what the discovery node hashes.
"""

from __future__ import annotations

from typing import Final

from eth_account import Account
from eth_account.messages import encode_defunct

DOMAIN: Final = "coliving-listen/1"
SIGNATURE_LEN: Final = 65


def listen_message(*, chain_id: int, user_id: int, track_id: int, timestamp: int) -> bytes:
    """The canonical text of a listen (see the module docstring)."""
    for name, value in (
        ("chain_id", chain_id),
        ("user_id", user_id),
        ("track_id", track_id),
        ("timestamp", timestamp),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"listen {name} must be a non-negative integer, not {value!r}")
    return (
        f"{DOMAIN}\nchain_id:{chain_id}\nuser_id:{user_id}\n"
        f"track_id:{track_id}\ntimestamp:{timestamp}"
    ).encode()


def sign_listen(
    private_key: bytes | str, *, chain_id: int, user_id: int, track_id: int, timestamp: int
) -> bytes:
    """The 65-byte signature (r || s || v) of the listen by ``private_key``."""
    message = listen_message(
        chain_id=chain_id, user_id=user_id, track_id=track_id, timestamp=timestamp
    )
    signed = Account.sign_message(encode_defunct(primitive=message), private_key)
    return bytes(signed.signature)


def recover_listen(
    signature: bytes, *, chain_id: int, user_id: int, track_id: int, timestamp: int
) -> str | None:
    """The wallet (0x, lowercase) that signed this listen, or None if
    ``signature`` is not a recoverable signature at all.

    Any well-formed signature recovers to *some* address: the caller compares
    it with the user's wallet."""
    if len(signature) != SIGNATURE_LEN:
        return None
    message = listen_message(
        chain_id=chain_id, user_id=user_id, track_id=track_id, timestamp=timestamp
    )
    try:
        address = Account.recover_message(encode_defunct(primitive=message), signature=signature)
    except Exception:  # eth_keys raises several types for a bad v, r or s
        return None
    return str(address).lower()
