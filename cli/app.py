"""The ``coliving`` command line.

Node commands run a node from a data directory (``--data-dir``, or
``$COLIVING_HOME``, or ``~/.coliving``). Client commands (add, get, cat,
peers) start a light libp2p peer, talk to the node given by ``--node`` (or
``$COLIVING_NODE``, or the address a local node wrote to ``node.addr``), and
exit. Progress goes to stderr, so ``coliving cat CID | ffplay -`` plays.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import trio
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from chain.oracle import AllowlistOracle
from cli.music import register as register_music
from cli.operator import chain_app, operator_app
from cli.simnet import simnet_app
from node import Client, ConfigError, Node, NodeConfig, file_chunks
from p2p.abc import StreamError
from p2p.host import AddressError, DialError, Host, HostConfig, peer_of_addr
from p2p.keys import KeyFileError, NodeKey
from protocols.cid import CID
from protocols.errors import DecodingError, NotFoundError, ProtocolError
from protocols.upload import Uploaded, UploadError
from store.blockstore import BlockStore, StoreError

app = typer.Typer(
    help="Coliving: a community-owned music network on libp2p. "
    "Start with `coliving devnet` to run a local network of nodes.",
    no_args_is_help=True,
    add_completion=False,
)
node_app = typer.Typer(help="Run a content node.", no_args_is_help=True)
app.add_typer(node_app, name="node")
app.add_typer(operator_app, name="operator")
app.add_typer(chain_app, name="chain")
app.add_typer(simnet_app, name="simnet")
discovery_app = typer.Typer(
    help="Run a discovery node: index the chain's users, tracks and playlists, answer "
    "queries (/v1 on the gateway, and over libp2p), count plays.",
    no_args_is_help=True,
)
app.add_typer(discovery_app, name="discovery")
identity_app = typer.Typer(
    help="Run the identity service: hedgehog accounts and the gas relay (on a discovery node).",
    no_args_is_help=True,
)
app.add_typer(identity_app, name="identity")
register_music(app)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

USER_ERRORS = (
    ConfigError,
    KeyFileError,
    StoreError,
    AddressError,
    DialError,
    NotFoundError,
    UploadError,
    ProtocolError,
    DecodingError,
    StreamError,
    trio.TooSlowError,
    FileNotFoundError,
    IsADirectoryError,
    PermissionError,
)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", "-d", help="Node data directory (env COLIVING_HOME, else ~/.coliving)."
    ),
]
NodeAddr = Annotated[
    str | None,
    typer.Option(
        "--node",
        "-n",
        help="Multiaddr of a node, with /p2p/<peer id> "
        "(env COLIVING_NODE, else the address in <data dir>/node.addr).",
    ),
]
RelayKey = Annotated[
    Path | None,
    typer.Option(
        "--relay-key",
        metavar="FILE",
        help="A file holding the relay wallet's hex private key (mode 0600; funded with ETH): "
        "the wallet that pays users' gas. Without it, no relay.",
        exists=True,
        dir_okay=False,
    ),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail to stderr.")]


def data_dir_of(given: Path | None) -> Path:
    if given is not None:
        return given
    env = os.environ.get("COLIVING_HOME")
    return Path(env) if env else Path.home() / ".coliving"


def node_addr_of(given: str | None, data_dir: Path | None = None) -> str:
    if given:
        return given
    env = os.environ.get("COLIVING_NODE")
    if env:
        return env
    path = data_dir_of(data_dir) / "node.addr"
    if path.exists():
        return path.read_text().split()[0]
    raise ConfigError(
        "which node? pass --node /ip4/.../tcp/.../p2p/<peer id>, set COLIVING_NODE, "
        "or start a node (`coliving node run`)"
    )


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        logging.getLogger("libp2p").setLevel(logging.CRITICAL)
        logging.getLogger().setLevel(logging.ERROR)  # libp2p also logs through the root


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` under trio; turn the errors a user can act on into one line."""
    try:
        return trio.run(fn)
    except (*USER_ERRORS, BaseExceptionGroup) as exc:
        leaves = _leaves(exc)
        if all(isinstance(e, KeyboardInterrupt) for e in leaves):
            err.print("stopped")
            raise typer.Exit(130) from None
        if not all(isinstance(e, USER_ERRORS) for e in leaves):
            raise
        for leaf in leaves:
            err.print(f"[red]error:[/red] {leaf}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("stopped")
        raise typer.Exit(130) from None


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups that trio nurseries raise."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def progress_bar() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


# -- identity ------------------------------------------------------------------


@app.command()
def init(
    data_dir: DataDir = None, force: bool = typer.Option(False, help="Replace an existing key.")
) -> None:
    """Create a node identity (a secp256k1 key, mode 0600) in the data directory."""
    path = data_dir_of(data_dir)
    try:
        key = NodeKey.create(path, overwrite=force)
    except KeyFileError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    from p2p.host import peer_id_of_key

    typer.echo(f"data dir:   {path}")
    typer.echo(f"peer id:    {peer_id_of_key(key)}")
    typer.echo(f"eth address {key.eth_address}")


@app.command("id")
def show_id(data_dir: DataDir = None) -> None:
    """Print this node's peer ID, listen addresses and Ethereum address."""
    from p2p.host import peer_id_of_key

    path = data_dir_of(data_dir)
    try:
        key = NodeKey.load(path)
        config = NodeConfig.load(path)
    except (KeyFileError, ConfigError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    peer = peer_id_of_key(key)
    typer.echo(f"peer id:     {peer}")
    typer.echo(f"eth address: {key.eth_address}")
    addr_file = path / "node.addr"
    if addr_file.exists():
        for addr in addr_file.read_text().split():
            typer.echo(f"listening:   {addr}")
    else:
        for addr in config.listen:
            typer.echo(f"listen:      {addr}/p2p/{peer}  (configured; node not running)")


# -- running a node ------------------------------------------------------------


@node_app.command("run")
def node_run(
    data_dir: DataDir = None,
    listen: Annotated[
        list[str] | None,
        typer.Option("--listen", "-l", help="Multiaddr to listen on (repeatable)."),
    ] = None,
    bootstrap: Annotated[
        list[str] | None, typer.Option("--bootstrap", "-b", help="Peer multiaddr to dial at start.")
    ] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow", help="Without --rpc: a peer ID to accept announcements from (no chain)."
        ),
    ] = None,
    rpc: Annotated[
        str | None,
        typer.Option(
            envvar="COLIVING_RPC",
            help="JSON-RPC URL of the chain: accept announcements only from peers staked there.",
        ),
    ] = None,
    deployment: Annotated[
        Path | None,
        typer.Option(
            envvar="COLIVING_DEPLOYMENT",
            help="With --rpc: the deployment file naming the contracts (coliving chain deploy).",
        ),
    ] = None,
    gateway: Annotated[
        str | None,
        typer.Option(
            "--gateway",
            metavar="HOST:PORT",
            help="Serve HTTP: files by CID (/ipfs/CID, Range requests), a web player "
            "(/player), /health and /metrics. Port 0 picks a free port.",
        ),
    ] = None,
    cache: Annotated[
        str | None,
        typer.Option(
            "--cache",
            metavar="SIZE",
            help="Keep this much of the blocks no pin reaches (streams, range reads) "
            "before removing them, such as 2GiB (default 1GiB; cache_bytes in node.toml).",
        ),
    ] = None,
    discovery: Annotated[
        bool,
        typer.Option(
            "--discovery",
            help="Also take the discovery role (needs --rpc and --deployment; "
            "settings in [discovery] of node.toml).",
        ),
    ] = False,
    identity: Annotated[
        bool,
        typer.Option(
            "--identity",
            help="Also serve accounts and the gas relay under /identity (needs --discovery; "
            "settings in [identity] of node.toml).",
        ),
    ] = False,
    relay_key: RelayKey = None,
    verbose: Verbose = False,
) -> None:
    """Run a content node until Ctrl-C.

    With --rpc and --deployment (or rpc/deployment in node.toml) the node
    accepts announcements only from content nodes staked on that chain; an
    unreachable RPC is retried in the background while the node serves.
    """
    setup_logging(verbose)
    path = data_dir_of(data_dir)

    async def main() -> None:
        config = NodeConfig.load(
            path,
            listen=tuple(listen) if listen else None,
            bootstrap=tuple(bootstrap) if bootstrap else None,
            allow=tuple(allow) if allow else None,
            rpc=rpc,
            deployment=str(deployment) if deployment else None,
            gateway=gateway,
            cache_bytes=cache,
        )
        if discovery and config.discovery is None:
            from discovery.service import DiscoveryConfig

            config = dataclasses.replace(config, discovery=DiscoveryConfig())
        if identity or relay_key is not None:
            from identity.accounts import IdentityConfig

            base = config.identity or IdentityConfig()
            if relay_key is not None:
                base = dataclasses.replace(base, relay_key_file=relay_key)
            config = dataclasses.replace(config, identity=base)
        node = Node(config)
        async with trio.open_nursery() as nursery:
            await _check_chain(node)
            await nursery.start(node.run)
            addrs = node.host.addrs()
            (path / "node.addr").write_text("\n".join(addrs) + "\n")
            err.print(f"[green]node {node.peer_id} running[/green]; data in {path}")
            for addr in addrs:
                typer.echo(addr)
            if node.gateway is not None:
                err.print(f"gateway {node.gateway_url}  player {node.gateway.player_url}")
            if node.discovery is not None:
                where = f"{node.gateway_url}/v1" if node.gateway is not None else "libp2p only"
                err.print(f"discovery: indexing {config.rpc}; API {where}")
            if node.identity is not None and node.gateway is not None:
                relay = "with" if config.identity and config.identity.relay_key_file else "without"
                err.print(f"identity: accounts {node.gateway_url}/identity, {relay} a gas relay")
            try:
                await trio.sleep_forever()
            finally:
                (path / "node.addr").unlink(missing_ok=True)

    run_async(main)


