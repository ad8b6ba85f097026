"""Availability benchmark (issue 4): swarmed fetch, gateway first byte, repair.

``python -m bench.availability [--size MIB] [--trials N] [--nodes N] [--files K]
[--file-size MIB] [--quick]`` (``make bench``) prints, in one run:

(a) the raw single-stream throughput between two processes (one py-libp2p
    stream, as in bench/transfer.py): the ceiling every figure is read against;
(b) a swarmed ``get`` of a SIZE MiB file from 1, 2 and 3 holder processes at
    once, each into a fresh node: MB/s, ratio to (a), blocks per holder;
(c) the time to the first byte through the gateway (bench/gateway.py's
    measurement, TRIALS trials): median, for a file the gateway node holds and
    for one only another node holds;
(d) repair throughput: NODES nodes in this process on the embedded chain, each
    CID kept on R = 3 of them; K files of FILE-SIZE MiB are added and held by
    exactly their owners; then the owner of the most files is killed. Figure:
    bytes the survivors' repair pulled / seconds from the kill until every CID
    that node owned is again on R live holders. The seconds include noticing
    the loss (the next repair round) and repair is rate-limited by design
    (``ReplicationConfig``: a round every ``interval``, at most
    ``max_per_round`` CIDs a round, ``max_concurrent`` at once); the settings
    are printed beside the figure.

MB is 10^6 bytes. Progress goes to stderr, figures to stdout. The machine's load
average is printed at the start and the end: on a shared machine it says how
much the figures are worth.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from bench import gateway
from bench.server import bench_file
from bench.transfer import (
    MIB,
    QUICK_SIZE,
    err,
    get_throughput,
    load_average,
    machine,
    raw_and_providers,
    raw_throughput,
)
from chain.local import LocalChain, open_chain
from node import Node
from p2p.abc import TaskStatus
from p2p.host import peer_id_bytes
from protocols import announce, placement
from protocols.cid import CID
from protocols.replication import ReplicationConfig
from simnet.local import start_nodes, wait_for_mesh

REPLICAS = 3
REPAIR_INTERVAL = 0.3  # seconds between repair rounds: small, so the loss is noticed soon
GATEWAY_MIB = 4  # first-byte files: the figure does not grow with the file


@dataclass(frozen=True)
class Sizes:
    """What one run measures (``--quick``: a smoke run's small sizes)."""

    swarm_mib: int
    trials: int
    gateway_mib: int
    nodes: int
    files: int
    file_mib: int


QUICK = Sizes(swarm_mib=QUICK_SIZE, trials=5, gateway_mib=2, nodes=5, files=4, file_mib=1)


@dataclass(frozen=True)
class Repair:
    """One node loss and what the survivors pulled to make it good."""

    owned: int  # CIDs the killed node owned, all of them restored
    pulled: int  # CIDs the survivors' repair pulled
    bytes_pulled: int
    seconds: float  # from the kill until every owned CID had R live holders
    config: ReplicationConfig


# -- (d) repair ------------------------------------------------------------------


async def _killable(
    base: Path,
    chain: LocalChain,
    name: str,
    *,
    task_status: TaskStatus[tuple[Node, trio.CancelScope]] = trio.TASK_STATUS_IGNORED,
) -> None:
    # a nursery of its own: cancelling its scope is this node's loss, no one else's
    async with trio.open_nursery() as inner:
        (node,) = await start_nodes(
            inner,
            base,
            1,
            names=[name],
            chain=chain,
            replicas=REPLICAS,
            repair_interval=REPAIR_INTERVAL,
        )
        task_status.started((node, inner.cancel_scope))


def holders(cid: CID, nodes: Sequence[Node]) -> list[Node]:
    return [n for n in nodes if n.store.is_pinned(cid)]


def owners(cid: CID, nodes: Sequence[Node], *, dead: Node | None = None) -> set[Node]:
    """The R owners of ``cid`` among the registered ``nodes``, ``dead`` not live."""
    members = [peer_id_bytes(n.peer_id) for n in nodes]
    gone = None if dead is None else peer_id_bytes(dead.peer_id)
    chosen = placement.owners(cid, members, REPLICAS, live=lambda p: p != gone)
    return {n for n in nodes if peer_id_bytes(n.peer_id) in chosen}


async def until(nodes: Sequence[Node], condition: Callable[[], bool]) -> None:
    """Until ``condition()`` holds, checked each time any node ends a repair round
    (a pull pins its CID inside the round, so this is when things change)."""
    while not condition():
        async with trio.open_nursery() as nursery:

            async def first(done: trio.Event) -> None:
                await done.wait()
                nursery.cancel_scope.cancel()

            for node in nodes:
                nursery.start_soon(first, node.replicator.round_done)


async def repair_throughput(base: Path, sizes: Sizes) -> Repair:
    # to reach the owners, and again to repair: generous (1 MiB/s), but a hang fails
    settle = 60.0 + sizes.files * sizes.file_mib
    chain = await open_chain()
    async with trio.open_nursery() as nursery:
        started = [await nursery.start(_killable, base, chain, f"n{i}") for i in range(sizes.nodes)]
        nodes = [node for node, _ in started]
        scopes = dict(started)
        for i, node in enumerate(nodes):
            for other in nodes[:i]:
                await node.connect(other.host.addrs()[0])
        with trio.fail_after(60):
            await wait_for_mesh(nodes, announce.TOPIC)
            for node in nodes:  # everyone ranks over the same members
                while len(await node.oracle.content_nodes(fresh=True)) < len(nodes):
                    await node.replicator.round_done.wait()

        cids: list[CID] = []
        with err.status(
            f"(d) adding {sizes.files} files of {sizes.file_mib} MiB to {len(nodes)} nodes,"
            f" until each is held by exactly its {REPLICAS} owners…"
        ):
            for i in range(sizes.files):
                at = nodes[i % len(nodes)]
                cids.append(await at.add(bench_file(sizes.file_mib, seed=100 + i), name=f"f{i}"))
            with trio.fail_after(settle):
                # exactly: a non-owner's copy would let it stand in for the dead owner
                # with no transfer at all
                await until(
                    nodes, lambda: all(set(holders(c, nodes)) == owners(c, nodes) for c in cids)
                )

        victim = max(nodes, key=lambda n: sum(n in owners(c, nodes) for c in cids))
        owned = [c for c in cids if victim in owners(c, nodes)]
        survivors = [n for n in nodes if n is not victim]
        before = {n: (n.replicator.status.pulled, n.replicator.status.bytes_pulled) for n in nodes}
        with err.status(f"(d) killed a node owning {len(owned)} files; repairing…"):
            scopes[victim].cancel()
            start = time.perf_counter()
            # (its host closes its sockets as it stops, as a dead process's kernel would)
            with trio.fail_after(settle):
                await until(
                    survivors,
                    lambda: all(len(holders(c, survivors)) >= REPLICAS for c in owned),
                )
            seconds = time.perf_counter() - start
        pulled = sum(n.replicator.status.pulled - before[n][0] for n in survivors)
        bytes_pulled = sum(n.replicator.status.bytes_pulled - before[n][1] for n in survivors)
        config = survivors[0].replicator.config
        nursery.cancel_scope.cancel()
    return Repair(len(owned), pulled, bytes_pulled, seconds, config)


# -- the run -----------------------------------------------------------------------


async def run(sizes: Sizes, echo: Callable[[str], None]) -> None:
    load_before = load_average()
    echo(f"availability benchmark; MB = 10^6 bytes; load average at start {load_before}")
    size = sizes.swarm_mib * MIB
    with tempfile.TemporaryDirectory(prefix="coliving-bench-avail-") as tmp:
        base = Path(tmp)
        async with raw_and_providers(base, sizes.swarm_mib) as (raw, providers):
            a = await raw_throughput(raw, size)
            echo(f"(a) raw single stream (TCP+Noise+Yamux, 2 processes): {a:.1f} MB/s")
            for k in range(1, len(providers) + 1):
                some = providers[:k]
                label = f"(b) get from {k} holder{'s' if k > 1 else ''}"
                b, shares = await get_throughput(some, size, base / f"fetch{k}", label)
                split = "/".join(str(shares.get(p.peer, 0)) for p in some)
                echo(
                    f"(b) swarmed get of {sizes.swarm_mib} MiB from {k} holder process"
                    f"{'es' if k > 1 else ''}: {b:.1f} MB/s  ratio to (a) {b / a:.2f}"
                    f"  (blocks per holder {split})"
                )

        with err.status("(c) gateway time to first byte…"):
            rows = await gateway.measure(sizes.gateway_mib * MIB, sizes.trials)
        ms = {label: statistics.median(samples) * 1000 for label, samples in rows.items()}
        echo(
            f"(c) gateway time to first byte, median of {sizes.trials}, {sizes.gateway_mib} MiB"
            f" files: {ms['(a) GET']:.1f} ms held by the gateway node"
            f" (direct Node.fetch {ms['(a) direct']:.1f} ms),"
            f" {ms['(b) GET']:.1f} ms held only by another node"
            f" (direct Node.fetch {ms['(b) direct']:.1f} ms)"
        )

        repair = await repair_throughput(base / "repair", sizes)
        c = repair.config
        echo(
            f"(d) repair after a node loss: {repair.bytes_pulled / repair.seconds / 1e6:.1f} MB/s"
            f" restored  ({repair.bytes_pulled / 1e6:.1f} MB, {repair.pulled} CIDs pulled"
            f" in {repair.seconds:.2f} s; the lost node owned {repair.owned} of {sizes.files}"
            f" files of {sizes.file_mib} MiB; {sizes.nodes} nodes, R = {c.replicas})"
        )
        echo(
            "    repair is rate-limited by design (ReplicationConfig): a round every"
            f" {c.interval:g} s, at most max_per_round = {c.max_per_round} CIDs a round,"
            f" max_concurrent = {c.max_concurrent} fetches at once; the time includes"
            " noticing the loss"
        )
    echo(machine(load_before))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.availability", description=__doc__)
    parser.add_argument(
        "--size", type=int, default=64, help="swarmed-fetch file in MiB (default 64)"
    )
    parser.add_argument("--trials", type=int, default=20, help="first-byte trials (default 20)")
    parser.add_argument("--nodes", type=int, default=5, help="repair: nodes (default 5)")
    parser.add_argument("--files", type=int, default=8, help="repair: files (default 8)")
    parser.add_argument(
        "--file-size", type=int, default=4, help="repair: file size in MiB (default 4)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK.swarm_mib} MiB, {QUICK.trials} trials,"
        f" {QUICK.files} repair files of {QUICK.file_mib} MiB",
    )
    args = parser.parse_args(argv)
    sizes = (
        QUICK
        if args.quick
        else Sizes(args.size, args.trials, GATEWAY_MIB, args.nodes, args.files, args.file_size)
    )
    if min(sizes.swarm_mib, sizes.trials, sizes.files, sizes.file_mib) < 1:
        parser.error("--size, --trials, --files and --file-size must be at least 1")
    if sizes.nodes <= REPLICAS:
        parser.error(f"--nodes must be more than R = {REPLICAS}: a loss needs a node to repair to")

    import logging

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)

    def echo(line: str) -> None:
        print(line, flush=True)

    trio.run(run, sizes, echo)


if __name__ == "__main__":
    main()
