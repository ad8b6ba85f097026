"""A worker process of the simnet: hosts a slice of the nodes for the runner.

Protocol: JSON lines. The runner writes ``{"id": n, "op": NAME, "args": {...}}``
on the worker's stdin; the worker answers ``{"id": n, "ok": RESULT}`` or
``{"id": n, "error": "..."}`` on its stdout, in any order (each request runs in
its own task). The first request is ``setup`` (base dir, chain RPC URL and
deployment file, links, seed, node config); the rest are the operations of
:class:`simnet.hosting.NodeHost`. Logs go to stderr; stdout carries only the
protocol.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import trio

from node import freeze_startup_heap
from simnet.hosting import NodeHost


async def _serve(reader: trio.abc.ReceiveStream, writer: trio.abc.SendStream) -> None:
    lock = trio.Lock()

    async def reply(message: dict[str, Any]) -> None:
        async with lock:
            await writer.send_all((json.dumps(message) + "\n").encode())

    host: NodeHost | None = None
    buffer = b""
    async with trio.open_nursery() as nursery:

        async def handle(request: dict[str, Any]) -> None:
            nonlocal host
            rid, op, args = request["id"], request["op"], request.get("args", {})
            try:
                if op == "setup":
                    host = await _setup(nursery, **args)
                    result: Any = None
                elif host is None:
                    raise RuntimeError("setup first")
                elif op == "exit":
                    await reply({"id": rid, "ok": None})
                    nursery.cancel_scope.cancel()
                    return
                else:
                    result = await host.call(op, args)
            except Exception as exc:
                await reply({"id": rid, "error": f"{type(exc).__name__}: {exc}"})
                return
            await reply({"id": rid, "ok": result})

        while True:
            data = await reader.receive_some(1 << 16)
            if not data:
                nursery.cancel_scope.cancel()
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    nursery.start_soon(handle, json.loads(line))


async def _setup(
    nursery: trio.Nursery,
    *,
    base_dir: str,
    rpc: str | None,
    deployment: str | None,
    links: dict[str, Any],
    seed: int,
    config: dict[str, Any],
) -> NodeHost:
    chain = None
    if rpc is not None:
        from chain.local import open_chain

        chain = await open_chain(rpc, deployment_file=Path(deployment) if deployment else None)
    host = NodeHost(Path(base_dir), chain=chain, links=links, seed=seed, config=config)
    await nursery.start(host.run)
    return host


def main() -> None:
    # Quiet unless COLIVING_SIMNET_LOG names a level (e.g. WARNING): then this
    # worker's and libp2p's records go to stderr (the coordinator's), tagged.
    level = os.environ.get("COLIVING_SIMNET_LOG", "").upper() or None
    logging.basicConfig(
        level=level or logging.ERROR,
        stream=sys.stderr,
        format="%(asctime)s worker %(process)d %(name)s %(levelname)s: %(message)s",
    )
    logging.getLogger().setLevel(level or logging.CRITICAL)
    libp2p_log = logging.getLogger("libp2p")  # it does not propagate
    libp2p_log.setLevel(level or logging.CRITICAL)
    if level:
        libp2p_log.handlers = logging.getLogger().handlers
    protocol_out = os.dup(1)
    os.dup2(2, 1)  # anything printed by a library goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    freeze_startup_heap()

    async def run() -> None:
        reader = trio.lowlevel.FdStream(os.dup(0))
        writer = trio.lowlevel.FdStream(protocol_out)
        await _serve(reader, writer)

    trio.run(run)


if __name__ == "__main__":
    main()
