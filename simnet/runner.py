"""Run a scenario's plan against real nodes and gather what happened.

One coordinator (this module, in the ``coliving simnet run`` process) holds
the chain's governance account and the schedule; the nodes live in
:class:`simnet.hosting.NodeHost` objects: in this process when
``workers = 1`` (any chain, the embedded one included), else in
``workers`` child processes (:mod:`simnet.worker`, JSON lines over pipes),
each with a slice of the nodes and its own connection to the chain, which
must then be reachable over JSON-RPC: ``kind = "anvil"`` starts the npm
anvil binary on 127.0.0.1 for the run (we chose anvil over an RPC proxy in
front of the embedded chain: it is a real chain, needs no code of ours, and
serves several processes at once).

Start-up: every node is started first (each dials its planned bootstrap
peers), then the staked ones are registered with the addresses they listen
on, so that no node ever sees a registered peer it cannot dial (a failed dial
is not retried for 30 s). Then the actions run at their times; uploads and
fetches run concurrently with the schedule. After ``duration`` the network
gets ``settle`` seconds, then every successful upload is fetched once more
from a live honest node (the "retrievable" check) and each host hands over
its records. :mod:`simnet.report` turns the result into metrics.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import trio

from chain.deploy import bind, send
from chain.local import LocalChain, open_chain
from p2p.host import peer_id_of_key
from p2p.keys import NodeKey
from simnet.hosting import NodeFactory, NodeHost
from simnet.scenario import Plan, PlannedNode, Scenario, make_plan

log = logging.getLogger("coliving.simnet")
REPO = Path(__file__).resolve().parent.parent
ANVIL = REPO / "node_modules" / ".bin" / "anvil"
PIDS: list[int] = []  # child processes of this run (anvil, workers), for memory figures

Progress = Callable[[dict[str, Any]], None]


class SimnetError(RuntimeError):
    """The run could not be set up (chain, workers) or a worker failed."""


class Handle(Protocol):
    async def call(self, op: str, **args: Any) -> Any: ...


class LocalHandle:
    """A NodeHost in this process."""

    def __init__(self, host: NodeHost) -> None:
        self.host = host

    async def call(self, op: str, **args: Any) -> Any:
        # a JSON round trip, as a worker would do: the same values either way
        result = await self.host.call(op, json.loads(json.dumps(args)))
        return json.loads(json.dumps(result))


class RemoteHandle:
    """A NodeHost in a worker process (simnet.worker), over JSON lines."""

    def __init__(self, process: trio.Process, index: int) -> None:
        self.process = process
        self.index = index
        self._next = 0
        self._pending: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._lock = trio.Lock()
        self.dead: str | None = None

    async def read_replies(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        while True:
            data = await self.process.stdout.receive_some(1 << 20)
            if not data:
                self.dead = f"worker {self.index} exited (code {self.process.poll()})"
                for event, slot in self._pending.values():
                    slot.append({"error": self.dead})
                    event.set()
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                reply = json.loads(line)
                event, slot = self._pending.pop(reply["id"])
                slot.append(reply)
                event.set()

    async def call(self, op: str, **args: Any) -> Any:
        if self.dead:
            raise SimnetError(self.dead)
        self._next += 1
        rid = self._next
        event, slot = trio.Event(), list[Any]()
        self._pending[rid] = (event, slot)
        assert self.process.stdin is not None
        async with self._lock:
            line = json.dumps({"id": rid, "op": op, "args": args}) + "\n"
            await self.process.stdin.send_all(line.encode())
        await event.wait()
        reply = slot[0]
        if "error" in reply:
            raise SimnetError(f"worker {self.index}, {op}: {reply['error']}")
        return reply["ok"]


async def start_anvil(nursery: trio.Nursery) -> str:
    """The npm anvil binary on 127.0.0.1 (a free port) for the run; its URL."""
    if not ANVIL.exists():
        raise SimnetError(
            f"anvil is not installed ({ANVIL}): run `npm ci`, or use the embedded chain"
        )
    process = await trio.lowlevel.open_process(
        [str(ANVIL), "--host", "127.0.0.1", "--port", "0", "--accounts", "2"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    PIDS.append(process.pid)
    found = trio.Event()
    url: list[str] = []

    async def drain() -> None:
        # anvil logs every RPC call: keep reading, a full pipe would stall the chain
        assert process.stdout is not None
        buffer = b""
        try:
            while data := await process.stdout.receive_some(1 << 16):
                if not found.is_set():
                    buffer += data
                    text = buffer.decode(errors="replace")
                    if "Listening on " in text:
                        addr = text.split("Listening on ", 1)[1].split()[0]
                        url.append(f"http://{addr}")
                        found.set()
        finally:
            found.set()

    async def keep() -> None:
        try:
            await trio.sleep_forever()
        finally:
            process.terminate()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await process.wait()

    nursery.start_soon(drain)
    nursery.start_soon(keep)
    with trio.fail_after(20):
        await found.wait()
    if not url:
        raise SimnetError("anvil exited before it listened")
    return url[0]


async def _spawn_worker(nursery: trio.Nursery, index: int) -> RemoteHandle:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "simnet.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    PIDS.append(process.pid)
    handle = RemoteHandle(process, index)

    async def supervise() -> None:
        try:
            await handle.read_replies()
        finally:
            # EOF on its stdin makes a worker stop its nodes and exit
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                if process.stdin is not None:
                    await process.stdin.aclose()
                with trio.move_on_after(8):
                    await process.wait()
                if process.poll() is None:
                    process.kill()

    nursery.start_soon(supervise)
    return handle


class Run:
    """One run in progress: the plan, the handles, and everything observed."""

    def __init__(
        self, scenario: Scenario, plan: Plan, out_dir: Path, progress: Progress | None
    ) -> None:
        self.scenario = scenario
        self.plan = plan
        self.out_dir = out_dir
        self.progress = progress or (lambda _state: None)
        self.handles: list[Handle] = []
        self.chain: LocalChain | None = None
        self.keys = {n.name: NodeKey(bytes.fromhex(n.secret)) for n in plan.nodes}
        self.peers = {name: peer_id_of_key(key) for name, key in self.keys.items()}
        self.addrs: dict[str, str] = {}
        self.started: dict[str, trio.Event] = {n.name: trio.Event() for n in plan.nodes}
        self.alive: dict[str, list[float | None]] = {}  # name -> [since, until]
        self.unstaked_at: dict[str, float] = {}  # slashed below the minimum / deregistered
        self.uploads: dict[int, dict[str, Any]] = {}
        self.uploaded: dict[int, trio.Event] = {}
        self.fetches: list[dict[str, Any]] = []
        self.final: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.counters: dict[str, dict[str, int]] = {}
        self.t0 = time.time()
        self.phase = "starting"
        self.setup_seconds = 0.0

    def now(self) -> float:
        return time.time() - self.t0

    def handle_of(self, name: str) -> Handle:
        return self.handles[self.plan.node(name).worker]

    def state(self) -> dict[str, Any]:
        last = self.samples[-1] if self.samples else {}
        return {
            "phase": self.phase,
            "t": self.now(),
            "duration": self.scenario.duration,
            "settle": self.scenario.settle,
            "live": sum(1 for a in self.alive.values() if a[1] is None),
            "uploads_ok": sum(1 for u in self.uploads.values() if u.get("ok")),
            "uploads": len(self.uploads),
            "fetches_ok": sum(1 for f in self.fetches if f.get("ok")),
            "fetches": len(self.fetches),
            "below_r": last.get("below_r", 0),
            "events": len(self.events),
        }

    # -- nodes ---------------------------------------------------------------------

    async def start_node(self, node: PlannedNode) -> None:
        for name in node.bootstrap:
            await self.started[name].wait()
        boot = [self.addrs[n] for n in node.bootstrap if self.alive.get(n, [0, 0])[1] is None]
        result = await self.handle_of(node.name).call("start", spec=asdict(node), bootstrap=boot)
        self.addrs[node.name] = result["addrs"][0]
        self.alive[node.name] = [self.now(), None]
        self.started[node.name].set()

    async def register(self, node: PlannedNode) -> None:
        assert self.chain is not None
        key = self.keys[node.name]
        minimum = self.chain.minimum_stake
        await self.chain.register(
            key, stake=tokens(node.stake, minimum), multiaddrs=[self.addrs[node.name]]
        )
        for amount in node.delegations:
            await delegate(self.chain, key, tokens(amount, minimum))

    async def start_all(self, nodes: Sequence[PlannedNode]) -> None:
        by_worker: dict[int, list[PlannedNode]] = {}
        for node in nodes:
            by_worker.setdefault(node.worker, []).append(node)

        async def one_worker(batch: list[PlannedNode]) -> None:
            for node in batch:
                await self.start_node(node)
                self.phase = f"starting nodes {len(self.alive)}/{len(nodes)}"
                self.progress(self.state())

        async with trio.open_nursery() as nursery:
            for batch in by_worker.values():
                nursery.start_soon(one_worker, batch)
        staked = [n for n in nodes if n.staked]
        for k, node in enumerate(staked):
            await self.register(node)
            self.phase = f"registering {k + 1}/{len(staked)}"
            self.progress(self.state())

    async def wait_members(self, expected: int, within: float) -> None:
        """Until every live staked node's oracle sees ``expected`` content nodes."""
        with trio.move_on_after(within) as scope:
            while True:
                counts: dict[str, int] = {}
                for handle in self.handles:
                    counts.update(await handle.call("members"))
                if all(c >= expected for c in counts.values()):
                    return
                seen = min(counts.values(), default=0)
                self.phase = f"waiting for oracles: {seen}/{expected} members seen"
                self.progress(self.state())
                await trio.sleep(0.2)  # polling the oracles' view: the runner's own loop
        if scope.cancelled_caught:
            raise SimnetError(
                f"after {within:.0f} s the nodes' stake oracles still did not all see the "
                f"{expected} registered content nodes (machine overloaded, or chain unreachable)"
            )

    # -- actions -------------------------------------------------------------------

    async def act(self, action: dict[str, Any], nursery: trio.Nursery) -> None:
        op = action["op"]
        record = {**action, "t": self.now()}
        if op == "upload":
            nursery.start_soon(self.upload, action)
            return
        if op == "fetch":
            nursery.start_soon(self.fetch, action)
            return
        if op == "leave":
            await self.handle_of(action["node"]).call("stop", name=action["node"])
            self.alive[action["node"]][1] = self.now()
        elif op == "join":
            node = self.plan.node(action["node"])
            await self.start_node(node)
            if node.staked:
                await self.register(node)
        elif op == "partition":
            sides = {self.peers[n]: s for n, s in action["sides"].items()}
            for handle in self.handles:
                await handle.call("partition", sides=sides)
        elif op == "heal":
            for handle in self.handles:
                await handle.call("heal")
        elif op in ("slash", "deregister"):
            assert self.chain is not None
            node = self.plan.node(action["node"])
            key = self.keys[node.name]
            if op == "slash":
                await self.chain.slash(key, tokens(action["amount"], self.chain.minimum_stake))
                if node.stake + sum(node.delegations) - action["amount"] < 1:
                    self.unstaked_at[node.name] = self.now()
            else:
                await self.chain.deregister(key)
                self.unstaked_at[node.name] = self.now()
        self.events.append(record)

    def upload_done(self, index: int) -> trio.Event:
        return self.uploaded.setdefault(index, trio.Event())

    async def upload(self, action: dict[str, Any]) -> None:
        t = self.now()
        try:
            result = await self.handle_of(action["node"]).call(
                "upload",
                name=action["node"],
                index=action["index"],
                size=action["size"],
                within=self.scenario.workload.fetch_timeout * 2,
            )
            self.uploads[action["index"]] = {**action, **result, "t": t}
        finally:
            self.upload_done(action["index"]).set()
            if action["index"] not in self.uploads:  # cut off by the end of the run
                self.uploads[action["index"]] = {
                    **action,
                    "t": t,
                    "ok": False,
                    "error": "unfinished when the run ended",
                    "seconds": self.now() - t,
                }

    async def fetch(self, action: dict[str, Any]) -> None:
        t = self.now()
        # an upload still being acknowledged (replicas being made) is waited for
        with trio.move_on_after(self.scenario.workload.fetch_timeout):
            await self.upload_done(action["upload"]).wait()
        upload = self.uploads.get(action["upload"])
        record: dict[str, Any] = {**action, "t": t, "waited": self.now() - t}
        if upload is None or not upload.get("ok"):
            record.update(ok=False, skipped=True, error="the upload had not succeeded by then")
        else:
            record.update(
                await self.handle_of(action["node"]).call(
                    "fetch",
                    name=action["node"],
                    cid=upload["cid"],
                    sha256=upload["sha256"],
                    within=self.scenario.workload.fetch_timeout,
                )
            )
        self.fetches.append(record)

    # -- sampling ------------------------------------------------------------------

    def honest_live(self) -> list[str]:
        return [
            n.name
            for n in self.plan.nodes
            if n.role == "content"
            and self.alive.get(n.name, [0, 0])[1] is None
            and n.name in self.alive
            and n.name not in self.unstaked_at
        ]

    async def sample(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for handle in self.handles:
            merged.update(await handle.call("sample"))
        for name, s in merged.items():
            self.counters[name] = {k: s[k] for k in ("bytes_pulled", "pulled", "bytes_out")}
        honest = set(self.honest_live())
        r = min(self.scenario.replicas, len(honest))
        holders: dict[str, int] = {}
        for name, s in merged.items():
            if name in honest:
                for cid in s["pins"]:
                    holders[cid] = holders.get(cid, 0) + 1
        cids = [u["cid"] for u in self.uploads.values() if u.get("ok")]
        entry = {
            "t": self.now(),
            "live": len(honest),
            "cids": len(cids),
            "below_r": sum(1 for c in cids if holders.get(c, 0) < r),
            "lost": sum(1 for c in cids if holders.get(c, 0) == 0),
            # cumulative over every node that ever ran (a node that left keeps its share)
            "repair_bytes": sum(c["bytes_pulled"] for c in self.counters.values()),
            "repair_pulls": sum(c["pulled"] for c in self.counters.values()),
            "bytes_out": sum(c["bytes_out"] for c in self.counters.values()),
            "rss_mb": rss_mb(PIDS),
        }
        self.samples.append(entry)
        self.last_nodes = merged
        return entry

    async def sampler(self) -> None:
        while True:
            await self.sample()
            self.progress(self.state())
            await trio.sleep(self.scenario.sample_interval)

    # -- the end -------------------------------------------------------------------

    async def final_check(self) -> None:
        """Every successful upload fetched once more from a live honest node."""
        honest = self.honest_live()
        rng = random.Random(f"{self.plan.seed}/final")
        limiter = trio.CapacityLimiter(4)

        async def one(upload: dict[str, Any]) -> None:
            by = rng.choice(honest)
            async with limiter:
                result = await self.handle_of(by).call(
                    "fetch",
                    name=by,
                    cid=upload["cid"],
                    sha256=upload["sha256"],
                    within=self.scenario.workload.fetch_timeout,
                )
            self.final.append({"upload": upload["index"], "node": by, **result})

        async with trio.open_nursery() as nursery:
            for upload in sorted(self.uploads.values(), key=lambda u: u["index"]):
                if upload.get("ok"):
                    nursery.start_soon(one, upload)


def tokens(multiple: float, minimum: int) -> int:
    """``multiple`` minimum stakes in token units, exactly (floats would round)."""
    return round(multiple * 1_000_000) * minimum // 1_000_000


async def delegate(chain: LocalChain, key: NodeKey, amount: int) -> None:
    """The governance account delegates ``amount`` to ``key``'s node."""

    def run(w3: Any) -> None:
        c = bind(w3, chain.deployment)
        send(w3, chain.governance, c.token.functions.approve(chain.deployment.registry, amount))
        send(w3, chain.governance, c.registry.functions.delegateStake(key.eth_address, amount))

    await chain.access.run(run)


async def run_scenario(
    scenario: Scenario,
    out_dir: Path,
    *,
    seed: int | None = None,
    progress: Progress | None = None,
    factory: NodeFactory | None = None,
) -> dict[str, Any]:
    """Run ``scenario`` with real nodes; write plan.json and raw.json in ``out_dir``;
    return the raw results (simnet.report makes metrics of them).

    ``factory`` builds each Node (the default: real libp2p hosts on 127.0.0.1).
    """
    plan = make_plan(scenario, seed=seed)
    PIDS.clear()
    _write(out_dir / "plan.json", plan.to_json())
    run = Run(scenario, plan, out_dir, progress)
    wall0 = time.perf_counter()
    data_dir = out_dir / "data"
    config = {
        "announce_interval": scenario.announce_interval,
        "repair_interval": scenario.repair_interval,
        "replicas": scenario.replicas,
        "poll_interval": scenario.chain.poll_interval,
    }
    async with trio.open_nursery() as nursery:
        spec = scenario.chain
        rpc = None
        if spec.kind == "embedded":
            run.chain = await open_chain()
        else:
            rpc = await start_anvil(nursery) if spec.kind == "anvil" else spec.url
            assert rpc is not None
            run.chain = await open_chain(rpc)
        deployment_file = out_dir / "deployment.json"
        _write(deployment_file, run.chain.deployment.to_json())
        links = scenario.link_config()
        classes = {run.peers[n.name]: n.link_class for n in plan.nodes}
        if scenario.workers == 1:
            host = NodeHost(
                data_dir,
                chain=run.chain,
                links=links,
                seed=plan.seed,
                config=config,
                factory=factory,
            )
            await nursery.start(host.run)
            run.handles = [LocalHandle(host)]
        else:
            for i in range(scenario.workers):
                remote = await _spawn_worker(nursery, i)
                await remote.call(
                    "setup",
                    base_dir=str(data_dir / f"w{i}"),
                    rpc=rpc,
                    deployment=str(deployment_file),
                    links=links,
                    seed=plan.seed,
                    config=config,
                )
                run.handles.append(remote)
        handle: Handle
        for handle in run.handles:
            await handle.call("classes", classes=classes)
        progress_state = run.progress
        progress_state(run.state())
        await run.start_all([n for n in plan.nodes if n.initial])
        staked = sum(1 for n in plan.nodes if n.initial and n.role != "sybil")
        await run.wait_members(staked, within=60 + 2 * len(plan.nodes))
        run.setup_seconds = time.perf_counter() - wall0
        # the schedule's clock starts now: nodes started during set-up started
        # before it (a delivery counts as expected from a node alive then)
        shift = time.time() - run.t0
        run.t0 += shift
        for span in run.alive.values():
            span[0] = (span[0] or 0.0) - shift
        run.phase = "running"
        async with trio.open_nursery() as background:
            background.start_soon(run.sampler)
            async with trio.open_nursery() as work:
                for action in plan.actions:
                    await trio.sleep_until(_deadline(run, action["at"]))
                    await run.act(action, work)
                    run.progress(run.state())
                await trio.sleep_until(_deadline(run, scenario.duration))
                run.phase = "settling"
                run.progress(run.state())
                # the uploads and fetches still running get the settle time too
                work.cancel_scope.deadline = _deadline(
                    run, scenario.duration + scenario.settle + scenario.workload.fetch_timeout
                )
            await trio.sleep_until(_deadline(run, scenario.duration + scenario.settle))
            background.cancel_scope.cancel()
        run.phase = "checking"
        await run.sample()
        run.progress(run.state())
        await run.final_check()
        run.phase = "collecting"
        records: dict[str, Any] = {"published": [], "received": [], "duplicates": []}
        extra: dict[str, Any] = {"bytes_out": {}, "flooded": {}, "byzantine": {}}
        retransmits = held = 0
        for handle in run.handles:
            rec = await handle.call("records")
            for key in records:
                records[key] += rec[key]
            for key in extra:
                extra[key].update(rec[key])
            retransmits += rec["retransmits"]
            held += rec["held"]
        for handle in run.handles:
            if isinstance(handle, LocalHandle):
                await handle.call("shutdown")
        nursery.cancel_scope.cancel()
    peak_rss_mb = _peak_rss_mb()
    raw = {
        "scenario": {
            "name": scenario.name,
            "path": scenario.path,
            "seed": plan.seed,
            "duration": scenario.duration,
            "settle": scenario.settle,
            "replicas": scenario.replicas,
            "workers": scenario.workers,
            "chain": scenario.chain.kind,
            "nodes": len([n for n in plan.nodes if n.initial]),
        },
        "t0": run.t0,
        "nodes": [
            {
                "name": n.name,
                "group": n.group,
                "role": n.role,
                "peer": run.peers[n.name],
                "class": n.link_class,
                "alive": run.alive.get(n.name),
                "unstaked_at": run.unstaked_at.get(n.name),
            }
            for n in plan.nodes
        ],
        "events": run.events,
        "uploads": [run.uploads[i] for i in sorted(run.uploads)],
        "fetches": sorted(run.fetches, key=lambda f: f["index"]),
        "final": sorted(run.final, key=lambda f: f["upload"]),
        "samples": run.samples,
        "last_nodes": getattr(run, "last_nodes", {}),
        "records": records,
        **extra,
        "retransmits": retransmits,
        "held_by_partition": held,
        "wall": {
            "setup_seconds": run.setup_seconds,
            "total_seconds": time.perf_counter() - wall0,
            "peak_rss_mb_coordinator": peak_rss_mb,
            "peak_rss_mb_children": _peak_rss_mb(children=True),
            "peak_rss_mb_total_sampled": max((s["rss_mb"] for s in run.samples), default=0.0),
        },
    }
    _write(out_dir / "raw.json", json.dumps(raw))
    return raw


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _deadline(run: Run, at: float) -> float:
    """The trio deadline of schedule time ``at`` (schedule times are wall seconds)."""
    return trio.current_time() + max(0.0, at - run.now())


def _peak_rss_mb(*, children: bool = False) -> float:
    import resource

    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024  # kB on Linux


def rss_mb(pids: Sequence[int]) -> float:
    """Resident memory of this process and ``pids`` now (Linux /proc), in MB."""
    total = 0
    for pid in [os.getpid(), *pids]:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total / 1024


__all__ = ["SimnetError", "run_scenario"]