@discovery_app.command("run")
def discovery_run(
    data_dir: DataDir = None,
    listen: Annotated[
        list[str] | None,
        typer.Option("--listen", "-l", help="Multiaddr to listen on (repeatable)."),
    ] = None,
    bootstrap: Annotated[
        list[str] | None, typer.Option("--bootstrap", "-b", help="Peer multiaddr to dial at start.")
    ] = None,
    rpc: Annotated[
        str | None,
        typer.Option(envvar="COLIVING_RPC", help="JSON-RPC URL of the chain to index."),
    ] = None,
    deployment: Annotated[
        Path | None,
        typer.Option(
            envvar="COLIVING_DEPLOYMENT",
            help="The deployment file naming the contracts (coliving chain deploy).",
        ),
    ] = None,
    gateway: Annotated[
        str,
        typer.Option(
            "--gateway",
            metavar="HOST:PORT",
            help="Serve the query API under /v1 here (and /health, /metrics, /ipfs/CID).",
        ),
    ] = "127.0.0.1:8080",
    verbose: Verbose = False,
) -> None:
    """Run a discovery node until Ctrl-C: a node with the discovery role.

    It indexes the EntityManager events of the chain (--rpc, --deployment),
    waiting for `confirmations` blocks and undoing reorgs, and serves the
    query API. `/health` shows the indexed block, the index digest and the
    lag behind the chain. Register it on chain as a `discovery-node`
    (`coliving operator register --type discovery-node`) for its peers to
    accept the plays it shares.
    """
    node_run(
        data_dir=data_dir,
        listen=listen,
        bootstrap=bootstrap,
        allow=None,
        rpc=rpc,
        deployment=deployment,
        gateway=gateway,
        cache=None,
        discovery=True,
        identity=False,
        relay_key=None,
        verbose=verbose,
    )


