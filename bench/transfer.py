"""Transfer benchmark: raw stream vs Bitswap ``get``, across processes.

``python -m bench.transfer [--size MIB] [--rounds N] [--trials N] [--quick]``
(``make bench``) prints, in one run:

(a) one py-libp2p stream (TCP + Noise + Yamux, our p2p.host.Host) from a
    server process to this one: the ceiling Bitswap runs on;
(b) a ``get`` of a SIZE MiB file from one provider process: a Node here
    fetches it over Bitswap, verifies every block and stores it in its LMDB,
    then pins it;
(c) the same from three provider processes at once;
(d) time to the first file byte of that file (root, inner node, first leaf:
    three round trips by the DAG's shape), on an open connection (warm) and
    on a new one (cold: dial, Noise, Yamux, then the blocks); median of trials.

(a), (b) and (c) are measured in ROUNDS interleaved rounds (a, b, c, a, b, c,
...): on a shared machine the speed of the same work drifts by a third within
minutes, and interleaving puts each ratio's two sides under the same drift.
Each figure is the median over the rounds, each ratio the median of the
rounds' own ratios. Beside each, the CPU time per MiB of this process (all
its threads) and of the server processes: a transfer that is CPU-bound on
one side shows it there, whatever the machine's speed that minute.

MB is 10^6 bytes. Progress goes to stderr, figures to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import trio
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TransferSpeedColumn,
)

from bench.server import RAW_PROTOCOL
from node import Client, Node, NodeConfig, freeze_startup_heap
from p2p.host import peer_id_bytes, peer_of_addr
from p2p.keys import PeerId
from protocols.cid import CID

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
READ = 1 << 20
QUICK_SIZE = 8
GOAL_RATIO = 0.9
GOAL_WARM_MS = 10.0
GOAL_COLD_MS = 30.0

err = Console(stderr=True)


@dataclass(frozen=True)
class Server:
    """A benchmark server process and what it printed when ready."""

    process: trio.Process
    info: dict[str, Any]

    @property
    def addr(self) -> str:
        return str(self.info["addr"])

    @property
    def peer(self) -> PeerId:
        return peer_of_addr(self.addr)


async def _read_line(process: trio.Process) -> bytes:
    assert process.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        chunk = await process.stdout.receive_some(4096)
        if not chunk:
            raise RuntimeError(f"bench server exited early (code {process.poll()})")
        line += chunk
    return line


@contextlib.asynccontextmanager
async def server(*args: str, ready_timeout: float = 300) -> AsyncIterator[Server]:
    """Run ``python -m bench.server ARGS``; stop it (stdin EOF, then kill) on exit."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bench.server", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        with trio.fail_after(ready_timeout):
            info = json.loads(await _read_line(process))
        yield Server(process, info)
    finally:
        with trio.CancelScope(shield=True):
            if process.stdin is not None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await process.stdin.aclose()
            with trio.move_on_after(5):
                await process.wait()
            if process.poll() is None:
                process.kill()
                await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()


@contextlib.asynccontextmanager
async def servers(args: Sequence[Sequence[str]]) -> AsyncIterator[list[Server]]:
    """Several servers, started in parallel (adding a big file takes a while)."""
    async with contextlib.AsyncExitStack() as stack:
        started: list[Server | None] = [None] * len(args)

        async def one(i: int) -> None:
            started[i] = await stack.enter_async_context(server(*args[i]))

        # enter_async_context from several tasks is safe: the stack only appends
        async with trio.open_nursery() as nursery:
            for i in range(len(args)):
                nursery.start_soon(one, i)
        yield [s for s in started if s is not None]


@contextlib.asynccontextmanager
async def raw_and_providers(
    base: Path, size_mib: int, count: int = 3
) -> AsyncIterator[tuple[Server, list[Server]]]:
    """The raw server and ``count`` providers of one SIZE MiB file (data under ``base``)."""
    provide = [
        ["provide", "--data-dir", str(base / f"provider{i}"), "--size", str(size_mib)]
        for i in range(count)
    ]
    status = err.status(f"starting 1 raw server and {count} providers adding {size_mib} MiB each…")
    status.start()
    try:
        async with servers([["raw"], *provide]) as (raw, *providers):
            status.stop()
            cids = {p.info["cid"] for p in providers}
            assert len(cids) == 1, cids
            yield raw, providers
    finally:
        status.stop()


