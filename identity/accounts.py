"""Hedgehog accounts: the identity service's checks and limits over :mod:`store.identity`.

What a hedgehog client does (see :mod:`sdk.hedgehog` for the same in
Python) and what is checked here, route by route (the HTTP side is
:mod:`gateway.identity`):

``save_auth`` (``POST /identity/authentication``)
    ``{"iv", "cipherText", "lookupKey"[, "oldLookupKey"]}``: iv 32 hex
    characters, lookupKey (and oldLookupKey) 64, cipherText a whole number
    of AES blocks (32 hex characters each), at most MAX_CIPHER_HEX. Hex is
    stored lowercase. A new lookupKey that exists is 409; with oldLookupKey
    (a password change) that row is replaced, 404 if it is not there.
``login`` (``GET /identity/authentication?lookupKey=``)
    the stored ``{"iv", "cipherText", "lookupKey"}``, or 404.
``auth_exists`` (``GET /identity/authentication/check?lookupKey=``)
``add_user`` (``POST /identity/user``)
    ``{"username": email, "walletAddress": 0x address}``: the email is
    ``local@domain.tld`` in ASCII, at most 254 characters (64 before the
    @), stored lowercase; the address is 0x and 40 hex digits, mixed case
    only with a valid EIP-55 checksum. A registered email or wallet is 409.
``email_exists`` / ``handle_exists`` (``GET /identity/users/check``)
    a handle is free if the discovery index has no user with it; one the
    discovery rules would refuse (shape, reserved) is a 400. Free now does
    not reserve it: the chain decides between two sign-ups that race.

Limits (token buckets, :class:`discovery.listens.TokenBuckets`): a log-in
(``login`` and ``auth_exists``, which answer the same question) takes a
token per client address, then one per lookup key, so neither one address
nor many addresses at one key can guess fast; each sign-up write
(``save_auth``, ``add_user``) takes one per client address; ``users/check``
one per client address from a bucket of its own. An exhausted bucket is
:class:`~discovery.listens.RateLimited` (a 429 with ``Retry-After``). The
address bucket is taken before the input is looked at, so malformed
requests cost their sender too.

Counters for /metrics: ``signups``, ``auths_saved``, ``password_changes``,
``logins`` (by outcome: found, not_found, rate_limited, malformed),
``rate_limited`` (by bucket) and ``refused`` (by reason).
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import trio
from eth_utils.address import is_checksum_address

from discovery.listens import RateLimited, TokenBuckets
from discovery.rules import _HANDLE, RESERVED_HANDLES
from identity.relay import RelayConfig
from store.identity import IdentityStore, NoSuchAuth, Taken

__all__ = [
    "Accounts",
    "BadInput",
    "Conflict",
    "IdentityConfig",
    "IdentityRefused",
    "NotFound",
    "RateLimited",
    "parse_email",
    "parse_hex",
    "parse_wallet",
]

T = TypeVar("T")

LOOKUP_KEY_HEX: Final = 64  # scrypt's 32 bytes
IV_HEX: Final = 32  # AES's 16-byte block
MAX_CIPHER_HEX: Final = 1024  # hedgehog's is 128 (the 51-byte plaintext padded to 64 bytes)
MAX_EMAIL: Final = 254  # RFC 5321's path limit, less the brackets
MAX_EMAIL_LOCAL: Final = 64
_HEX: Final = re.compile(r"[0-9a-fA-F]*")
_EMAIL: Final = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,63}"
)
_ADDRESS: Final = re.compile(r"0x[0-9a-fA-F]{40}")

AUTH_KEYS: Final = frozenset({"iv", "cipherText", "lookupKey", "oldLookupKey"})
USER_KEYS: Final = frozenset({"username", "walletAddress"})


class IdentityRefused(ValueError):
    """A request the service will not do; ``status`` is its HTTP status."""

    status = 400

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # a short label for /metrics


class BadInput(IdentityRefused):
    status = 400


class NotFound(IdentityRefused):
    status = 404


class Conflict(IdentityRefused):
    status = 409


class HandleIndex(Protocol):
    """What the handle check reads: the discovery index (store.index.IndexStore)."""

    def user_by_handle(self, handle: str, /) -> Mapping[str, Any] | None: ...


@dataclass(frozen=True)
class IdentityConfig:
    """``[identity]`` of node.toml (rates are tokens a second, bursts whole tokens)."""

    # a file holding the relay wallet's hex private key; None: this node relays nothing
    relay_key_file: Path | None = None
    login_ip_rate: float = 1.0  # log-in attempts a second per client address
    login_ip_burst: int = 30
    login_key_rate: float = 0.1  # log-in attempts a second per lookup key
    login_key_burst: int = 10
    signup_ip_rate: float = 0.05  # sign-up writes a second per client address
    signup_ip_burst: int = 20
    check_ip_rate: float = 2.0  # users/check a second per client address
    check_ip_burst: int = 60
    max_clients: int = 65_536  # buckets kept per kind; the least recent are forgotten
    relay: RelayConfig = field(default_factory=RelayConfig)

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in ("relay_key_file", "relay"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"identity {f.name} must be a number, not {value!r}")
            if not 0 < value < math.inf:
                raise ValueError(f"identity {f.name} must be positive")
            if f.name.endswith(("_burst", "max_clients")) and not isinstance(value, int):
                raise ValueError(f"identity {f.name} must be a whole number")
        if self.relay_key_file is not None and not isinstance(self.relay_key_file, Path):
            raise ValueError("identity relay_key_file must be a path")
        if not isinstance(self.relay, RelayConfig):
            raise ValueError("identity relay must be a RelayConfig")


# -- shapes ------------------------------------------------------------------


def parse_hex(value: object, name: str, *, length: int | None = None) -> str:
    """``value`` as lowercase hex (no 0x) of exactly ``length`` characters, if given."""
    if not isinstance(value, str):
        raise BadInput(f"{name} must be a hex string", reason="malformed")
    if not _HEX.fullmatch(value) or not value:
        raise BadInput(f"{name} must be hex digits (no 0x)", reason="malformed")
    if length is not None and len(value) != length:
        raise BadInput(f"{name} must be {length} hex digits, not {len(value)}", reason="malformed")
    return value.lower()


def parse_cipher(value: object) -> str:
    text = parse_hex(value, "cipherText")
    if len(text) % IV_HEX or len(text) > MAX_CIPHER_HEX:
        raise BadInput(
            f"cipherText must be whole AES blocks ({IV_HEX} hex digits each), "
            f"at most {MAX_CIPHER_HEX} digits",
            reason="malformed",
        )
    return text


def parse_email(value: object, name: str = "email") -> str:
    """An email address, lowercased (see the module doc for the shape)."""
    if not isinstance(value, str):
        raise BadInput(f"{name} must be an email address", reason="malformed")
    if len(value) > MAX_EMAIL:
        raise BadInput(f"{name} is longer than {MAX_EMAIL} characters", reason="malformed")
    if not _EMAIL.fullmatch(value) or len(value.partition("@")[0]) > MAX_EMAIL_LOCAL:
        raise BadInput(f"{name} is not an email address (name@domain.tld)", reason="malformed")
    return value.lower()


def parse_wallet(value: object, name: str = "walletAddress") -> str:
    """A 0x address, lowercased; mixed case must be a valid EIP-55 checksum."""
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise BadInput(f"{name} must be 0x and 40 hex digits", reason="malformed")
    digits = value[2:]
    if digits != digits.lower() and digits != digits.upper() and not is_checksum_address(value):
        raise BadInput(
            f"{name} has a wrong EIP-55 checksum (a mistyped address?)", reason="malformed"
        )
    return value.lower()


def parse_handle(value: object) -> str:
    """A handle the discovery rules would take (shape, not reserved), as given."""
    if not isinstance(value, str) or not _HANDLE.fullmatch(value):
        raise BadInput("handle must be 1-30 of a-z, 0-9, _ and .", reason="malformed")
    if value.lower() in RESERVED_HANDLES:
        raise BadInput(f"handle {value!r} is reserved", reason="reserved")
    return value


def _document(body: object, allowed: frozenset[str], required: frozenset[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadInput("the body must be a JSON object", reason="malformed")
    if unknown := sorted(set(body) - allowed):
        raise BadInput(f"unknown keys: {unknown}", reason="malformed")
    if missing := sorted(required - set(body)):
        raise BadInput(f"missing keys: {missing}", reason="malformed")
    return body


# -- the service ---------------------------------------------------------------


class Accounts:
    """The identity service's account logic (see the module doc). Async: the store
    is called from one worker thread at a time."""

    def __init__(
        self,
        store: IdentityStore,
        config: IdentityConfig | None = None,
        *,
        handles: HandleIndex | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.config = cfg = config or IdentityConfig()
        self.handles = handles

        def buckets(rate: float, burst: int) -> TokenBuckets[str]:
            return TokenBuckets(rate, burst, max_keys=cfg.max_clients, clock=clock)

        self._login_ip = buckets(cfg.login_ip_rate, cfg.login_ip_burst)
        self._login_key = buckets(cfg.login_key_rate, cfg.login_key_burst)
        self._signup_ip = buckets(cfg.signup_ip_rate, cfg.signup_ip_burst)
        self._check_ip = buckets(cfg.check_ip_rate, cfg.check_ip_burst)
        self._limiter = trio.CapacityLimiter(1)
        self.signups = 0
        self.auths_saved = 0
        self.password_changes = 0
        self.logins: Counter[str] = Counter()  # found | not_found | rate_limited | malformed
        self.rate_limited: Counter[str] = Counter()  # login_ip | login_key | signup_ip | check_ip
        self.refused: Counter[str] = Counter()  # by IdentityRefused.reason

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _take(self, buckets: TokenBuckets[str], key: str, kind: str, what: str) -> None:
        if wait := buckets.take(key):
            self.rate_limited[kind] += 1
            raise RateLimited(f"too many {what}; try again in {math.ceil(wait)} s", wait)

    def _refused(self, exc: IdentityRefused) -> IdentityRefused:
        self.refused[exc.reason] += 1
        return exc

    # -- auth rows -------------------------------------------------------------

    async def save_auth(self, body: object, client: str) -> None:
        """Store a hedgehog auth document (sign-up, password reset or change)."""
        self._take(self._signup_ip, client, "signup_ip", f"sign-ups from {client}")
        try:
            doc = _document(body, AUTH_KEYS, AUTH_KEYS - {"oldLookupKey"})
            lookup_key = parse_hex(doc["lookupKey"], "lookupKey", length=LOOKUP_KEY_HEX)
            iv = parse_hex(doc["iv"], "iv", length=IV_HEX)
            cipher = parse_cipher(doc["cipherText"])
            old = doc.get("oldLookupKey")
            if old is not None:
                old = parse_hex(old, "oldLookupKey", length=LOOKUP_KEY_HEX)
            try:
                await self._run(self.store.add_auth, lookup_key, iv, cipher, old)
            except Taken:
                raise Conflict(
                    "an account with this lookupKey exists (the same email and password)",
                    reason="taken",
                ) from None
            except NoSuchAuth as exc:
                raise NotFound(str(exc), reason="not_found") from None
        except IdentityRefused as exc:
            raise self._refused(exc) from None
        if old is None:
            self.auths_saved += 1
        else:
            self.password_changes += 1

    async def login(
        self, lookup_key: object, client: str, *, username: object = None
    ) -> dict[str, str]:
        """The auth document of ``lookup_key``: ``{"iv", "cipherText", "lookupKey"}``.
        ``username`` (the email, which Audius clients send along) is checked, not used."""
        record = None
        try:
            key = self._login_attempt(lookup_key, client, username)
            record = await self._run(self.store.get_auth, key)
            if record is None:
                raise NotFound("no account has this lookupKey", reason="not_found")
        except IdentityRefused as exc:
            self.logins["not_found" if isinstance(exc, NotFound) else "malformed"] += 1
            raise self._refused(exc) from None
        self.logins["found"] += 1
        return {"iv": record.iv, "cipherText": record.cipher_text, "lookupKey": record.lookup_key}

    async def auth_exists(self, lookup_key: object, client: str) -> bool:
        """Whether an account has ``lookup_key`` (a log-in attempt for the limits)."""
        try:
            key = self._login_attempt(lookup_key, client, None)
        except IdentityRefused as exc:
            self.logins["malformed"] += 1
            raise self._refused(exc) from None
        found = await self._run(self.store.auth_exists, key)
        self.logins["found" if found else "not_found"] += 1
        return found

    def _login_attempt(self, lookup_key: object, client: str, username: object) -> str:
        try:
            self._take(self._login_ip, client, "login_ip", f"log-in attempts from {client}")
        except RateLimited:
            self.logins["rate_limited"] += 1
            raise
        key = parse_hex(lookup_key, "lookupKey", length=LOOKUP_KEY_HEX)
        if username is not None:
            parse_email(username, "username")
        try:
            self._take(self._login_key, key, "login_key", "log-in attempts at this account")
        except RateLimited:
            self.logins["rate_limited"] += 1
            raise
        return key

    # -- user rows -------------------------------------------------------------

    async def add_user(self, body: object, client: str) -> dict[str, str]:
        """Register ``{"username": email, "walletAddress"}``; the stored pair."""
        self._take(self._signup_ip, client, "signup_ip", f"sign-ups from {client}")
        try:
            doc = _document(body, USER_KEYS, USER_KEYS)
            email = parse_email(doc["username"], "username")
            wallet = parse_wallet(doc["walletAddress"])
            try:
                record = await self._run(self.store.add_user, email, wallet)
            except Taken as exc:
                raise Conflict(str(exc), reason="taken") from None
        except IdentityRefused as exc:
            raise self._refused(exc) from None
        self.signups += 1
        return {"username": record.email, "walletAddress": record.wallet}

    async def email_exists(self, email: object, client: str) -> bool:
        self._take(self._check_ip, client, "check_ip", f"checks from {client}")
        try:
            checked = parse_email(email)
        except IdentityRefused as exc:
            raise self._refused(exc) from None
        return await self._run(self.store.email_exists, checked)

    async def handle_exists(self, handle: object, client: str) -> bool:
        """Whether a user in the discovery index has ``handle`` (case-insensitive)."""
        self._take(self._check_ip, client, "check_ip", f"checks from {client}")
        try:
            checked = parse_handle(handle)
            if self.handles is None:
                raise NotFound(
                    "this node has no discovery index to check handles in", reason="no_index"
                )
        except IdentityRefused as exc:
            raise self._refused(exc) from None
        index = self.handles
        found = await trio.to_thread.run_sync(index.user_by_handle, checked.lower())
        return found is not None