@identity_app.command("run")
def identity_run(
    relay_key: RelayKey = None,
    data_dir: DataDir = None,
    listen: Annotated[
        list[str] | None,
        typer.Option("--listen", "-l", help="Multiaddr to listen on (repeatable)."),
    ] = None,
    bootstrap: Annotated[
        list[str] | None, typer.Option("--bootstrap", "-b", help="Peer multiaddr to dial at start.")
    ] = None,
    rpc: Annotated[
        str | None,
        typer.Option(envvar="COLIVING_RPC", help="JSON-RPC URL of the chain to index."),
    ] = None,
    deployment: Annotated[
        Path | None,
        typer.Option(
            envvar="COLIVING_DEPLOYMENT", help="The deployment file naming the contracts."
        ),
    ] = None,
    gateway: Annotated[
        str,
        typer.Option("--gateway", metavar="HOST:PORT", help="Serve /identity and /v1 here."),
    ] = "127.0.0.1:8080",
    verbose: Verbose = False,
) -> None:
    """Run the identity service until Ctrl-C: a discovery node that also keeps
    hedgehog accounts (sign-up, log-in; only what the client encrypted) and,
    with --relay-key, pays users' gas (POST /identity/relay). The accounts live
    in the discovery index's database, and handles are checked against it."""
    node_run(
        data_dir=data_dir,
        listen=listen,
        bootstrap=bootstrap,
        allow=None,
        rpc=rpc,
        deployment=deployment,
        gateway=gateway,
        cache=None,
        discovery=True,
        identity=True,
        relay_key=relay_key,
        verbose=verbose,
    )