def progress() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


@contextlib.asynccontextmanager
async def running(peer: Node | Client) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.run)
        yield
        nursery.cancel_scope.cancel()


# -- CPU time ----------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: int) -> float | None:
    """Seconds of CPU (user + system, all threads) ``pid`` has used; None off Linux."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class Measured:
    """One measurement: MB/s, and ms of CPU per MiB for this process and each server."""

    mbps: float
    client_ms: float
    server_ms: list[float | None]


async def measured(
    work: Callable[[], Awaitable[float]], servers_: Sequence[Server], size: int
) -> Measured:
    """Run ``work`` (it returns MB/s); what it cost this process and ``servers_``."""
    mib = size / MIB
    before = [process_cpu(s.process.pid) for s in servers_]
    cpu = time.process_time()
    mbps = await work()
    client_ms = (time.process_time() - cpu) / mib * 1000
    after = [process_cpu(s.process.pid) for s in servers_]
    server_ms = [
        None if b is None or a is None else (a - b) / mib * 1000
        for b, a in zip(before, after, strict=True)
    ]
    return Measured(mbps, client_ms, server_ms)


def cpu_note(runs: Sequence[Measured]) -> str:
    """Median CPU per MiB of the client and the servers over ``runs``."""
    client = statistics.median(r.client_ms for r in runs)
    parts = [f"this process {client:.1f}"]
    for i in range(len(runs[0].server_ms)):
        values = [v for r in runs if (v := r.server_ms[i]) is not None]
        if values:
            parts.append(f"server {i + 1} {statistics.median(values):.1f}")
    return "CPU ms per MiB: " + ", ".join(parts)


# -- (a) raw stream --------------------------------------------------------------


async def raw_throughput(raw: Server, size: int) -> float:
    client = Client()
    async with running(client):
        peer = await client.connect(raw.addr)
        stream = await client.host.open_stream(peer, [RAW_PROTOCOL])
        with progress() as bar:
            task = bar.add_task("(a) raw stream", total=size)
            start = time.perf_counter()
            await stream.write(size.to_bytes(8, "big"))
            got = 0
            while chunk := await stream.read(READ):
                got += len(chunk)
                bar.advance(task, len(chunk))
            seconds = time.perf_counter() - start
        await stream.close()
    if got != size:
        raise RuntimeError(f"raw stream delivered {got} of {size} bytes")
    return size / seconds / 1e6


# -- (b), (c) get ----------------------------------------------------------------


async def get_throughput(
    providers: Sequence[Server], size: int, data_dir: Path, label: str
) -> tuple[float, dict[PeerId, int]]:
    """A Node fetches the file from ``providers`` (all connected first) and pins it."""
    root = CID.parse(str(providers[0].info["cid"]))
    node = Node(NodeConfig(data_dir=data_dir, allow_all=True))
    async with running(node):
        for provider in providers:
            await node.connect(provider.addr)
            # as if their announcements had arrived: the provider index names them all
            node.store.add_providers(peer_id_bytes(provider.peer), [root], ttl=600)
        with progress() as bar:
            task = bar.add_task(label, total=size)
            start = time.perf_counter()
            fetch = await node.fetch(root, name="bench")
            async for leaf in fetch.leaves():
                bar.advance(task, len(leaf))
            seconds = time.perf_counter() - start
        if fetch.bytes != size or not node.store.is_pinned(root):
            raise RuntimeError(f"{label}: fetched {fetch.bytes} of {size} bytes")
        shares = dict(fetch.blocks_from)
    return size / seconds / 1e6, shares


async def get_mbps(
    providers: Sequence[Server], size: int, data_dir: Path, label: str, shares: dict[PeerId, int]
) -> float:
    """get_throughput's MB/s; the blocks each provider sent go into ``shares``."""
    mbps, got = await get_throughput(providers, size, data_dir, label)
    shares.update(got)
    return mbps


