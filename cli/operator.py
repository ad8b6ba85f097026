"""``coliving operator ...`` and ``coliving chain ...``: staking from the command line.

Two wallets meet here. The *owner wallet* pays: it holds the tokens and the
ETH for gas and signs every transaction. It comes from ``--keystore FILE``
(password from ``$COLIVING_KEYSTORE_PASSWORD`` or a prompt) or from the hex
key in ``$COLIVING_OPERATOR_KEY``, and is never printed. The *node* is the
provider: its delegate address is the Ethereum address of the node key in
``<data dir>/node.key`` (or ``--delegate ADDRESS``).

Two-step operations (the contracts lock tokens for some blocks):

- ``stake decrease AMOUNT`` requests a decrease and prints its unlock block;
  ``stake decrease --finish`` pays it out after that block; ``--cancel`` drops it.
- ``deregister`` stops the node counting at once; ``withdraw`` pays the whole
  own stake back after the lockup.
- ``undelegate NODE AMOUNT`` requests; ``undelegate NODE --finish`` pays out.

Every error is one line on stderr and exit code 1: no traceback, no secret.
Web3 is imported only when a command runs, so other commands stay fast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from chain.operator import Chain, Operator, ProviderStatus, TxResult

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
# secrets loaded by this process: scrubbed from any error text before it is shown
_SECRETS: set[str] = set()

operator_app = typer.Typer(
    help="Stake and register a node on chain; leave, withdraw, delegate. "
    "Wallet: --keystore FILE (password from $COLIVING_KEYSTORE_PASSWORD or a prompt) "
    "or $COLIVING_OPERATOR_KEY (hex). Decrease, deregister and undelegate are two steps: "
    "a request, then --finish (or withdraw) after the lockup block it prints.",
    no_args_is_help=True,
)
stake_app = typer.Typer(
    help="Add to or take from the node's own stake. A decrease is two steps: "
    "`stake decrease AMOUNT` requests it, `stake decrease --finish` pays it out "
    "after the unlock block; `stake decrease --cancel` drops the request.",
    no_args_is_help=True,
)
operator_app.add_typer(stake_app, name="stake")
chain_app = typer.Typer(
    help="Development chains: deploy the contracts, hand out tokens.", no_args_is_help=True
)

Rpc = Annotated[
    str,
    typer.Option("--rpc", envvar="COLIVING_RPC", help="Ethereum JSON-RPC URL."),
]
DeploymentFile = Annotated[
    Path | None,
    typer.Option(
        "--deployment",
        envvar="COLIVING_DEPLOYMENT",
        help="Deployment JSON (contract addresses).",
        dir_okay=False,
    ),
]
Keystore = Annotated[
    Path | None,
    typer.Option(
        "--keystore",
        help="Owner wallet keystore JSON (else env COLIVING_OPERATOR_KEY, a hex key).",
        dir_okay=False,
    ),
]
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        "-d",
        help="Node data directory, for its key (env COLIVING_HOME, else ~/.coliving).",
    ),
]
Delegate = Annotated[
    str | None,
    typer.Option(
        "--delegate",
        help="The node's delegate address (default: the address of <data dir>/node.key).",
    ),
]
ChainId = Annotated[
    int | None,
    typer.Option(
        "--chain-id",
        envvar="COLIVING_CHAIN_ID",
        help="Refuse any other chain.",
    ),
]
DEFAULT_RPC = "http://127.0.0.1:8545"


# -- plumbing ---------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    for secret in _SECRETS:
        message = message.replace(secret, "<redacted>")
    err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(1)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Every failure as one line and exit code 1."""
    from chain.operator import OperatorError
    from p2p.keys import KeyFileError

    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except (OperatorError, KeyFileError, ValueError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        err.print("stopped")
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug or an odd node: still one line, never a traceback
        first = str(exc).splitlines()[0] if str(exc) else ""
        _fail(f"unexpected {type(exc).__name__}: {first[:300]}")


def _amount(text: str) -> int:
    from chain.operator import parse_amount

    return parse_amount(text)


def _wallet(keystore: Path | None) -> LocalAccount:
    from chain.operator import load_wallet

    def ask(question: str) -> str:
        return str(typer.prompt(question, hide_input=True))

    wallet = load_wallet(keystore, prompt=ask)
    _SECRETS.add(bytes(wallet.key).hex())
    return wallet


def _chain(rpc: str, deployment: Path | None, chain_id: int | None) -> Chain:
    from chain.operator import OperatorError, connect_rpc

    if deployment is None:
        raise OperatorError(
            "which contracts? pass --deployment FILE or set COLIVING_DEPLOYMENT "
            "(`coliving chain deploy --out FILE` writes one on a dev chain)"
        )
    return connect_rpc(rpc, deployment, chain_id)


def _operator(
    rpc: str, deployment: Path | None, keystore: Path | None, chain_id: int | None
) -> Operator:
    from chain.operator import Operator

    wallet = _wallet(keystore)  # before any network traffic: a missing wallet fails fast
    return Operator(_chain(rpc, deployment, chain_id), wallet)


def _node_key(data_dir: Path | None) -> bytes:
    from cli.app import data_dir_of
    from p2p.keys import NodeKey

    return NodeKey.load(data_dir_of(data_dir)).secret


def _delegate(delegate: str | None, data_dir: Path | None) -> str:
    from chain.operator import checked_address, delegate_of

    if delegate:
        return checked_address(delegate, "delegate address")
    return delegate_of(_node_key(data_dir))


def _tx_line(what: str, result: TxResult) -> None:
    out.print(f"{what} (block {result.block}, tx {result.tx_hash})", markup=False)


def _blocks_to_go(unlock: int, head: int) -> str:
    return "now" if unlock <= head else f"in {unlock - head} blocks"


# -- operator -------------------------------------------------------------------------


@operator_app.command()
def register(
    service_type: Annotated[
        str, typer.Option("--type", "-t", help="Service type, e.g. content-node.")
    ],
    stake: Annotated[str, typer.Option("--stake", "-s", help="Tokens to stake, e.g. 200000.")],
    multiaddr: Annotated[
        list[str] | None,
        typer.Option("--multiaddr", "-m", help="A multiaddr peers reach the node at (repeatable)."),
    ] = None,
    signature: Annotated[
        str | None,
        typer.Option(
            "--signature",
            help="The node's consent, made on its machine with `operator sign-consent` "
            "(then pass --delegate too; no node key needed here).",
        ),
    ] = None,
    delegate: Delegate = None,
    rpc: Rpc = DEFAULT_RPC,
    deployment: DeploymentFile = None,
    keystore: Keystore = None,
    data_dir: DataDir = None,
    chain_id: ChainId = None,
) -> None:
    """Stake tokens from the wallet and register the node (approve + register)."""
    from chain.operator import OperatorError, format_amount

    with _user_errors():
        amount = _amount(stake)
        op = _operator(rpc, deployment, keystore, chain_id)
        addrs = list(multiaddr or [])
        if signature is not None:
            if delegate is None:
                raise OperatorError("--signature needs --delegate (the address that signed)")
            try:
                sig = bytes.fromhex(signature.removeprefix("0x"))
            except ValueError:
                raise OperatorError("--signature is not hex") from None
            result = op.register(service_type, amount, addrs, delegate=delegate, signature=sig)
            node = delegate
        else:
            from p2p.host import peer_id_of_key
            from p2p.keys import NodeKey

            key = _node_key(data_dir)
            # placement maps delegates to peers through the /p2p/ part of these
            peer = peer_id_of_key(NodeKey(key))
            addrs = [a if "/p2p/" in a else f"{a}/p2p/{peer}" for a in addrs] or [f"/p2p/{peer}"]
            result = op.register(service_type, amount, addrs, node_key=key)
            node = _delegate(None, data_dir)
        _tx_line(f"registered {node} as {service_type} with {format_amount(amount)}", result)


@operator_app.command("sign-consent")
def sign_consent(
    owner: Annotated[str, typer.Option("--owner", help="The owner wallet's address.")],
    rpc: Rpc = DEFAULT_RPC,
    deployment: DeploymentFile = None,
    data_dir: DataDir = None,
    chain_id: ChainId = None,
) -> None:
    """On the node's machine: sign the node key's consent to be registered by OWNER."""
    from chain.operator import checked_address, consent_signature

    with _user_errors():
        chain = _chain(rpc, deployment, chain_id)
        key = _node_key(data_dir)
        sig = consent_signature(key, chain.deployment, checked_address(owner, "owner address"))
        out.print(f"delegate:  {_delegate(None, data_dir)}", markup=False)
        out.print(f"signature: 0x{sig.hex()}", markup=False)


def status_table(s: ProviderStatus) -> Table:
    from chain.operator import format_amount

    table = Table(title=f"provider {s.delegate}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("state", s.state)
    if s.owner is not None:
        table.add_row("owner", s.owner)
        kind = s.service_type if s.type_exists else f"{s.service_type} (type removed)"
        table.add_row("service type", kind)
        table.add_row("own stake", format_amount(s.own_stake))
        table.add_row("delegated", format_amount(s.delegated_stake))
        table.add_row("total", format_amount(s.total_stake))
        table.add_row(
            "bounds", f"min {format_amount(s.min_stake)}, max {format_amount(s.max_stake)}"
        )
        if s.pending_decrease:
            what = "withdraw" if not s.active else "finish"
            table.add_row(
                "pending decrease",
                f"{format_amount(s.pending_decrease)}, unlocks at block {s.unlock_block} "
                f"({_blocks_to_go(s.unlock_block, s.current_block)}; then {what})",
            )
        else:
            table.add_row("pending decrease", "none")
        table.add_row("multiaddrs", "\n".join(s.multiaddrs) or "(none)")
    table.add_row("current block", str(s.current_block))
    if s.accepted:
        accepted = "[green]yes[/green]"
    elif not s.active:
        accepted = "[red]no[/red] (not registered)"
    elif not s.type_exists:
        accepted = "[red]no[/red] (service type removed)"
    else:
        accepted = f"[red]no[/red] (total below the minimum {format_amount(s.min_stake)})"
    table.add_row("accepted by peers", accepted)
    return table


@operator_app.command()
def status(
    delegate: Delegate = None,
    rpc: Rpc = DEFAULT_RPC,
    deployment: DeploymentFile = None,
    keystore: Keystore = None,
    data_dir: DataDir = None,
    chain_id: ChainId = None,
) -> None:
    """Show the node's stake, bounds, lockups, multiaddrs, and whether peers accept it."""
    from chain.operator import Operator, format_amount, wallet_configured

    with _user_errors():
        node = _delegate(delegate, data_dir)
        chain = _chain(rpc, deployment, chain_id)
        wallet = _wallet(keystore) if wallet_configured(keystore) else None
        reader = Operator(chain, wallet if wallet is not None else node)
        out.print(status_table(reader.status(node)))
        if wallet is not None:
            out.print(
                f"wallet {wallet.address}: {format_amount(reader.token_balance())}, "
                f"{format_amount(reader.eth_balance()).replace('LIVE', 'ETH')}",
                markup=False,
            )


@operator_app.command("set-multiaddrs")
def set_multiaddrs(
    multiaddr: Annotated[list[str], typer.Argument(help="The node's multiaddrs (up to 8).")],
    delegate: Delegate = None,
    rpc: Rpc = DEFAULT_RPC,
    deployment: DeploymentFile = None,
    keystore: Keystore = None,
    data_dir: DataDir = None,
    chain_id: ChainId = None,
) -> None:
    """Replace the multiaddrs registered for the node."""
    with _user_errors():
        node = _delegate(delegate, data_dir)
        op = _operator(rpc, deployment, keystore, chain_id)
        _tx_line(f"multiaddrs of {node} updated", op.update_multiaddrs(node, multiaddr))


@stake_app.command("increase")
def stake_increase(
    amount: Annotated[str, typer.Argument(help="Tokens to add, e.g. 1000 or 0.5.")],
    delegate: Delegate = None,
    rpc: Rpc = DEFAULT_RPC,
    deployment: DeploymentFile = None,
    keystore: Keystore = None,
    data_dir: DataDir = None,
    chain_id: ChainId = None,
) -> None:
    """Add tokens from the wallet to the node's own stake."""
    from chain.operator import format_amount

    with _user_errors():
        value = _amount(amount)
        node = _delegate(delegate, data_dir)
        op = _operator(rpc, deployment, keystore, chain_id)
        result = op.increase(node, value)
        total = op.status(node).own_stake
        _tx_line(
            f"stake of {node} increased by {format_amount(value)} to {format_amount(total)}",
            result,
        )


@stake_app.command("decrease")
def stake_decrease(
    amount: Annotated[
        str | None, typer.Argument(help="Tokens to take out (omit with --finish/--cancel).")
    ] = None,
    finish: Annotated[
        bool, typer.Option("--finish", help="Pay out the pending decrease (after its lockup).")
    ] = False,
    cancel: Annotated[bool, typer.Option("--cancel", help="Drop the pending request.")] = False,
    delegate: Delegate = None,
    rpc: Rpc = DEFAULT_RPC,
    deployment: DeploymentFile = None,
    keystore: Keystore = None,
    data_dir: DataDir = None,
    chain_id: ChainId = None,
) -> None:
    """Request a decrease of the own stake (AMOUNT), or --finish / --cancel the pending one."""
    from chain.operator import OperatorError, format_amount

    with _user_errors():
        if finish + cancel + (amount is not None) != 1:
            raise OperatorError("give AMOUNT to request a decrease, or --finish, or --cancel")
        value = _amount(amount) if amount is not None else 0
        node = _delegate(delegate, data_dir)
        op = _operator(rpc, deployment, keystore, chain_id)
        if finish:
            result = op.decrease(node)
            _tx_line(f"decrease done: {format_amount(result.amount)} back to the wallet", result)
        elif cancel:
            _tx_line("decrease request cancelled", op.cancel_decrease(node))
        else:
            result = op.request_decrease(node, value)
            _tx_line(
                f"decrease of {format_amount(value)} requested; unlocks at block "
                f"{result.unlock_block}: then run `coliving operator stake decrease --finish`",
                result,
            )


@operator_app.command()
def deregister(
    delegate: Delegate = None,
    rpc: Rpc = DEFAULT_RPC,
    deployment: DeploymentFile = None,
    keystore: Keystore = None,
    data_dir: DataDir = None,
    chain_id: ChainId = None,
) -> None:
    """Stop the node counting at once; `withdraw` the stake after the printed block."""
    from chain.operator import format_amount

    with _user_errors():
        node = _delegate(delegate, data_dir)
        op = _operator(rpc, deployment, keystore, chain_id)
        result = op.deregister(node)
        _tx_line(
            f"deregistered {node}; {format_amount(result.amount)} unlocks at block "
            f"{result.unlock_block}: then run `coliving operator withdraw`",
            result,
        )


@operator_app.command()
def withdraw(
    delegate: Delegate = None,
    rpc: Rpc = DEFAULT_RPC,
    deployment: DeploymentFile = None,
    keystore: Keystore = None,
    data_dir: DataDir = None,
    chain_id: ChainId = None,
) -> None:
    """After `deregister` and its lockup: pay the whole own stake back to the wallet."""
    from chain.operator import format_amount

    with _user_errors():
        node = _delegate(delegate, data_dir)
        op = _operator(rpc, deployment, keystore, chain_id)
        result = op.withdraw(node)
        _tx_line(f"withdrew {format_amount(result.amount)} from {node}", result)


@operator_app.command("delegate")
def delegate_cmd(
    node: Annotated[str, typer.Argument(help="The provider's delegate address.")],
    amount: Annotated[str, typer.Argument(help="Tokens to delegate.")],
    rpc: Rpc = DEFAULT_RPC,
    deployment: DeploymentFile = None,
    keystore: Keystore = None,
    chain_id: ChainId = None,
) -> None:
    """Delegate tokens from the wallet to a registered provider."""
    from chain.operator import format_amount

    with _user_errors():
        value = _amount(amount)
        op = _operator(rpc, deployment, keystore, chain_id)
        result = op.delegate(node, value)
        _tx_line(f"delegated {format_amount(value)} to {node}", result)


@operator_app.command("undelegate")
def undelegate_cmd(
    node: Annotated[str, typer.Argument(help="The provider's delegate address.")],
    amount: Annotated[
        str | None, typer.Argument(help="Tokens to take back (omit with --finish/--cancel).")
    ] = None,
    finish: Annotated[
        bool, typer.Option("--finish", help="Pay out the pending undelegation (after its lockup).")
    ] = False,
    cancel: Annotated[bool, typer.Option("--cancel", help="Drop the pending request.")] = False,
    rpc: Rpc = DEFAULT_RPC,
    deployment: DeploymentFile = None,
    keystore: Keystore = None,
    chain_id: ChainId = None,
) -> None:
    """Request an undelegation of AMOUNT, or --finish / --cancel the pending one."""
    from chain.operator import OperatorError, format_amount

    with _user_errors():
        if finish + cancel + (amount is not None) != 1:
            raise OperatorError("give AMOUNT to request an undelegation, or --finish, or --cancel")
        value = _amount(amount) if amount is not None else 0
        op = _operator(rpc, deployment, keystore, chain_id)
        if finish:
            result = op.undelegate(node)
            _tx_line(f"undelegated {format_amount(result.amount)} back to the wallet", result)
        elif cancel:
            _tx_line("undelegation request cancelled", op.cancel_undelegate(node))
        else:
            result = op.request_undelegate(node, value)
            _tx_line(
                f"undelegation of {format_amount(value)} requested; unlocks at block "
                f"{result.unlock_block}: then run `coliving operator undelegate {node} --finish`",
                result,
            )


# -- chain (dev) ----------------------------------------------------------------------


@chain_app.command("deploy")
def chain_deploy(
    out_file: Annotated[
        Path,
        typer.Option("--out", "-o", help="Where to write the deployment JSON.", dir_okay=False),
    ] = Path("deployment.json"),
    lockup: Annotated[
        int,
        typer.Option("--lockup", min=0, max=1_000_000, help="Decrease/undelegate lockup, blocks."),
    ] = 10,
    rpc: Rpc = DEFAULT_RPC,
    keystore: Keystore = None,
    chain_id: ChainId = None,
) -> None:
    """Deploy token, service types and registry; the whole supply goes to the deployer.

    The deployer is the wallet (--keystore or $COLIVING_OPERATOR_KEY) if one is
    given, else the chain's first unlocked account (anvil's dev accounts).
    """
    from chain.operator import OperatorError, deploy, open_rpc, wallet_configured, write_deployment

    with _user_errors():
        wallet = _wallet(keystore) if wallet_configured(keystore) else None
        w3 = open_rpc(rpc)
        if chain_id is not None and w3.eth.chain_id != chain_id:
            raise OperatorError(f"expected chain {chain_id}, RPC {rpc} is chain {w3.eth.chain_id}")
        deployment = deploy(
            w3, wallet, url=rpc, decrease_lockup_blocks=lockup, undelegate_lockup_blocks=lockup
        )
        write_deployment(deployment, out_file)
        out.print(f"chain {deployment.chain_id}: deployed, written to {out_file}", markup=False)
        out.print(f"  token         {deployment.token}", markup=False)
        out.print(f"  service types {deployment.service_types}", markup=False)
        out.print(f"  registry      {deployment.registry}", markup=False)
        out.print(f"  governance    {deployment.governance}", markup=False)


@chain_app.command("fund")
def chain_fund(
    address: Annotated[str, typer.Argument(help="Who gets the tokens.")],
    amount: Annotated[str, typer.Argument(help="Tokens to send, e.g. 250000.")],
    eth: Annotated[
        str, typer.Option("--eth", help="Also send this much ETH, for gas (e.g. 1).")
    ] = "0",
    rpc: Rpc = DEFAULT_RPC,
    deployment: DeploymentFile = None,
    keystore: Keystore = None,
    chain_id: ChainId = None,
) -> None:
    """Send tokens (and --eth for gas) from the wallet, or the first unlocked account."""
    from chain.operator import (
        Operator,
        checked_address,
        first_unlocked_account,
        format_amount,
        parse_eth,
        wallet_configured,
    )

    with _user_errors():
        value = _amount(amount)
        wei = parse_eth(eth)
        to = checked_address(address)
        chain = _chain(rpc, deployment, chain_id)
        wallet = _wallet(keystore) if wallet_configured(keystore) else None
        sender = wallet if wallet is not None else first_unlocked_account(chain.w3, rpc)
        op = Operator(chain, sender)
        result = op.fund(to, value, eth=wei)
        extra = f" and {format_amount(wei).replace('LIVE', 'ETH')}" if wei else ""
        _tx_line(f"sent {format_amount(value)}{extra} to {to}", result)
        out.print(f"{to} now holds {format_amount(op.token_balance(to))}", markup=False)


__all__ = ["chain_app", "operator_app", "status_table"]
