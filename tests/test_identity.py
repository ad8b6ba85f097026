"""The identity role: hedgehog accounts and the gas relay on a real node.

A discovery + identity node (alice) on the embedded chain serves
``/identity/`` on its gateway (hypercorn on 127.0.0.1). The stock
``@audius/hedgehog`` 2.1.0 client (tools/js/hedgehog_check.mjs, under the
npm Node 22) signs up, logs in again and fails with a wrong password against
it; :mod:`sdk.hedgehog` opens the accounts it makes and makes accounts it
opens. The database holds no password, key or entropy. Every route refuses
bad input with the right status; the log-in and sign-up limits answer 429
with Retry-After; a relayed action lands and is answered by /v1; /metrics
counts it all. Also: node.toml's ``[identity]``, the store on its own, the
service's buckets on a clock of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import pytest
import trio
from eth_account import Account

from chain.deploy import DISCOVERY_NODE
from chain.entity import EntityReader
from chain.local import LocalChain, open_chain
from discovery.indexer import IndexerConfig
from discovery.listens import RateLimited
from discovery.service import DiscoveryConfig, MusicChain
from identity.accounts import Accounts, BadInput, Conflict, IdentityConfig, NotFound
from identity.relay import RelayConfig
from identity.service import RelayKeyError, read_relay_key
from node import ConfigError, Node, NodeConfig
from p2p.keys import NodeKey
from sdk import hedgehog
from store.identity import IdentityStore, NoSuchAuth, Taken
from store.sqlite_index import SqliteIndex
from tests import test_interop
from tests.test_gateway import metric
from tests.test_relay import body_of, signed

F = TypeVar("F", bound=Callable[..., Any])

ETH = 10**18
WAIT = 60.0
HEDGEHOG_JS = test_interop.ROOT / "tools" / "js" / "hedgehog_check.mjs"
HEDGEHOG_PACKAGE = test_interop.ROOT / "node_modules" / "@audius" / "hedgehog" / "package.json"
PASSWORD = "correct horse battery staple ünïcode"  # distinctive: looked for in the DB's bytes


def interop(fn: F) -> F:
    """test_interop's marks (interop; skipped without the npm Node 22), and a skip
    without the hedgehog package (an `npm ci` older than package.json)."""
    for mark in test_interop.pytestmark:
        fn = mark(fn)
    missing = pytest.mark.skipif(
        not HEDGEHOG_PACKAGE.exists(), reason="@audius/hedgehog missing: run `npm ci`"
    )
    return cast(F, missing(fn))


def email() -> str:
    return f"Fan.{secrets.token_hex(4)}@Example.com"


# -- a discovery + identity node on the embedded chain ---------------------------


@dataclass
class Net:
    chain: LocalChain
    alice: Node
    http: httpx.AsyncClient  # alice's gateway
    relay_key: bytes

    @property
    def url(self) -> str:
        assert self.alice.gateway_url is not None
        return self.alice.gateway_url

    @property
    def accounts(self) -> Accounts:
        assert self.alice.identity is not None
        return self.alice.identity.accounts

    async def metrics(self) -> str:
        with trio.fail_after(WAIT):
            return (await self.http.get("/metrics")).text

    async def sign_up(self, address: str, password: str = PASSWORD) -> tuple[str, bytes]:
        """An account made by sdk.hedgehog over HTTP, as hedgehog does it:
        (the email, the wallet's entropy)."""
        entropy = hedgehog.create_wallet()
        wallet = hedgehog.wallet_from_entropy(entropy)
        iv, cipher = hedgehog.encrypt_entropy(password, entropy)
        with trio.fail_after(WAIT):
            user = await self.http.post(
                "/identity/user", json={"username": address, "walletAddress": wallet.address}
            )
            assert user.status_code == 200, user.text
            lookup = hedgehog.lookup_key(address, password)
            auth = {"iv": iv, "cipherText": cipher, "lookupKey": lookup}
            saved = await self.http.post("/identity/authentication", json=auth)
            assert saved.status_code == 200, saved.text
        return address, entropy


@contextlib.asynccontextmanager
async def network(
    tmp_path: Path, identity: IdentityConfig | None = None, *, relay: bool = True
) -> AsyncIterator[Net]:
    chain = await open_chain()
    key = NodeKey.load_or_create(tmp_path / "alice")
    await chain.register(key, service_type=DISCOVERY_NODE)
    relay_key = secrets.token_bytes(32)
    key_file = tmp_path / "relay.key"
    key_file.write_text("0x" + relay_key.hex() + "\n")
    key_file.chmod(0o600)
    await chain.fund(Account.from_key(relay_key).address, 100 * ETH)
    config = replace(identity or IdentityConfig(), relay_key_file=key_file if relay else None)
    d = chain.deployment
    assert d.entity_manager is not None
    music = MusicChain(
        source=EntityReader.for_access(chain.access, d),
        chain_id=d.chain_id,
        contract=d.entity_manager,
        start_block=d.entity_manager_block,
    )
    role = DiscoveryConfig(indexer=IndexerConfig(poll_interval=0.05))
    cfg = NodeConfig.load(
        tmp_path / "alice", discovery=role, identity=config, gateway="127.0.0.1:0"
    )
    async with trio.open_nursery() as nursery:
        alice = Node(cfg, key=key, oracle=chain.oracle(poll_interval=0.1), music=music)
        await nursery.start(alice.run)
        assert alice.gateway_url is not None and alice.identity is not None
        async with httpx.AsyncClient(base_url=alice.gateway_url, timeout=WAIT) as http:
            yield Net(chain, alice, http, relay_key)
        nursery.cancel_scope.cancel()


async def hedgehog_js(net: Net, address: str, password: str, *args: str) -> list[dict[str, Any]]:
    """Run tools/js/hedgehog_check.mjs against alice; its JSON lines (the last says ok)."""
    env = {
        **os.environ,
        "HEDGEHOG_BASE_URL": net.url,
        "HEDGEHOG_EMAIL": address,
        "HEDGEHOG_PASSWORD": password,
    }
    with trio.fail_after(WAIT):
        done = await trio.run_process(
            [str(test_interop.NODE22), str(HEDGEHOG_JS), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=test_interop.ROOT,
            env=env,
        )
    lines = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
    assert done.returncode == 0 and lines[-1]["ok"], (lines, done.stderr.decode()[-2000:])
    return lines


def database_bytes(node: Node) -> bytes:
    """Every byte of the index file and its WAL (rows may not be checkpointed yet)."""
    path = node.config.data_dir / "index.sqlite"
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


# -- the stock hedgehog client ---------------------------------------------------


@interop
@pytest.mark.slow
async def test_stock_hedgehog_signs_up_logs_in_and_fails_a_wrong_password(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        address = email()
        lines = await hedgehog_js(net, address, PASSWORD, "--show-key")
        signup, login, wrong, last = lines
        assert signup["step"] == "signup" and login["step"] == "login"
        assert login["address"] == signup["address"] == last["address"]
        assert login["privateKey"] == signup["privateKey"]
        assert wrong == {"step": "wrong_password", "failed": True, "error": wrong["error"]}
        assert "No account record" in wrong["error"]
        # the server holds the email (lowercased) and the wallet, nothing secret
        assert net.alice.identity is not None
        store = net.alice.identity.store
        user = store.user_by_email(address)
        assert user is not None and user.email == address.lower()
        assert user.wallet == signup["address"]
        lookup = hedgehog.lookup_key(address, PASSWORD)
        assert store.auth_exists(lookup)
        stored = database_bytes(net.alice)
        assert lookup.encode() in stored and address.lower().encode() in stored  # (sees the rows)
        key_hex = signup["privateKey"].removeprefix("0x")
        for secret in (PASSWORD, PASSWORD.split()[0], key_hex, key_hex.upper()):
            assert secret.encode() not in stored, secret
        record = store.get_auth(lookup)
        assert record is not None
        entropy = hedgehog.decrypt_entropy(PASSWORD, record.iv, record.cipher_text)
        assert entropy.hex().encode() not in stored and entropy not in stored
        # sdk.hedgehog logs in to the account the npm client made
        answer = await net.http.get("/identity/authentication", params={"lookupKey": lookup})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "*"
        document = answer.json()
        assert document == {
            "iv": record.iv,
            "cipherText": record.cipher_text,
            "lookupKey": lookup,
        }
        wallet = hedgehog.recover_wallet(PASSWORD, document["iv"], document["cipherText"])
        assert wallet.address.lower() == signup["address"]
        assert wallet.key.hex().removeprefix("0x") == key_hex
        with pytest.raises(hedgehog.WrongPassword):
            hedgehog.recover_wallet("not it", document["iv"], document["cipherText"])
        # and the other way: the npm client logs in to an account sdk.hedgehog made
        theirs, their_entropy = await net.sign_up(email())
        lines = await hedgehog_js(net, theirs, PASSWORD, "--mode", "login")
        assert lines[0]["address"] == hedgehog.wallet_from_entropy(their_entropy).address.lower()
        assert lines[1]["failed"] is True
        # a sign-up with a taken email fails in the client too (409 from setUserFn)
        env_fail = await _js_fails(net, address, "another password")
        assert "409" in env_fail and "registered already" in env_fail
        text = await net.metrics()
        assert metric(text, "coliving_identity_signups_total") == 2
        assert metric(text, "coliving_identity_logins_total", outcome="found") >= 3
        assert metric(text, "coliving_identity_logins_total", outcome="not_found") >= 2


async def _js_fails(net: Net, address: str, password: str) -> str:
    env = {
        **os.environ,
        "HEDGEHOG_BASE_URL": net.url,
        "HEDGEHOG_EMAIL": address,
        "HEDGEHOG_PASSWORD": password,
    }
    with trio.fail_after(WAIT):
        done = await trio.run_process(
            [str(test_interop.NODE22), str(HEDGEHOG_JS), "--mode", "signup"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=test_interop.ROOT,
            env=env,
        )
    assert done.returncode == 1
    last = json.loads(done.stdout.decode().splitlines()[-1])
    assert last["ok"] is False
    return str(last["error"])


# -- sdk.hedgehog against the npm client's bytes -----------------------------------

# made by @audius/hedgehog 2.1.0 under Node 22: signUp("A@b.com", "pw")
NPM_VECTOR = {
    "lookupKey": "bdc71872955461f990f1142b832cfa34bdb2418645934e573e6062277d03eba2",
    "iv": "913a524d6513057567cca288b0478932",
    "cipherText": "018e7e738b2a335dcdd2e7c3898fae0d4f9fac6bffa404c53e5a2412cbea4a39"
    "60f9bc437049df73cc7c76d350a0dde69aa4a1a617c7f9618af978ee10907f64",
    "address": "0x9387000d36d3c8bd99d6a087381f8fc17ba03871",
}


def test_sdk_matches_the_npm_clients_bytes() -> None:
    v = NPM_VECTOR
    assert hedgehog.lookup_key("A@b.com", "pw") == v["lookupKey"]
    assert hedgehog.lookup_key("a@B.COM", "pw") == v["lookupKey"]  # the email is lowercased
    assert hedgehog.lookup_key("a@b.com", "PW") != v["lookupKey"]  # the password is not
    entropy = hedgehog.decrypt_entropy("pw", v["iv"], v["cipherText"])
    assert entropy.hex() == "1ac1f32c5fa582dc462b62fdf8dc4bb5"
    assert hedgehog.wallet_from_entropy(entropy).address.lower() == v["address"]
    for wrong in ("pW", "", "pw "):
        with pytest.raises(hedgehog.WrongPassword):
            hedgehog.decrypt_entropy(wrong, v["iv"], v["cipherText"])


def test_sdk_round_trip_and_shapes() -> None:
    entropy = hedgehog.create_wallet()
    assert len(entropy) == 16
    iv, cipher = hedgehog.encrypt_entropy(PASSWORD, entropy)
    assert len(iv) == 32 and len(cipher) == 128 and (iv + cipher) == (iv + cipher).lower()
    assert hedgehog.decrypt_entropy(PASSWORD, iv, cipher) == entropy
    assert hedgehog.encrypt_entropy(PASSWORD, entropy)[0] != iv  # a fresh iv each time
    wallet = hedgehog.recover_wallet(PASSWORD, iv, cipher)
    assert wallet.address == hedgehog.wallet_from_entropy(entropy).address
    # the BIP39 test vector's entropy (all zeros): "abandon ... about", at m/44'/60'/0'/0/0
    zero = hedgehog.wallet_from_entropy(bytes(16))
    assert zero.address == "0x9858EfFD232B4033E47d90003D41EC34EcaEda94"
    with pytest.raises(ValueError, match="16 to 32 bytes"):
        hedgehog.encrypt_entropy(PASSWORD, bytes(15))
    with pytest.raises(ValueError, match="hex"):
        hedgehog.decrypt_entropy(PASSWORD, "zz" * 16, cipher)
    with pytest.raises(ValueError, match="whole AES blocks"):
        hedgehog.decrypt_entropy(PASSWORD, iv, cipher[:-2])
    tampered = cipher[:-32] + ("0" if cipher[-32] != "0" else "1") + cipher[-31:]
    with pytest.raises(hedgehog.WrongPassword):
        hedgehog.decrypt_entropy(PASSWORD, iv, tampered)


# -- every route refuses bad input ----------------------------------------------

LOOKUP = "ab" * 32
IV = "cd" * 16
CIPHER = "ef" * 64
WALLET = "0x" + "12" * 20
AUTH = {"iv": IV, "cipherText": CIPHER, "lookupKey": LOOKUP}

# method, path, query, JSON body (or raw bytes), status, a fragment of the error
BAD: list[tuple[str, str, dict[str, str], Any, int, str]] = [
    ("POST", "/identity/authentication", {}, b"{not json", 400, "not JSON"),
    ("POST", "/identity/authentication", {}, b'{"iv": 1, "iv": 2}', 400, "given twice"),
    ("POST", "/identity/authentication", {}, b'{"iv": NaN}', 400, "not a JSON number"),
    ("POST", "/identity/authentication", {}, [AUTH], 400, "JSON object"),
    ("POST", "/identity/authentication", {}, {**AUTH, "password": "x"}, 400, "unknown keys"),
    ("POST", "/identity/authentication", {}, {"iv": IV, "lookupKey": LOOKUP}, 400, "missing"),
    ("POST", "/identity/authentication", {}, {**AUTH, "iv": IV[:-2]}, 400, "32 hex digits"),
    ("POST", "/identity/authentication", {}, {**AUTH, "iv": "zz" * 16}, 400, "hex digits"),
    ("POST", "/identity/authentication", {}, {**AUTH, "iv": "0x" + IV[2:]}, 400, "no 0x"),
    ("POST", "/identity/authentication", {}, {**AUTH, "lookupKey": LOOKUP + "a"}, 400, "64 hex"),
    ("POST", "/identity/authentication", {}, {**AUTH, "lookupKey": 7}, 400, "hex string"),
    ("POST", "/identity/authentication", {}, {**AUTH, "cipherText": CIPHER[:-2]}, 400, "blocks"),
    ("POST", "/identity/authentication", {}, {**AUTH, "cipherText": "ab" * 513}, 400, "blocks"),
    ("POST", "/identity/authentication", {}, {**AUTH, "cipherText": ""}, 400, "hex digits"),
    (
        "POST",
        "/identity/authentication",
        {},
        {**AUTH, "oldLookupKey": "f" * 63},
        400,
        "oldLookupKey must be 64",
    ),
    ("POST", "/identity/authentication", {}, {**AUTH, "oldLookupKey": "9" * 64}, 404, "old"),
    ("POST", "/identity/authentication", {}, b"x" * 5000, 413, "over 4096 bytes"),
    ("GET", "/identity/authentication", {}, None, 400, "missing parameters: lookupKey"),
    ("GET", "/identity/authentication", {"lookupKey": "ab"}, None, 400, "64 hex digits"),
    ("GET", "/identity/authentication", {"lookupKey": "9" * 64}, None, 404, "no account"),
    (
        "GET",
        "/identity/authentication",
        {"lookupKey": LOOKUP, "password": "x"},
        None,
        400,
        "unknown parameters: password",
    ),
    (
        "GET",
        "/identity/authentication",
        {"lookupKey": LOOKUP, "username": "not an email"},
        None,
        400,
        "username is not an email",
    ),
    ("GET", "/identity/authentication/check", {"lookupKey": "xy" * 32}, None, 400, "hex digits"),
    ("GET", "/identity/authentication/check", {}, None, 400, "missing parameters"),
    ("POST", "/identity/user", {}, {"username": "a@b.co"}, 400, "missing keys: ['walletAddress']"),
    ("POST", "/identity/user", {}, {"username": "nobody", "walletAddress": WALLET}, 400, "email"),
    (
        "POST",
        "/identity/user",
        {},
        {"username": "a" * 65 + "@b.co", "walletAddress": WALLET},
        400,
        "not an email",
    ),
    (
        "POST",
        "/identity/user",
        {},
        {"username": "a@" + "b" * 250 + ".co", "walletAddress": WALLET},
        400,
        "longer than 254",
    ),
    (
        "POST",
        "/identity/user",
        {},
        {"username": "a@b.co", "walletAddress": WALLET[2:]},
        400,
        "0x and 40 hex",
    ),
    (
        "POST",
        "/identity/user",
        {},
        {"username": "a@b.co", "walletAddress": WALLET + "1"},
        400,
        "0x and 40 hex",
    ),
    (
        "POST",
        "/identity/user",
        {},
        {"username": "a@b.co", "walletAddress": "0x9858EfFD232B4033E47d90003D41EC34EcaEda95"},
        400,
        "checksum",
    ),
    (
        "POST",
        "/identity/user",
        {},
        {"username": "a@b.co", "walletAddress": WALLET, "handle": "x"},
        400,
        "unknown keys",
    ),
    ("POST", "/identity/user", {}, b"[" * 5000, 413, "over 4096"),
    ("GET", "/identity/users/check", {}, None, 400, "give one of email and handle"),
    ("GET", "/identity/users/check", {"email": "x@y.zz", "handle": "x"}, None, 400, "one of"),
    ("GET", "/identity/users/check", {"email": "x"}, None, 400, "not an email"),
    ("GET", "/identity/users/check", {"handle": "no spaces"}, None, 400, "handle must be"),
    ("GET", "/identity/users/check", {"handle": "a" * 31}, None, 400, "handle must be"),
    ("GET", "/identity/users/check", {"handle": "Admin"}, None, 400, "reserved"),
    ("GET", "/identity/users/check", {"nick": "x"}, None, 400, "unknown parameters"),
    ("POST", "/identity/relay", {}, b"nope", 400, "not JSON"),
    ("POST", "/identity/relay", {}, {"contractAddress": 5}, 400, "contractAddress"),
    ("POST", "/identity/relay", {}, b"x" * (16 * 1024 + 1), 413, "over 16384"),
    ("GET", "/identity/relay", {}, None, 405, "only POST"),
    ("DELETE", "/identity/authentication", {}, None, 405, "only POST, GET"),
    ("GET", "/identity/nothing", {}, None, 404, "no such route"),
]


ROOMY = IdentityConfig(signup_ip_burst=1000, login_ip_burst=1000, check_ip_burst=1000)


@pytest.mark.slow
async def test_every_route_refuses_bad_input(tmp_path: Path) -> None:
    async with network(tmp_path, ROOMY) as net:
        taken, _ = await net.sign_up("taken@example.com")
        for method, path, query, body, status, why in BAD:
            content = body if isinstance(body, bytes) else None
            payload = None if isinstance(body, bytes) or body is None else body
            with trio.fail_after(WAIT):
                response = await net.http.request(
                    method, path, params=query, content=content, json=payload
                )
            case = (method, path, query, body if not isinstance(body, bytes) else body[:40])
            assert response.status_code == status, (case, response.text)
            answer = response.json()
            assert answer["status"] == status and why in answer["error"], (case, answer)
            assert response.headers["access-control-allow-origin"] == "*", case

        # a body over the bound with no Content-Length (chunked) is refused as it comes
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b"x" * 1000

        big = await net.http.post("/identity/user", content=chunks())
        assert big.status_code == 413
        # taken: the email (any case), the wallet, and an existing lookupKey
        record = net.alice.identity.store.user_by_email(taken) if net.alice.identity else None
        assert record is not None
        for user in (
            {"username": "TAKEN@example.com", "walletAddress": WALLET},
            {"username": "other@example.com", "walletAddress": record.wallet},
        ):
            response = await net.http.post("/identity/user", json=user)
            assert response.status_code == 409, response.text
            assert "registered already" in response.json()["error"]
        lookup = hedgehog.lookup_key(taken, PASSWORD)
        again = await net.http.post("/identity/authentication", json={**AUTH, "lookupKey": lookup})
        assert again.status_code == 409 and "exists" in again.json()["error"]
        # and what is fine: checks, a password change
        check = await net.http.get("/identity/users/check", params={"email": "Taken@Example.com"})
        assert check.json() == {"exists": True}
        check = await net.http.get("/identity/users/check", params={"email": "free@example.com"})
        assert check.json() == {"exists": False}
        exists = await net.http.get("/identity/authentication/check", params={"lookupKey": lookup})
        assert exists.json() == {"exists": True}
        new_lookup = hedgehog.lookup_key(taken, "a new password")
        change = {**AUTH, "lookupKey": new_lookup, "oldLookupKey": lookup}
        assert (await net.http.post("/identity/authentication", json=change)).status_code == 200
        gone = await net.http.get("/identity/authentication", params={"lookupKey": lookup})
        assert gone.status_code == 404
        moved = await net.http.get("/identity/authentication", params={"lookupKey": new_lookup})
        assert moved.json()["cipherText"] == CIPHER
        # CORS preflight, on every route
        for path in ("/identity/authentication", "/identity/user", "/identity/relay"):
            preflight = await net.http.options(
                path,
                headers={
                    "origin": "https://app.example",
                    "access-control-request-method": "POST",
                    "access-control-request-headers": "content-type, x-user-id",
                },
            )
            assert preflight.status_code == 204 and preflight.content == b""
            assert preflight.headers["access-control-allow-origin"] == "*"
            assert "POST" in preflight.headers["access-control-allow-methods"]
            assert preflight.headers["access-control-allow-headers"] == "content-type, x-user-id"
        text = await net.metrics()
        assert metric(text, "coliving_identity_refused_total", reason="malformed") >= 20
        assert metric(text, "coliving_identity_refused_total", reason="taken") == 3
        assert metric(text, "coliving_identity_password_changes_total") == 1
        assert metric(text, "coliving_relay_refused_total", reason="malformed") == 1
        assert metric(text, "coliving_gateway_requests_total", route="identity", status="413") == 4


# -- limits ------------------------------------------------------------------------

TIGHT = IdentityConfig(
    login_ip_rate=0.01,
    login_ip_burst=6,
    login_key_rate=0.01,
    login_key_burst=2,
    signup_ip_rate=0.001,
    signup_ip_burst=3,
    check_ip_rate=0.01,
    check_ip_burst=2,
)


@pytest.mark.slow
async def test_log_in_and_sign_up_limits_answer_429_with_retry_after(tmp_path: Path) -> None:
    async with network(tmp_path, TIGHT, relay=False) as net:

        async def login(key: str) -> httpx.Response:
            with trio.fail_after(WAIT):
                return await net.http.get("/identity/authentication", params={"lookupKey": key})

        a, b = "a1" * 32, "b2" * 32
        assert [(await login(a)).status_code for _ in range(2)] == [404, 404]
        limited = await login(a)  # the third at one account, within the address's six
        assert limited.status_code == 429 and "this account" in limited.json()["error"]
        assert limited.headers["retry-after"] == "100"  # 1 token at 0.01 a second
        assert limited.headers["access-control-expose-headers"] == "Retry-After"
        assert (await login(b)).status_code == 404  # another account: still open
        check = await net.http.get("/identity/authentication/check", params={"lookupKey": b})
        assert check.json() == {"exists": False}  # a check is a log-in attempt too
        assert (await login("c3" * 32)).status_code == 404  # the address's sixth
        limited = await login("d4" * 32)
        assert limited.status_code == 429 and "127.0.0.1" in limited.json()["error"]
        assert int(limited.headers["retry-after"]) == 100
        # sign-up writes: three from one address, then 429
        statuses = []
        for i in range(4):
            user = {"username": f"u{i}@example.com", "walletAddress": "0x" + f"{i:040x}"}
            statuses.append((await net.http.post("/identity/user", json=user)).status_code)
        assert statuses == [200, 200, 200, 429]
        signup = await net.http.post("/identity/authentication", json=AUTH)
        assert signup.status_code == 429 and signup.headers["retry-after"] == "1000"
        checks = [
            (await net.http.get("/identity/users/check", params={"email": "u0@example.com"}))
            for _ in range(3)
        ]
        assert [c.status_code for c in checks] == [200, 200, 429]
        assert net.accounts.rate_limited == {
            "login_key": 1,
            "login_ip": 1,
            "signup_ip": 2,
            "check_ip": 1,
        }
        assert net.accounts.logins["rate_limited"] == 2
        text = await net.metrics()
        assert metric(text, "coliving_identity_rate_limited_total", kind="login_key") == 1
        assert metric(text, "coliving_identity_logins_total", outcome="rate_limited") == 2
        assert metric(text, "coliving_identity_signups_total") == 3
        # a node without a relay wallet relays nothing
        none = await net.http.post("/identity/relay", json={})
        assert none.status_code == 404 and "relay_key_file" in none.json()["error"]
        assert "coliving_relay_relayed_total" not in text


async def test_per_account_limit_holds_across_addresses_and_refills(tmp_path: Path) -> None:
    now = [0.0]
    index = SqliteIndex(tmp_path / "index.sqlite")
    store = IdentityStore(tmp_path / "index.sqlite")
    accounts = Accounts(store, TIGHT, handles=index, clock=lambda: now[0])
    key = "ee" * 32
    for client in ("10.0.0.1", "10.0.0.2"):
        with pytest.raises(NotFound):
            await accounts.login(key, client)
    with pytest.raises(RateLimited) as limited:
        await accounts.login(key, "10.0.0.3")  # a third address: the account's bucket is empty
    assert limited.value.retry_after == pytest.approx(100)
    now[0] += 100  # one token back
    assert not await accounts.auth_exists(key, "10.0.0.4")
    with pytest.raises(RateLimited):
        await accounts.auth_exists(key, "10.0.0.5")
    assert accounts.rate_limited == {"login_key": 2}
    assert accounts.logins == {"not_found": 3, "rate_limited": 2}
    # handles: free, then taken once the index has the user
    assert not await accounts.handle_exists("Somebody", "10.0.0.1")
    with index.block(1, b"\x01" * 32, b"\x00" * 32, 0) as block:
        row = {"user_id": 1, "handle": "somebody", "handle_lc": "somebody", "wallet": WALLET}
        block.put("users", (1,), row)
    assert await accounts.handle_exists("SOMEBODY", "10.0.0.2")
    with pytest.raises(BadInput, match="reserved"):
        await accounts.handle_exists("identity", "10.0.0.3")
    store.close()
    index.close()


# -- the relay -------------------------------------------------------------------


@pytest.mark.slow
async def test_a_relayed_action_lands_and_is_answered_by_v1(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        _, entropy = await net.sign_up(email())
        wallet = hedgehog.wallet_from_entropy(entropy)
        key = bytes(wallet.key)
        handle = f"fan_{secrets.token_hex(3)}"
        free = await net.http.get("/identity/users/check", params={"handle": handle})
        assert free.json() == {"exists": False}
        create = signed(net.chain, key, 42, "User", 42, "Create", json.dumps({"handle": handle}))
        with trio.fail_after(WAIT):
            landed = await net.http.post("/identity/relay", json=body_of(create))
        assert landed.status_code == 200, landed.text
        answer = landed.json()
        assert answer["txHash"].startswith("0x") and answer["block"] > 0
        assert net.alice.discovery is not None
        with trio.fail_after(WAIT):
            await net.alice.discovery.indexer.wait_for(answer["block"])
        user = (await net.http.get(f"/v1/users/handle/{handle}")).json()["data"]
        assert user["id"] == 42 and user["wallet"] == wallet.address.lower()
        taken = await net.http.get("/identity/users/check", params={"handle": handle.upper()})
        assert taken.json() == {"exists": True}
        # a replay, another contract: 400s that say why
        replay = await net.http.post("/identity/relay", json=body_of(create))
        assert replay.status_code == 400
        assert replay.json()["reason"] == "replay" and "replayed" in replay.json()["error"]
        follow = signed(net.chain, key, 42, "User", 1, "Follow")
        other = body_of(follow, contract=net.chain.deployment.token)
        wrong = await net.http.post("/identity/relay", json=other)
        assert wrong.status_code == 400 and wrong.json()["reason"] == "wrong_contract"
        assert "only calls to the EntityManager" in wrong.json()["error"]
        text = await net.metrics()
        assert metric(text, "coliving_relay_relayed_total") == 1
        assert metric(text, "coliving_relay_refused_total", reason="replay") == 1
        assert metric(text, "coliving_relay_refused_total", reason="wrong_contract") == 1
        assert metric(text, "coliving_identity_signups_total") == 1


@pytest.mark.slow
async def test_relay_bursts_are_429(tmp_path: Path) -> None:
    tight = IdentityConfig(relay=RelayConfig(ip_rate=0.01, ip_burst=2))
    async with network(tmp_path, tight) as net:
        statuses = []
        for i in range(3):
            action = signed(net.chain, secrets.token_bytes(32), 50 + i, "User", 1, "Follow")
            with trio.fail_after(WAIT):
                statuses.append(await net.http.post("/identity/relay", json=body_of(action)))
        assert [s.status_code for s in statuses] == [200, 200, 429]
        assert statuses[-1].headers["retry-after"] == "100"
        text = await net.metrics()
        assert metric(text, "coliving_relay_rate_limited_total", kind="ip") == 1
        assert metric(text, "coliving_relay_relayed_total") == 2


# -- a node without the role, node.toml, the store -----------------------------------


async def test_a_node_without_the_identity_role_answers_404(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        node = Node(NodeConfig.load(tmp_path, gateway="127.0.0.1:0"))
        await nursery.start(node.run)
        assert node.identity is None and node.gateway_url is not None
        async with httpx.AsyncClient(base_url=node.gateway_url, timeout=WAIT) as http:
            with trio.fail_after(WAIT):
                for method in ("GET", "POST", "OPTIONS"):
                    response = await http.request(method, "/identity/authentication")
                    assert response.status_code == 404
                    assert "identity role" in response.json()["error"]
        nursery.cancel_scope.cancel()


def write_toml(tmp_path: Path, text: str) -> Path:
    (tmp_path / "node.toml").write_text(text)
    return tmp_path


def test_identity_table_of_node_toml(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "relay.hex"
    key_file.parent.mkdir()
    key_file.write_text(secrets.token_hex(32))
    write_toml(
        tmp_path,
        "[discovery]\n"
        "[identity]\n"
        'relay_key_file = "keys/relay.hex"\n'
        "login_ip_rate = 2.5\nlogin_key_burst = 3\nsignup_ip_burst = 7\n"
        "[identity.relay]\nwallet_rate = 0.5\nip_burst = 9\n",
    )
    config = NodeConfig.load(tmp_path).identity
    assert config is not None
    assert config.relay_key_file == key_file  # relative to node.toml's directory
    assert (config.login_ip_rate, config.login_key_burst, config.signup_ip_burst) == (2.5, 3, 7)
    assert config.relay == RelayConfig(wallet_rate=0.5, ip_burst=9)
    assert config.check_ip_burst == IdentityConfig().check_ip_burst
    write_toml(tmp_path, "identity = true\n[discovery]\n")
    defaults = NodeConfig.load(tmp_path).identity
    assert defaults == IdentityConfig() and defaults.relay_key_file is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[discovery]\n[identity]\nlogin_rate = 1\n", "unknown keys in [identity]: ['login_rate']"),
        ("[discovery]\n[identity.relay]\nburst = 1\n", "unknown keys in [identity.relay]"),
        ("[discovery]\n[identity]\nrelay = 5\n", "[identity.relay] must be a table"),
        ("[identity]\n", "needs the discovery role"),
        ("identity = true\n", "needs the discovery role"),
        ("[discovery]\n[identity]\nlogin_ip_rate = 0\n", "login_ip_rate must be positive"),
        ("[discovery]\n[identity]\nlogin_key_burst = 1.5\n", "must be a whole number"),
        ("[discovery]\n[identity]\nsignup_ip_rate = true\n", "must be a number"),
        ("[discovery]\n[identity.relay]\nip_rate = -1\n", "[identity.relay]: relay ip_rate"),
        ('[discovery]\n[identity]\nrelay_key_file = "nowhere.key"\n', "is not a file"),
        ("[discovery]\n[identity]\nrelay_key_file = 12\n", "never the key itself"),
        ("[discovery]\nlisten_rate = 1\n", "unknown keys in [discovery]"),
        ("[discovery]\nidentity = true\n", "unknown keys in [discovery]"),
    ],
)
def test_bad_identity_tables(tmp_path: Path, text: str, why: str) -> None:
    write_toml(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        NodeConfig.load(tmp_path)
    assert why in str(refused.value)


def test_relay_key_files(tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    path = tmp_path / "relay.key"
    for text in (key.hex(), "0x" + key.hex(), f"  {key.hex().upper()}\n"):
        path.write_text(text)
        assert read_relay_key(path) == key
    for bad in ("", key.hex()[:-1], key.hex() + "00", "0x" + "zz" * 32, f"{key.hex()} extra"):
        path.write_text(bad)
        with pytest.raises(RelayKeyError, match="64 hex digits"):
            read_relay_key(path)
    with pytest.raises(RelayKeyError, match="No such file"):
        read_relay_key(tmp_path / "missing")


def test_the_store_shares_the_index_file(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    index = SqliteIndex(path)  # the index first, as the node opens them
    store = IdentityStore(path)
    store.add_auth(LOOKUP, IV, CIPHER)
    with pytest.raises(Taken) as taken:
        store.add_auth(LOOKUP, IV, CIPHER)
    assert taken.value.what == "lookup_key"
    with pytest.raises(NoSuchAuth):
        store.add_auth("01" * 32, IV, CIPHER, old_lookup_key="02" * 32)
    assert store.get_auth("01" * 32) is None  # (rolled back with the refusal)
    store.add_auth("03" * 32, "04" * 16, "05" * 32, old_lookup_key=LOOKUP)
    assert not store.auth_exists(LOOKUP) and store.auth_exists("03" * 32)
    user = store.add_user("Someone@Example.COM", WALLET.upper().replace("0X", "0x"))
    assert (user.email, user.wallet) == ("someone@example.com", WALLET)
    with pytest.raises(Taken, match="email") as again:
        store.add_user("SOMEONE@example.com", "0x" + "34" * 20)
    assert again.value.what == "email"
    with pytest.raises(Taken, match="wallet"):
        store.add_user("else@example.com", WALLET)
    assert store.email_exists("someone@EXAMPLE.com") and store.wallet_exists(WALLET.upper())
    assert store.user_by_email("nobody@example.com") is None
    with pytest.raises(ValueError, match="schema"):
        store.add_auth("ab", IV, CIPHER)  # the service validates; the schema still holds
    assert store.counts() == (1, 1)
    store.close()
    index.close()
    # both open again on the file that now holds both
    index, store = SqliteIndex(path), IdentityStore(path)
    assert store.user_by_email("someone@example.com") == user and index.tip() is None
    store.close()
    index.close()


async def test_accounts_refusals_are_typed(tmp_path: Path) -> None:
    store = IdentityStore(tmp_path / "accounts.sqlite")
    accounts = Accounts(store)
    await accounts.add_user({"username": "A@B.co", "walletAddress": WALLET}, "10.0.0.1")
    with pytest.raises(Conflict) as taken:
        await accounts.add_user({"username": "a@b.CO", "walletAddress": WALLET}, "10.0.0.1")
    assert taken.value.status == 409
    with pytest.raises(NotFound, match="no discovery index"):
        await accounts.handle_exists("someone", "10.0.0.1")
    assert accounts.signups == 1 and accounts.refused == {"taken": 1, "no_index": 1}
    store.close()