def median_ratio(xs: Sequence[Measured], ys: Sequence[Measured]) -> float:
    """The median of the rounds' own ratios x / y."""
    return statistics.median(x.mbps / y.mbps for x, y in zip(xs, ys, strict=True))


# -- (d) time to first byte --------------------------------------------------------


async def first_byte(client: Client, root: CID, peer: PeerId, start: float) -> float:
    """Start a fetch, stop at the first leaf; ms from ``start`` to its first byte."""
    fetch = client.bitswap.fetch(root, [peer])
    leaves = cast(AsyncGenerator[bytes, None], fetch.leaves())
    try:
        async for _ in leaves:
            break
    finally:
        await leaves.aclose()  # cancels the wants still in flight
    assert fetch.first_byte_at is not None
    return (fetch.first_byte_at - start) * 1000


async def drain_and_forget(client: Client) -> None:
    # The wants after the first leaf are cancelled, but blocks already on the
    # wire still arrive: wait until none has landed for a while, so the next
    # trial starts on a quiet connection; then empty the store.
    stats = client.bitswap.stats
    with trio.move_on_after(5):
        while True:
            seen = (stats.late_blocks, stats.blocks_fetched)
            await trio.sleep(0.25)
            if (stats.late_blocks, stats.blocks_fetched) == seen:
                break
    client.store.gc()


async def time_to_first_byte(provider: Server, trials: int) -> tuple[list[float], list[float]]:
    root = CID.parse(str(provider.info["cid"]))
    warm: list[float] = []
    cold: list[float] = []
    client = Client()
    async with running(client):
        peer = await client.connect(provider.addr)
        await first_byte(client, root, peer, time.perf_counter())  # open the bitswap streams
        await drain_and_forget(client)
        for _ in range(trials):
            warm.append(await first_byte(client, root, peer, time.perf_counter()))
            await drain_and_forget(client)
    for _ in range(trials):
        fresh = Client()  # a new host: nothing cached, a real dial
        async with running(fresh):
            start = time.perf_counter()
            peer = await fresh.connect(provider.addr)
            cold.append(await first_byte(fresh, root, peer, start))
            await drain_and_forget(fresh)
    return warm, cold


# -- report ----------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "goal met" if ok else "goal NOT met"


def load_average() -> str:
    # other work on the machine skews every figure: say how busy it was
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def machine(load_before: str) -> str:
    """The closing line of a benchmark: the machine, and how busy it was."""
    return (
        f"machine: {os.cpu_count()} CPUs, load average {load_before} before,"
        f" {load_average()} after; Python {sys.version.split()[0]}"
    )


