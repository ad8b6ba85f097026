"""What an announcement costs the swarm: ``python -m bench.gossip [--nodes N] [--announcements K]``.

N real nodes in one process (TCP + Noise + Yamux on 127.0.0.1, gossipsub
with our parameters, each node bootstrapping from up to 3 earlier ones),
then, in one run:

- baseline: the process's CPU per node-second while the swarm is idle
  (heartbeats, keep-alives);
- announcements: K nodes in turn pin a small file and announce it; each is
  waited for until every other node's provider index lists it. Reported as
  CPU per announcement per node (the process's CPU time, minus the idle
  baseline for the same wall time, over K x N), and copies validated per
  node (gossipsub delivers each message once per mesh peer that forwards it;
  py-libp2p 0.8.1 marks a message seen only after validating it).

The figure bounds what a simnet on one machine can drive: with C cores and N
nodes, about C / (N x cost) announcements per second before every latency
becomes queueing (docs/simnet.md). The ratio printed is cost / idle
node-second.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from node import Node
from protocols import announce
from protocols.cid import CID
from simnet.local import start_nodes, wait_for_mesh


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _until_known(nodes: list[Node], origin: Node, root: CID) -> None:
    for node in nodes:
        if node is origin:
            continue
        while not node.store.providers(root):
            await node.announced.wait()


async def run(count: int, announcements: int, idle: float) -> None:
    rng = random.Random(1)
    topology = [rng.sample(range(i), min(3, i)) for i in range(count)]
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            nodes = await start_nodes(
                nursery, Path(tmp), count, topology=topology, repair_interval=3600.0
            )
            with trio.fail_after(120):
                await wait_for_mesh(nodes, announce.TOPIC)
                for node in nodes:
                    await node.announcer.first_full.wait()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await trio.sleep(idle)
            idle_cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0) / count
            received0 = sum(n.announcements_received for n in nodes)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for k in range(announcements):
                origin = nodes[k % count]
                root = await origin.add(_chunks(b"bench %d " % k * 512))
                with trio.fail_after(120):
                    await _until_known(nodes, origin, root)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            copies = (sum(n.announcements_received for n in nodes) - received0) / (
                announcements * (count - 1)
            )
            cost = (cpu - idle_cpu * count * wall) / (announcements * count)
            nursery.cancel_scope.cancel()
    print(f"{count} nodes in one process, {announcements} announcements")
    print(f"baseline: idle CPU {idle_cpu * 1000:.2f} ms per node-second")
    print(
        f"announcement: {cost * 1000:.1f} ms CPU per node  (ratio to an idle node-second: "
        f"{cost / idle_cpu:.1f}); {copies:.2f} copies validated per node; "
        f"{wall / announcements * 1000:.0f} ms to reach all"
    )
    print(
        f"so 2 cores carry about {2 / (cost * count):.2f} announcements/s at {count} nodes, "
        f"{2 / (cost * 200):.2f}/s at 200"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=40)
    parser.add_argument("--announcements", type=int, default=20)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle baseline")
    parser.add_argument("--quick", action="store_true", help="8 nodes, 3 announcements")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.announcements, args.idle = 8, 3, 1.0
    trio.run(run, args.nodes, args.announcements, args.idle)


if __name__ == "__main__":
    main()