@node_app.command("compact")
def node_compact(
    data_dir: DataDir = None,
    collect: Annotated[
        bool,
        typer.Option(
            "--collect",
            help="First remove every block no pin reaches (the cache of streamed files).",
        ),
    ] = False,
) -> None:
    """Shrink a stopped node's store file to the data it holds.

    The store reuses the space that collections and unpins free, but its file
    never shrinks; this rewrites it without the free pages. Stop the node
    first. It needs free disk for the data kept; a crash midway leaves the old
    store, whole.
    """
    store = data_dir_of(data_dir) / "store"
    if not (store / "data.mdb").exists():
        err.print(f"[red]error:[/red] no store in {store} (is --data-dir right?)")
        raise typer.Exit(1)
    err.print(f"compacting {store} ...")
    try:
        done = BlockStore.compact(store, collect=collect)
    except StoreError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if collect:
        typer.echo(f"removed {done.removed_blocks} blocks no pin reaches")
    mib = 1 << 20
    typer.echo(
        f"store: {done.before_bytes / mib:.1f} MiB -> {done.after_bytes / mib:.1f} MiB "
        f"({(done.before_bytes - done.after_bytes) / mib:.1f} MiB freed)"
    )


async def _check_chain(node: Node) -> None:
    """Fail fast on a chain that is reachable but wrong; only warn if unreachable."""
    from chain.access import ChainUnavailable
    from chain.stake import ChainStakeOracle, WrongChain

    if not isinstance(node.oracle, ChainStakeOracle):
        return
    try:
        with trio.fail_after(15):
            await node.oracle.check_chain()
    except (ChainUnavailable, trio.TooSlowError) as exc:
        err.print(
            f"[yellow]warning[/yellow]: {exc or 'chain RPC timed out'}; retrying in the "
            "background, accepting no announcements until it answers"
        )
    except WrongChain as exc:
        raise ConfigError(str(exc)) from None


# -- client commands -----------------------------------------------------------


async def _with_client(node_addr: str, body: Callable[[Client, Any], Awaitable[T]]) -> T:
    client = Client()
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.fail_after(15):
            peer = await client.connect(node_addr)
        result = await body(client, peer)
        nursery.cancel_scope.cancel()
    return result


@app.command()
def add(
    file: Annotated[Path, typer.Argument(help="The file to upload.", exists=True, dir_okay=False)],
    node: NodeAddr = None,
    data_dir: DataDir = None,
    verbose: Verbose = False,
) -> None:
    """Upload FILE to a node, which stores, pins and announces it; print its CID."""
    setup_logging(verbose)
    addr = _resolve(node, data_dir)
    size = file.stat().st_size

    async def body(client: Client, peer: Any) -> Uploaded:
        with progress_bar() as bar:
            task = bar.add_task(f"add {file.name}", total=size)
            return await client.upload(
                peer,
                file_chunks(file),
                name=file.name,
                size=size,
                progress=lambda n: bar.advance(task, n),
            )

    start = time.perf_counter()
    done = run_async(lambda: _with_client(addr, body))
    copies = "" if done.replicas is None else f", held by {done.replicas} staked node(s)"
    err.print(f"added {done.size} bytes in {time.perf_counter() - start:.2f} s{copies}")
    typer.echo(str(done.cid))