def pin_process(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` (0: this process) on ``cpus`` (Linux)."""
    for task in Path(f"/proc/{pid or os.getpid()}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(task.name), cpus)


def pin(servers: Sequence[Server]) -> str:
    """This process on the first CPU, the servers round robin on the others: as
    if each side had its own host. Unpinned, a loopback send() often wakes the
    peer on the sender's own CPU (the scheduler's wake-affine placement), and
    the two processes take turns on one core."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "not pinned (one CPU)"
    pin_process(0, {cpus[0]})
    for i, s in enumerate(servers):
        pin_process(s.process.pid, {cpus[1 + i % (len(cpus) - 1)]})
    return f"pinned: this process on CPU {cpus[0]}, the servers on CPU {cpus[1:]}"


async def run(
    size_mib: int, rounds: int, trials: int, echo: Callable[[str], None], pinned: bool = False
) -> None:
    size = size_mib * MIB
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="coliving-bench-") as tmp:
        base = Path(tmp)
        async with raw_and_providers(base, size_mib) as (raw, providers):
            echo(
                f"file: {size_mib} MiB, root {providers[0].info['cid']}; MB = 10^6 bytes;"
                f" (a), (b), (c) interleaved over {rounds} rounds, medians"
            )
            if pinned:
                echo(pin([raw, *providers]))
            a_runs: list[Measured] = []
            b_runs: list[Measured] = []
            c_runs: list[Measured] = []
            shares: dict[PeerId, int] = {}
            for r in range(rounds):
                tag = f" (round {r + 1}/{rounds})"
                raw_run = functools.partial(raw_throughput, raw, size)
                one = functools.partial(  # (its split is all one provider's: not kept)
                    get_mbps, providers[:1], size, base / "fetch1", "(b) 1 provider" + tag, {}
                )
                three = functools.partial(
                    get_mbps, providers, size, base / "fetch3", "(c) 3 providers" + tag, shares
                )
                a_runs.append(await measured(raw_run, [raw], size))
                b_runs.append(await measured(one, providers[:1], size))
                c_runs.append(await measured(three, providers, size))
                for name in ("fetch1", "fetch3"):  # a fresh store each round
                    shutil.rmtree(base / name, ignore_errors=True)
            a_mbps = statistics.median(m.mbps for m in a_runs)
            b_mbps = statistics.median(m.mbps for m in b_runs)
            c_mbps = statistics.median(m.mbps for m in c_runs)
            b_ratio, c_ratio = median_ratio(b_runs, a_runs), median_ratio(c_runs, a_runs)
            echo(f"(a) raw stream (TCP+Noise+Yamux, 2 processes): {a_mbps:.1f} MB/s")
            echo(f"    {cpu_note(a_runs)}")
            echo(f"(b) get from 1 provider: {b_mbps:.1f} MB/s  (b)/(a) = {b_ratio:.2f}")
            echo(f"    {cpu_note(b_runs)}")
            split = "/".join(str(shares.get(p.peer, 0)) for p in providers)
            echo(
                f"(c) get from 3 providers: {c_mbps:.1f} MB/s  (c)/(a) = {c_ratio:.2f}"
                f"  (blocks per provider {split})"
            )
            echo(f"    {cpu_note(c_runs)}")
            each = "; ".join(
                f"{x.mbps:.0f}/{y.mbps:.0f}/{z.mbps:.0f}"
                for x, y, z in zip(a_runs, b_runs, c_runs, strict=True)
            )
            echo(f"    rounds, (a)/(b)/(c) MB/s: {each}")
            with err.status("(d) time to first byte…"):
                warm, cold = await time_to_first_byte(providers[0], trials)
            w, k = statistics.median(warm), statistics.median(cold)
            echo(
                f"(d) first byte: warm {w:.1f} ms, cold {k:.1f} ms"
                f"  (median of {trials}; warm min {min(warm):.1f} max {max(warm):.1f},"
                f" cold min {min(cold):.1f} max {max(cold):.1f})"
            )
        echo(
            f"goals: (b) >= {GOAL_RATIO} x (a): {verdict(b_ratio >= GOAL_RATIO)};"
            f" (c) >= {GOAL_RATIO} x (a): {verdict(c_ratio >= GOAL_RATIO)};"
            f" warm <= {GOAL_WARM_MS:.0f} ms: {verdict(w <= GOAL_WARM_MS)};"
            f" cold <= {GOAL_COLD_MS:.0f} ms: {verdict(k <= GOAL_COLD_MS)}"
        )
        echo(machine(load_before))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__)
    parser.add_argument("--size", type=int, default=256, help="file size in MiB (default 256)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of (a), (b), (c) (default 3)"
    )
    parser.add_argument("--trials", type=int, default=15, help="first-byte trials (default 15)")
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK_SIZE} MiB, 1 round, 3 trials"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="this process on one CPU, the servers on the others, as if on separate hosts"
        " (Linux; unpinned, the two sides of a loopback exchange often share one core)",
    )
    args = parser.parse_args(argv)
    size, rounds, trials = (
        (QUICK_SIZE, 1, 3) if args.quick else (args.size, args.rounds, args.trials)
    )
    if size < 1 or rounds < 1 or trials < 1:
        parser.error("--size, --rounds and --trials must be at least 1")

    import logging

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    freeze_startup_heap()

    def echo(line: str) -> None:
        print(line, flush=True)

    trio.run(run, size, rounds, trials, echo, args.pin)


if __name__ == "__main__":
    main()
