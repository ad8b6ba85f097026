"""Operator tools: chain.operator on the embedded chain, and ``coliving operator`` on anvil.

The library tests share one embedded deployment (module scope) and revert to
a snapshot after each test. Every rejection the operator can meet is checked
by its sentence, not by the backend's exception. The CLI tests run the real
command against a real anvil (tests/anvil.py) and check that the wallet's key
never shows in any output.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from typer.testing import CliRunner

from chain.deploy import CONTENT_NODE, DISCOVERY_NODE, LIVE, Deployment, embedded_web3
from chain.errors import ChainRevert, error_names
from chain.operator import (
    ERROR_MESSAGES,
    KEYSTORE_PASSWORD_ENV,
    OPERATOR_KEY_ENV,
    Chain,
    Operator,
    OperatorError,
    check_deployment,
    connect_rpc,
    consent_signature,
    delegate_of,
    deploy,
    explain_revert,
    first_unlocked_account,
    format_amount,
    load_wallet,
    open_rpc,
    parse_amount,
    write_deployment,
)
from tests.anvil import ANVIL_KEY_0

MIN, MAX = 100 * LIVE, 1_000 * LIVE
LOCKUP = 5
ADDRS = ["/ip4/127.0.0.1/tcp/4001"]
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Env:
    chain: Chain
    tester: Any
    deployer: str
    alice: Operator  # a provider's owner (unlocked account)
    bob: Operator  # another owner
    carol: Operator  # a delegator
    node_keys: list[bytes]

    def mine(self, n: int) -> None:
        self.tester.mine_blocks(n)

    def key(self, i: int) -> bytes:
        return self.node_keys[i]

    def node(self, i: int) -> str:
        return delegate_of(self.node_keys[i])


@pytest.fixture(scope="module")
def module_env() -> Env:
    w3 = embedded_web3(accounts=5)
    deployer, alice, bob, carol, _ = list(w3.eth.accounts)
    deployment = deploy(
        w3,
        service_types={CONTENT_NODE: (MIN, MAX), DISCOVERY_NODE: (MIN // 2, MAX // 2)},
        decrease_lockup_blocks=LOCKUP,
        undelegate_lockup_blocks=LOCKUP,
    )
    assert deployment.governance == deployer  # the first unlocked account deployed
    chain = check_deployment(w3, deployment)
    gov = Operator(chain, deployer)
    for who in (alice, bob, carol):
        gov.fund(who, 5_000 * LIVE)
    env = Env(
        chain,
        cast(Any, w3.provider).ethereum_tester,
        deployer,
        Operator(chain, alice),
        Operator(chain, bob),
        Operator(chain, carol),
        [bytes([i + 7]) * 32 for i in range(3)],
    )
    return env


@pytest.fixture
def env(module_env: Env) -> Iterator[Env]:
    snapshot = module_env.tester.take_snapshot()
    yield module_env
    module_env.tester.revert_to_snapshot(snapshot)


def fails(match: str) -> Any:
    return pytest.raises(OperatorError, match=match)


# -- amounts and wallets ------------------------------------------------------------------


def test_parse_and_format_amounts() -> None:
    assert parse_amount("1.5") == 15 * 10**17
    assert parse_amount("200000") == 200_000 * LIVE
    assert parse_amount(" 200_000 LIVE ") == 200_000 * LIVE
    assert parse_amount("0.000000000000000001") == 1
    assert parse_amount("0") == 0
    for bad, why in [
        ("-1", "negative"),
        ("1.0000000000000000001", "too many decimals"),
        ("abc", "not an amount"),
        ("", "not an amount"),
        ("1e3", "not an amount"),
        ("1.", "not an amount"),
        ("nan", "not an amount"),
        ("1,5", "not an amount"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_amount(bad)
    assert format_amount(15 * 10**17) == "1.5 LIVE"
    assert format_amount(200_000 * LIVE) == "200000 LIVE"
    assert format_amount(0) == "0 LIVE"


def test_wallet_from_env_key() -> None:
    account = Account.create()
    secret = bytes(account.key).hex()
    assert load_wallet(None, env={OPERATOR_KEY_ENV: secret}).address == account.address
    assert load_wallet(None, env={OPERATOR_KEY_ENV: "0x" + secret}).address == account.address
    with fails("COLIVING_OPERATOR_KEY is not a 32-byte hex") as info:
        load_wallet(None, env={OPERATOR_KEY_ENV: secret[:-2]})
    assert secret[:-2] not in str(info.value)
    with fails("--keystore FILE.*COLIVING_OPERATOR_KEY"):
        load_wallet(None, env={})


def test_wallet_from_keystore(tmp_path: Path) -> None:
    account = Account.create()
    path = tmp_path / "wallet.json"
    path.write_text(json.dumps(Account.encrypt(account.key, "hunter2", iterations=2)))
    got = load_wallet(path, env={KEYSTORE_PASSWORD_ENV: "hunter2"})
    assert got.address == account.address
    asked: list[str] = []

    def prompt(question: str) -> str:
        asked.append(question)
        return "hunter2"

    assert load_wallet(path, env={}, prompt=prompt).address == account.address
    assert asked and str(path) in asked[0]
    with fails("wrong password") as info:
        load_wallet(path, env={KEYSTORE_PASSWORD_ENV: "nope"})
    assert "nope" not in str(info.value)
    with fails("needs a password"):
        load_wallet(path, env={})
    with fails("not found"):
        load_wallet(tmp_path / "missing.json", env={})
    (tmp_path / "junk.json").write_text("{}")
    with fails("not an Ethereum keystore"):
        load_wallet(tmp_path / "junk.json", env={})
    (tmp_path / "text.json").write_text("hello")
    with fails("not JSON"):
        load_wallet(tmp_path / "text.json", env={})


def test_every_custom_error_has_a_sentence() -> None:
    assert error_names() <= set(ERROR_MESSAGES)
    unknown = ChainRevert("SomethingNew", {"x": 1})
    assert explain_revert(unknown) == "the contract rejected it: SomethingNew(x=1)"


# -- connecting -------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_rpc(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with fails(f"cannot reach chain RPC at {url}: connection refused"):
        open_rpc(url)
    path = tmp_path / "deployment.json"
    path.write_text(
        Deployment(
            token=delegate_of(b"\1" * 32),
            service_types=delegate_of(b"\2" * 32),
            registry=delegate_of(b"\3" * 32),
            chain_id=31337,
            governance=delegate_of(b"\4" * 32),
        ).to_json()
    )
    with fails("cannot reach chain RPC"):
        connect_rpc(url, path)
    with fails("must be an http"):
        open_rpc("ws://127.0.0.1:1")


def test_deployment_file_errors(env: Env, tmp_path: Path) -> None:
    with fails("not found"):
        connect_rpc("http://127.0.0.1:1", tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"token": 1}')
    with fails("not a deployment file"):
        connect_rpc("http://127.0.0.1:1", bad)
    bad.write_text("not json")
    with fails("not a deployment file|Expecting value"):
        connect_rpc("http://127.0.0.1:1", bad)
    path = tmp_path / "deployment.json"
    write_deployment(env.chain.deployment, path)
    assert Deployment.from_json(path.read_text()) == env.chain.deployment


def test_wrong_chain_id(env: Env) -> None:
    w3 = env.chain.w3
    other = Deployment(**{**vars(env.chain.deployment), "chain_id": 5})
    with fails(f"deployment is for chain 5, RPC embedded is chain {w3.eth.chain_id}"):
        check_deployment(w3, other)
    with fails("expected chain 1, RPC embedded is chain"):
        check_deployment(w3, env.chain.deployment, expected_chain_id=1)


def test_missing_contracts(env: Env) -> None:
    nowhere = delegate_of(b"\5" * 32)
    moved = Deployment(**{**vars(env.chain.deployment), "registry": nowhere})
    with fails(f"no registry contract at {nowhere}"):
        check_deployment(env.chain.w3, moved)
    swapped = Deployment(**{**vars(env.chain.deployment), "token": env.chain.deployment.registry})
    with fails("registry does not use its token"):
        check_deployment(env.chain.w3, swapped)


# -- the provider's life ----------------------------------------------------------------


def test_register_and_status(env: Env) -> None:
    node = env.node(0)
    before = env.alice.status(node)
    assert not before.registered and not before.accepted and before.state == "not registered"
    result = env.alice.register(CONTENT_NODE, 150 * LIVE, ADDRS, node_key=env.key(0))
    assert result.amount == 150 * LIVE and result.tx_hash.startswith("0x")
    s = env.alice.status(node)
    assert s.owner == env.alice.address and s.service_type == CONTENT_NODE
    assert (s.own_stake, s.delegated_stake, s.total_stake) == (150 * LIVE, 0, 150 * LIVE)
    assert (s.min_stake, s.max_stake) == (MIN, MAX)
    assert s.active and s.accepted and s.multiaddrs == tuple(ADDRS)
    assert s.pending_decrease == 0 and s.decrease_lockup_blocks == LOCKUP
    assert s.current_block == env.alice.head()
    assert env.alice.token_balance() == 4_850 * LIVE
    with fails("already registered"):
        env.alice.register(CONTENT_NODE, 150 * LIVE, ADDRS, node_key=env.key(0))


def test_register_below_minimum_spends_no_approve(env: Env) -> None:
    head = env.alice.head()
    with fails(r"register: the stake would be 99\.5 LIVE, below .* minimum of 100 LIVE"):
        env.alice.register(CONTENT_NODE, 99_500 * LIVE // 1000, ADDRS, node_key=env.key(0))
    assert env.alice.head() == head  # nothing was mined
    with fails("above the service type's maximum of 1000 LIVE"):
        env.alice.register(CONTENT_NODE, 1_001 * LIVE, ADDRS, node_key=env.key(0))


def test_register_unknown_type(env: Env) -> None:
    with fails("unknown service type 'storage-node': known types are content-node, discovery-node"):
        env.alice.register("storage-node", MIN, ADDRS, node_key=env.key(0))
    with fails("1-32 ASCII"):
        env.alice.register("x" * 40, MIN, ADDRS, node_key=env.key(0))


def test_register_bad_signature(env: Env) -> None:
    deployment = env.chain.deployment
    # signed by another key
    wrong = consent_signature(env.key(1), deployment, env.alice.address)
    with fails("register: the node's signature does not match the delegate"):
        env.alice.register(CONTENT_NODE, MIN, ADDRS, delegate=env.node(0), signature=wrong)
    # the right key, but consenting to another owner
    for_bob = consent_signature(env.key(0), deployment, env.bob.address)
    with fails("signature does not match"):
        env.alice.register(CONTENT_NODE, MIN, ADDRS, delegate=env.node(0), signature=for_bob)
    with fails("signature does not match"):
        env.alice.register(CONTENT_NODE, MIN, ADDRS, delegate=env.node(0), signature=b"\1" * 65)
    # a signature made elsewhere (the node's machine) with the delegate address works
    right = consent_signature(env.key(0), deployment, env.alice.address)
    env.alice.register(CONTENT_NODE, MIN, ADDRS, delegate=env.node(0), signature=right)
    assert env.alice.status(env.node(0)).accepted


def test_register_bad_multiaddrs_and_balance(env: Env) -> None:
    with fails("multiaddr #2 is empty"):
        env.alice.register(CONTENT_NODE, MIN, [ADDRS[0], ""], node_key=env.key(0))
    with fails("9 multiaddrs given, at most 8"):
        env.alice.register(CONTENT_NODE, MIN, ADDRS * 9, node_key=env.key(0))
    with fails("multiaddr #1 is 257 bytes long"):
        env.alice.register(CONTENT_NODE, MIN, ["/" + "a" * 256], node_key=env.key(0))
    broke = Operator(env.chain, list(env.chain.w3.eth.accounts)[4])
    with fails(r"register: the wallet 0x\w+ holds 0 LIVE, needs 100 LIVE"):
        broke.register(CONTENT_NODE, MIN, ADDRS, node_key=env.key(0))


def test_increase_and_decrease_with_lockup(env: Env) -> None:
    node = env.node(0)
    env.alice.register(CONTENT_NODE, MIN, ADDRS, node_key=env.key(0))
    env.alice.increase(node, 50 * LIVE)
    assert env.alice.status(node).own_stake == 150 * LIVE
    with fails("above the service type's maximum"):
        env.alice.increase(node, 900 * LIVE)
    with fails(r"the stake would be 50 LIVE, below the service type's minimum of 100 LIVE"):
        env.alice.request_decrease(node, 100 * LIVE)
    with fails(r"requested 151 LIVE but only 150 LIVE is staked"):
        env.alice.request_decrease(node, 151 * LIVE)
    with fails("more than zero"):
        env.alice.request_decrease(node, 0)
    with fails("no pending request"):
        env.alice.decrease(node)
    request = env.alice.request_decrease(node, 50 * LIVE)
    assert request.unlock_block == request.block + LOCKUP
    s = env.alice.status(node)
    assert s.pending_decrease == 50 * LIVE and s.unlock_block == request.unlock_block
    assert not s.lockup_over
    with fails("already pending"):
        env.alice.request_decrease(node, 10 * LIVE)
    with fails(
        rf"finish decrease: the lockup is not over: it ends at block {request.unlock_block} "
        rf"\(now {request.block}, {LOCKUP} blocks to go\)"
    ):
        env.alice.decrease(node)
    env.mine(LOCKUP)
    balance = env.alice.token_balance()
    done = env.alice.decrease(node)
    assert done.amount == 50 * LIVE
    assert env.alice.token_balance() == balance + 50 * LIVE
    assert env.alice.status(node).own_stake == MIN


def test_cancel_decrease(env: Env) -> None:
    node = env.node(0)
    env.alice.register(CONTENT_NODE, 150 * LIVE, ADDRS, node_key=env.key(0))
    with fails("no pending request"):
        env.alice.cancel_decrease(node)
    env.alice.request_decrease(node, 50 * LIVE)
    env.alice.cancel_decrease(node)
    assert env.alice.status(node).pending_decrease == 0


def test_not_owner(env: Env) -> None:
    node = env.node(0)
    env.alice.register(CONTENT_NODE, MIN, ADDRS, node_key=env.key(0))
    bob = env.bob.address
    actions: list[Callable[[], object]] = [
        lambda: env.bob.increase(node, LIVE),
        lambda: env.bob.request_decrease(node, LIVE),
        lambda: env.bob.deregister(node),
        lambda: env.bob.update_multiaddrs(node, ADDRS),
        lambda: env.bob.withdraw(node),
    ]
    for action in actions:
        with fails(f"the wallet {bob} is not the owner of this node"):
            action()
    with fails(f"the node {env.node(1)} is not registered"):
        env.alice.deregister(env.node(1))
    with fails("not an Ethereum delegate address"):
        env.alice.status("0x1234")


def test_update_multiaddrs(env: Env) -> None:
    node = env.node(0)
    env.alice.register(CONTENT_NODE, MIN, ADDRS, node_key=env.key(0))
    env.alice.update_multiaddrs(node, ["/ip4/127.0.0.1/tcp/5001", "/ip4/127.0.0.1/tcp/5002"])
    assert env.alice.status(node).multiaddrs == (
        "/ip4/127.0.0.1/tcp/5001",
        "/ip4/127.0.0.1/tcp/5002",
    )


def test_deregister_then_withdraw_after_lockup(env: Env) -> None:
    node = env.node(0)
    env.alice.register(CONTENT_NODE, 120 * LIVE, ADDRS, node_key=env.key(0))
    with fails("still registered: deregister first"):
        env.alice.withdraw(node)
    out = env.alice.deregister(node)
    assert out.amount == 120 * LIVE and out.unlock_block == out.block + LOCKUP
    s = env.alice.status(node)
    assert not s.active and not s.accepted and s.multiaddrs == ()
    assert s.state.startswith("deregistered")
    with fails("was deregistered and its stake is not withdrawn yet"):
        env.alice.register(CONTENT_NODE, MIN, ADDRS, node_key=env.key(0))
    with fails("withdraw: the lockup is not over"):
        env.alice.withdraw(node)
    env.mine(LOCKUP)
    before = env.alice.token_balance()
    assert env.alice.withdraw(node).amount == 120 * LIVE
    assert env.alice.token_balance() == before + 120 * LIVE
    assert not env.alice.status(node).registered
    with fails("is not registered"):
        env.alice.withdraw(node)


def test_delegate_and_undelegate(env: Env) -> None:
    node = env.node(0)
    env.alice.register(CONTENT_NODE, MIN, ADDRS, node_key=env.key(0))
    with fails(f"the node {env.node(1)} is not registered"):
        env.carol.delegate(env.node(1), LIVE)
    env.carol.delegate(node, 40 * LIVE)
    s = env.alice.status(node)
    assert s.delegated_stake == 40 * LIVE and s.total_stake == 140 * LIVE
    with fails("above the service type's maximum"):
        env.carol.delegate(node, 900 * LIVE)
    with fails(r"requested 41 LIVE but the delegation is worth 40 LIVE"):
        env.carol.request_undelegate(node, 41 * LIVE)
    request = env.carol.request_undelegate(node, 15 * LIVE)
    assert request.unlock_block == request.block + LOCKUP
    d = env.carol.delegation(node)
    assert (d.amount, d.pending, d.unlock_block) == (40 * LIVE, 15 * LIVE, request.unlock_block)
    with fails("finish undelegate: the lockup is not over"):
        env.carol.undelegate(node)
    env.mine(LOCKUP)
    before = env.carol.token_balance()
    assert env.carol.undelegate(node).amount == 15 * LIVE
    assert env.carol.token_balance() == before + 15 * LIVE
    env.carol.request_undelegate(node, 5 * LIVE)
    env.carol.cancel_undelegate(node)
    assert env.carol.delegation(node).pending == 0
    with fails("no pending request"):
        env.carol.undelegate(node)


def test_delegation_keeps_a_short_provider_accepted(env: Env) -> None:
    node = env.node(0)
    env.alice.register(CONTENT_NODE, MIN, ADDRS, node_key=env.key(0))
    env.chain.contracts.service_types.functions.updateServiceType(
        b"content-node".ljust(32, b"\0"), 130 * LIVE, MAX
    ).transact({"from": env.deployer})
    assert not env.alice.status(node).accepted  # raised minimum: peers drop us
    env.carol.delegate(node, 30 * LIVE)
    assert env.alice.status(node).accepted


def test_local_key_wallet_signs_its_transactions(env: Env) -> None:
    account: LocalAccount = Account.from_key(b"\x42" * 32)
    gov = Operator(env.chain, env.deployer)
    gov.fund(account.address, 200 * LIVE, eth=10**18)
    assert gov.eth_balance(account.address) == 10**18
    me = Operator(env.chain, account)
    assert "42" * 8 not in repr(me)
    me.register(DISCOVERY_NODE, 60 * LIVE, ADDRS, node_key=env.key(2))
    assert me.status(env.node(2)).accepted
    with fails("holds 140 LIVE, needs 141 LIVE"):
        me.fund(env.alice.address, 141 * LIVE)


def test_unfunded_local_wallet_cannot_pay_gas(env: Env) -> None:
    account: LocalAccount = Account.from_key(b"\x43" * 32)
    Operator(env.chain, env.deployer).fund(account.address, 200 * LIVE)
    me = Operator(env.chain, account)
    with fails("too little ETH to pay for gas|the chain rejected it"):
        me.register(CONTENT_NODE, MIN, ADDRS, node_key=env.key(1))


# -- the CLI against a real chain (anvil) -----------------------------------------------


def coliving(
    args: list[str], env: dict[str, str], *, code: int = 0
) -> subprocess.CompletedProcess[str]:
    """Runs the real ``coliving`` entry point in a subprocess (its own exit code and stderr)."""
    result = subprocess.run(
        [sys.executable, "-c", "import node; node.main()", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert result.returncode == code, f"{args}: {result.returncode}\n{result.stdout}{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def invoke(args: list[str], env: Mapping[str, str | None], *, code: int = 0) -> str:
    """Runs ``coliving ARGS`` in process (one import of web3 for the whole test)."""
    from cli.app import app

    result = CliRunner().invoke(app, args, env=env)
    output = result.output
    assert result.exit_code == code, f"{args}: {result.exit_code}\n{output}"
    # an exception other than the exit means a traceback would have been printed
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    return output


@pytest.mark.slow
def test_cli_operator_end_to_end(anvil_url: str, tmp_path: Path) -> None:
    data = tmp_path / "node"
    deployment = tmp_path / "deployment.json"
    operator_key = Account.create()
    secret = bytes(operator_key.key).hex()
    base = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "COLIVING_RPC": anvil_url,
        "COLIVING_DEPLOYMENT": str(deployment),
        "COLIVING_HOME": str(data),
    }
    deployer_env = {**base, OPERATOR_KEY_ENV: ANVIL_KEY_0}
    env = {**base, OPERATOR_KEY_ENV: secret}
    outputs: list[str] = []

    def run(args: list[str], *, code: int = 0, who: dict[str, str] = env) -> str:
        output = invoke(args, _isolated(who), code=code)
        outputs.append(output)
        return output

    out = run(["chain", "deploy", "--out", str(deployment), "--lockup", "3"], who=deployer_env)
    assert "registry" in out and json.loads(deployment.read_text())["chain_id"] == 31337
    out = run(["chain", "fund", operator_key.address, "300000", "--eth", "1"], who=deployer_env)
    assert "300000 LIVE" in out
    run(["init"])
    out = run(["operator", "register", "--type", "storage-node", "--stake", "200000"], code=1)
    assert "unknown service type 'storage-node': known types are content-node" in out
    out = run(["operator", "register", "--type", "content-node", "--stake", "1.5"], code=1)
    assert "below the service type's minimum of 200000 LIVE" in out
    out = run(["operator", "register", "--type", "content-node", "--stake", "abc"], code=1)
    assert "not an amount of tokens" in out
    out = run(
        [
            "operator",
            "register",
            "--type",
            "content-node",
            "--stake",
            "250000",
            "--multiaddr",
            "/ip4/127.0.0.1/tcp/4001",
        ]
    )
    assert "registered" in out
    out = run(["operator", "status"])
    assert "accepted" in out and "yes" in out and "250000 LIVE" in out
    assert "/ip4/127.0.0.1/tcp/4001" in out
    out = run(["operator", "stake", "decrease", "10000"])
    assert "unlock" in out.lower()
    out = run(["operator", "stake", "decrease", "--finish"], code=1)
    assert "the lockup is not over" in out
    # the real process: exit code 1, one line on stderr, nothing on stdout, no traceback
    real = coliving(["operator", "stake", "decrease", "--finish"], env, code=1)
    assert real.stdout == "" and real.stderr.count("\n") == 1
    assert real.stderr.startswith("error: finish decrease: the lockup is not over")
    outputs.append(real.stdout + real.stderr)
    out = run(["operator", "stake", "increase", "1.25"])
    assert "1.25 LIVE" in out
    out = run(["operator", "deregister"])
    assert "deregistered" in out
    out = run(["operator", "status"])
    assert "deregistered" in out
    out = run(["operator", "stake", "decrease", "--finish"], code=1)
    assert "is deregistered: withdraw its stake after block" in out
    # bad input, each one clean line
    bad_rpc = {**env, "COLIVING_RPC": f"http://127.0.0.1:{closed_port()}"}
    out = run(["operator", "status"], code=1, who=bad_rpc)
    assert "cannot reach chain RPC" in out and out.count("\n") == 1
    out = run(["operator", "status", "--chain-id", "1"], code=1)
    assert "expected chain 1, RPC" in out
    no_wallet = {k: v for k, v in env.items() if k != OPERATOR_KEY_ENV}
    out = run(["operator", "deregister"], code=1, who=no_wallet)
    assert "no wallet" in out
    # never the key: not in any output, in any case
    for text in outputs:
        assert secret not in text.lower() and ANVIL_KEY_0[2:] not in text.lower()


def _isolated(env: Mapping[str, str]) -> dict[str, str | None]:
    """``env`` with every other COLIVING_ variable of this process unset."""
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("COLIVING_")}
    return {**unset, **env}


def test_cli_bad_input_without_chain(tmp_path: Path) -> None:
    """No chain needed: errors before any RPC call, one line each, exit code 1."""
    runner = CliRunner()
    from cli.app import app

    env = {
        "COLIVING_HOME": str(tmp_path),
        "COLIVING_RPC": f"http://127.0.0.1:{closed_port()}",
        "COLIVING_DEPLOYMENT": str(tmp_path / "none.json"),
        OPERATOR_KEY_ENV: "zz",
    }
    result = runner.invoke(app, ["operator", "status"], env=env)
    assert result.exit_code == 1 and "no node key in" in result.output
    delegate = ["--delegate", delegate_of(b"\1" * 32)]
    result = runner.invoke(app, ["operator", "status", *delegate], env=env)
    assert (
        result.exit_code == 1
        and "deployment file" in result.output
        and "not found" in result.output
    )
    result = runner.invoke(app, ["operator", "status", "--delegate", "0x12"], env=env)
    assert result.exit_code == 1 and "not an Ethereum delegate address" in result.output
    result = runner.invoke(app, ["operator", "stake", "increase", "-3"], env=env)
    assert result.exit_code in (1, 2)
    result = runner.invoke(app, ["operator", "stake", "increase", "1.5x", *delegate], env=env)
    assert result.exit_code == 1 and "not an amount of tokens: '1.5x'" in result.output
    result = runner.invoke(app, ["operator", "deregister", *delegate], env=env)
    assert result.exit_code == 1 and "COLIVING_OPERATOR_KEY is not a 32-byte hex" in result.output
    assert "zz" not in result.output.replace("32-byte", "")


def test_deregister_with_pending_decrease_on_anvil(anvil_url: str) -> None:
    """anvil 1.7 estimates this call too low (a storage refund): our gas margin covers it."""
    w3 = open_rpc(anvil_url)
    deployment = deploy(w3, url=anvil_url, decrease_lockup_blocks=3, undelegate_lockup_blocks=3)
    chain = check_deployment(w3, deployment, url=anvil_url)
    owner: LocalAccount = Account.create()
    Operator(chain, first_unlocked_account(w3)).fund(owner.address, 300_000 * LIVE, eth=10**18)
    me = Operator(chain, owner)
    key = b"\x09" * 32
    me.register(CONTENT_NODE, 250_000 * LIVE, ADDRS, node_key=key)
    me.request_decrease(delegate_of(key), 10_000 * LIVE)
    result = me.deregister(delegate_of(key))
    assert result.amount == 250_000 * LIVE
    assert not me.status(delegate_of(key)).active