def _resolve(node: str | None, data_dir: Path | None) -> str:
    try:
        addr = node_addr_of(node, data_dir)
        peer_of_addr(addr)
    except (ConfigError, AddressError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    return addr


def _parse_cid(text: str) -> CID:
    try:
        return CID.parse(text)
    except DecodingError as exc:
        err.print(f"[red]error:[/red] {text!r} is not a CID: {exc}")
        raise typer.Exit(2) from None


@app.command()
def get(
    cid: Annotated[str, typer.Argument(help="CID of the file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the file.")],
    node: NodeAddr = None,
    data_dir: DataDir = None,
    verbose: Verbose = False,
) -> None:
    """Fetch a file by CID from every node that holds it; verify every block."""
    setup_logging(verbose)
    addr = _resolve(node, data_dir)
    root = _parse_cid(cid)
    if not output.parent.is_dir() or output.is_dir():
        # before any dial or transfer: the file would have nowhere to go
        where = "is a directory" if output.is_dir() else "is in no existing directory"
        err.print(f"[red]error:[/red] output {output} {where}")
        raise typer.Exit(2)
    partial = output.with_name(output.name + ".part")

    async def body(client: Client, peer: Any) -> int:
        fetch = await client.fetch(root, [peer])
        with progress_bar() as bar, partial.open("wb") as fh:
            task = bar.add_task(f"get {str(root)[:16]}…", total=None)
            async for chunk in fetch.leaves():
                fh.write(chunk)
                if fetch.filesize is not None:
                    bar.update(task, total=fetch.filesize)
                bar.advance(task, len(chunk))
        return fetch.bytes

    start = time.perf_counter()
    try:
        got = run_async(lambda: _with_client(addr, body))
    except BaseException:
        partial.unlink(missing_ok=True)  # never leave a half file under any name
        raise
    partial.replace(output)
    err.print(f"wrote {got} bytes to {output} in {time.perf_counter() - start:.2f} s")


@app.command()
def cat(
    cid: Annotated[str, typer.Argument(help="CID of the file.")],
    node: NodeAddr = None,
    data_dir: DataDir = None,
    verbose: Verbose = False,
) -> None:
    """Stream a file to stdout as its blocks arrive (pipe it to a player)."""
    setup_logging(verbose)
    addr = _resolve(node, data_dir)
    root = _parse_cid(cid)
    out = sys.stdout.buffer

    async def body(client: Client, peer: Any) -> None:
        fetch = await client.fetch(root, [peer])
        async for chunk in fetch.leaves():
            try:
                out.write(chunk)
                out.flush()
            except BrokenPipeError:
                return  # the player quit: not an error

    run_async(lambda: _with_client(addr, body))


@app.command()
def peers(node: NodeAddr = None, data_dir: DataDir = None, verbose: Verbose = False) -> None:
    """List the peers a node is connected to."""
    setup_logging(verbose)
    addr = _resolve(node, data_dir)

    async def body(client: Client, peer: Any) -> list[dict[str, Any]]:
        reply = await client.ask(peer, "peers")
        return list(reply["peers"])

    for entry in run_async(lambda: _with_client(addr, body)):
        if entry["peer"] == "":
            continue
        addrs = ", ".join(entry.get("addrs", [])) or "(no known address)"
        typer.echo(f"{entry['peer']}  {addrs}")


@app.command()
def devnet(
    nodes: Annotated[int, typer.Option("--nodes", "-n", min=1, max=50, help="How many nodes.")] = 3,
    demo: Annotated[
        bool, typer.Option(help="Add a sample track at the first node, fetch it at the last.")
    ] = True,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", "-d", help="Keep node data here (default: a temp dir)."),
    ] = None,
    exit_after_demo: Annotated[
        bool, typer.Option(help="Stop after the demo instead of running until Ctrl-C.")
    ] = False,
    rpc: Annotated[
        str,
        typer.Option(
            help="Chain: 'embedded' (in-process py-evm, contracts deployed at start) or the "
            "JSON-RPC URL of a dev chain with unlocked accounts, such as anvil."
        ),
    ] = "embedded",
    deployment: Annotated[
        Path | None,
        typer.Option(help="With --rpc: use the contracts of this deployment file, don't deploy."),
    ] = None,
    gateway: Annotated[
        str,
        typer.Option(
            "--gateway",
            metavar="HOST:PORT",
            help="Node0's HTTP gateway and web player ('' for none; port 0: a free port).",
        ),
    ] = "127.0.0.1:0",
    verbose: Verbose = False,
) -> None:
    """Start a local network of NODES staked content nodes on 127.0.0.1 until Ctrl-C.

    Deploys the staking contracts on the chain, registers every node, adds a
    sample track at the first node and fetches it at the last, then shows an
    unregistered node being ignored.
    """
    from cli.devnet import run_devnet

    setup_logging(verbose)
    run_async(
        lambda: run_devnet(
            nodes,
            demo=demo,
            data_dir=data_dir,
            exit_after_demo=exit_after_demo,
            rpc=rpc,
            deployment=deployment,
            gateway=gateway or None,
        )
    )


def run() -> None:
    app()


__all__ = ["AllowlistOracle", "Host", "HostConfig", "app", "run"]
