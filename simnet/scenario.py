"""Scenario files (TOML) and the schedule a seed makes of them.

A scenario names its nodes (groups with a role, a stake, delegations and a link
class), its chain, its links, its workload and its timed events. :func:`load`
checks every key and value and reports a mistake as ``file:line: message``
(tomllib gives no positions, so the line is found by scanning the text for the
table header and the key: good enough to point at the mistake).

:func:`make_plan` turns a scenario and a seed into a :class:`Plan`: every node
(with its key), and every timed action (uploads, fetches, leaves, joins,
partitions, slashes...) decided up front by one ``random.Random(seed)``. The
runner only executes the plan, so the same seed gives the same schedule; the
plan serialises to JSON for comparison.

Format (all keys, with defaults, in docs/simnet.md)::

    [scenario]
    name = "churn"
    seed = 1
    duration = 20.0          # seconds of schedule
    settle = 8.0             # then this long for repair and delivery to finish
    replicas = 3
    workers = 1              # processes hosting nodes (>1 needs an RPC chain)

    [chain]
    kind = "embedded"        # or "anvil" (started for the run) or "rpc" + url

    [[nodes]]
    group = "content"; count = 8; role = "content"; stake = 1.0; class = "lan"

    [links.default]
    latency_ms = 2.0

    [[links.pair]]
    a = "lan"; b = "wan"; latency_ms = 60; bandwidth_mbps = 20; loss = 0.01

    [workload]
    uploads = 6; upload_rate = 1.0; size = { dist = "lognormal", median_kib = 300 }
    fetches = 12; fetch_rate = 2.0; popularity = { dist = "zipf", s = 1.2 }

    [[events]]
    at = 8.0; kind = "leave"; count = 2
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

Role = Literal["content", "byzantine", "sybil"]
ROLES: tuple[str, ...] = ("content", "byzantine", "sybil")
BYZANTINE_MODES: tuple[str, ...] = ("corrupt", "substitute", "stall", "dont_have")
EVENT_KINDS: tuple[str, ...] = ("leave", "join", "partition", "heal", "slash", "deregister")
SIZE_DISTS: tuple[str, ...] = ("fixed", "uniform", "lognormal")
POPULARITY_DISTS: tuple[str, ...] = ("zipf", "uniform")
CHAIN_KINDS: tuple[str, ...] = ("embedded", "anvil", "rpc")
MAX_NODES = 1000
NAME = re.compile(r"^[a-z][a-z0-9_]{0,23}$")


class ScenarioError(ValueError):
    """A scenario file is wrong; the message is ``file:line: what``."""


# -- the model -------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """One direction of a link class pair: delay, serialisation, loss."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    bandwidth_mbps: float = 0.0  # 0: unlimited
    loss: float = 0.0  # probability that a write is "lost" and retransmitted


@dataclass(frozen=True)
class NodeGroup:
    group: str
    count: int
    role: Role = "content"
    stake: float = 1.0  # multiples of the content-node minimum; 0: not registered
    delegations: tuple[float, ...] = ()  # amounts delegated to each node, same unit
    link_class: str = "default"
    mode: str = "corrupt"  # byzantine: how wants are answered (simnet.byzantine)
    flood_rate: float = 20.0  # sybil: announcements per second
    flood_roots: int = 16  # sybil: made-up roots per announcement


@dataclass(frozen=True)
class ChainSpec:
    kind: str = "embedded"
    url: str | None = None
    poll_interval: float = 0.5


@dataclass(frozen=True)
class SizeDist:
    dist: str = "lognormal"
    kib: float = 256.0  # fixed; the median of lognormal
    min_kib: float = 16.0
    max_kib: float = 2048.0
    sigma: float = 0.8


@dataclass(frozen=True)
class Workload:
    uploads: int = 4
    upload_rate: float = 1.0  # per second, Poisson
    size: SizeDist = field(default_factory=SizeDist)
    fetches: int = 8
    fetch_rate: float = 2.0
    popularity: str = "zipf"
    zipf_s: float = 1.1
    start: float = 1.0  # seconds into the run
    fetch_timeout: float = 20.0


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    nodes: tuple[str, ...] = ()  # explicit node names
    count: int = 0  # else this many, chosen by the seed
    group: str = ""  # join: the group new nodes copy; leave/slash: pick from it
    amount: float = 1.0  # slash: multiples of the minimum stake
    fraction: float = 0.5  # partition: share of the live nodes cut off
    line: int = 0


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    seed: int
    duration: float
    settle: float
    replicas: int
    workers: int
    announce_interval: float
    repair_interval: float
    sample_interval: float
    chain: ChainSpec
    groups: tuple[NodeGroup, ...]
    default_link: Link
    link_pairs: tuple[tuple[str, str, Link], ...]
    workload: Workload
    events: tuple[Event, ...]
    description: str = ""

    def link_config(self) -> dict[str, Any]:
        """What every hosting process needs to apply the links (JSON-able)."""
        return {
            "default": asdict(self.default_link),
            "pairs": [[a, b, asdict(link)] for a, b, link in self.link_pairs],
        }


# -- locating a key in the text ---------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?\s*(#.*)?$")


def _line_of(text: str, path: Sequence[str | int]) -> int:
    """1-based line of ``path`` (e.g. ("events", 2, "kind")) in the TOML text."""
    lines = text.splitlines()
    headers = [
        (i, m.group(1) == "[[", m.group(2).replace('"', "").replace(" ", ""))
        for i, line in enumerate(lines)
        if (m := _HEADER.match(line))
    ]

    def body(start: int) -> range:
        after = [i for i, _, _ in headers if i > start]
        return range(start + 1, after[0] if after else len(lines))

    prefix: list[str] = []
    region = range(0, headers[0][0] if headers else len(lines))
    found = 0
    parts = list(path)
    k = 0
    while k < len(parts):
        part = parts[k]
        if isinstance(part, int):
            k += 1
            continue
        name = ".".join([*prefix, part])
        nxt = parts[k + 1] if k + 1 < len(parts) else None
        if isinstance(nxt, int):
            arrays = [i for i, is_array, h in headers if is_array and h == name]
            if nxt < len(arrays):
                found = arrays[nxt]
                region = body(found)
                prefix.append(part)
                k += 2
                continue
            return found + 1 if found else (arrays[-1] + 1 if arrays else 1)
        tables = [i for i, is_array, h in headers if not is_array and h == name]
        if tables:
            found = tables[0]
            region = body(found)
            prefix.append(part)
            k += 1
            continue
        key = re.compile(rf"^\s*\"?{re.escape(part)}\"?\s*=")
        for i in region:
            if key.match(lines[i]):
                return i + 1
        return found + 1 if found or headers else 1
    return found + 1


# -- validation helpers ----------------------------------------------------------


class _Table:
    """One TOML table being read: typed getters, and unknown keys are an error."""

    def __init__(
        self, loader: _Loader, data: Any, path: tuple[str | int, ...], what: str = "table"
    ) -> None:
        self.loader = loader
        self.path = path
        if not isinstance(data, dict):
            loader.fail(path, f"must be a {what}")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def _get(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def fail(self, key: str, message: str) -> None:
        self.loader.fail((*self.path, key), message)

    def has(self, key: str) -> bool:
        return key in self.data

    def number(
        self,
        key: str,
        default: float,
        *,
        low: float = -math.inf,
        high: float = math.inf,
        low_open: bool = False,
    ) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            self.fail(key, f"{key} must be a number, not {value!r}")
        if value < low or (low_open and value == low) or value > high:
            bound = f"> {low}" if low_open else f">= {low}"
            self.fail(key, f"{key} = {value} is out of range (must be {bound} and <= {high})")
        return float(value)

    def integer(self, key: str, default: int, *, low: int = 0, high: int = 10**9) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"{key} must be an integer, not {value!r}")
        if not low <= value <= high:
            self.fail(key, f"{key} = {value} is out of range ({low}..{high})")
        return int(value)

    def string(self, key: str, default: str, *, choices: Sequence[str] | None = None) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.fail(key, f"{key} must be a string, not {value!r}")
        if choices is not None and value not in choices:
            self.fail(key, f"{key} = {value!r} is not one of {', '.join(choices)}")
        return str(value)

    def table(self, key: str) -> _Table:
        value = self._get(key)
        return _Table(self.loader, {} if value is None else value, (*self.path, key))

    def array(self, key: str) -> list[Any]:
        value = self._get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(key, f"{key} must be an array")
        return list(value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used)) or "none"
            self.fail(unknown[0], f"unknown key {unknown[0]!r} (known here: {known})")


class _Loader:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source

    def fail(self, path: Sequence[str | int], message: str) -> None:
        line = _line_of(self.text, path)
        dotted = ".".join(f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "[")
        raise ScenarioError(f"{self.source}:{line}: {dotted}: {message}")


# -- loading ---------------------------------------------------------------------


def load(path: Path | str) -> Scenario:
    """Read and check a scenario file; ScenarioError names the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    return loads(text, source=str(path))


def loads(text: str, *, source: str = "<scenario>") -> Scenario:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ScenarioError(f"{source}:{m.group(1) if m else 1}: {exc}") from None
    loader = _Loader(text, source)
    top = _Table(loader, raw, ())
    sc = top.table("scenario")
    name = sc.string("name", Path(source).stem)
    description = sc.string("description", "")
    seed = sc.integer("seed", 1, high=2**63)
    duration = sc.number("duration", 20.0, low=0, high=3600, low_open=True)
    settle = sc.number("settle", 8.0, low=0, high=600)
    replicas = sc.integer("replicas", 3, low=1, high=64)
    workers = sc.integer("workers", 1, low=1, high=32)
    announce_interval = sc.number("announce_interval", 0.5, low=0, high=60, low_open=True)
    repair_interval = sc.number("repair_interval", 1.0, low=0, high=600, low_open=True)
    sample_interval = sc.number("sample_interval", 1.0, low=0.1, high=60)
    sc.done()

    ch = top.table("chain")
    kind = ch.string("kind", "embedded" if workers == 1 else "anvil", choices=CHAIN_KINDS)
    url = ch.string("url", "") or None
    if kind == "rpc" and not (url and url.startswith(("http://127.0.0.1", "http://localhost"))):
        ch.fail("url", "kind = 'rpc' needs url = 'http://127.0.0.1:PORT' (a local dev chain)")
    if kind != "rpc" and url:
        ch.fail("url", "url is only for kind = 'rpc'")
    if kind == "embedded" and workers > 1:
        ch.fail(
            "kind", "the embedded chain lives in one process: use kind = 'anvil' with workers > 1"
        )
    chain = ChainSpec(kind, url, ch.number("poll_interval", 0.5, low=0.05, high=60))
    ch.done()

    groups: list[NodeGroup] = []
    raw_groups = top.array("nodes")
    if not raw_groups:
        top.fail("nodes", "a scenario needs at least one [[nodes]] group")
    for i, item in enumerate(raw_groups):
        g = _Table(loader, item, ("nodes", i))
        gname = g.string("group", f"g{i}")
        if not NAME.match(gname):
            g.fail("group", f"group {gname!r} must be lowercase letters, digits, _ (max 24)")
        if any(x.group == gname for x in groups):
            g.fail("group", f"group {gname!r} is defined twice")
        role = g.string("role", "content", choices=ROLES)
        count = g.integer("count", 1, low=0, high=MAX_NODES)
        stake = g.number("stake", 0.0 if role == "sybil" else 1.0, low=0, high=1000)
        if role != "sybil" and stake < 1.0:
            g.fail("stake", f"a {role} node needs stake >= 1.0 (the minimum) to register")
        if role == "sybil" and stake != 0:
            g.fail("stake", "sybils are unstaked by definition: stake = 0")
        delegations = []
        for d in g.array("delegations"):
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d <= 1000:
                g.fail("delegations", "delegations must be positive numbers (minimum stakes)")
            delegations.append(float(d))
        if role == "sybil" and delegations:
            g.fail("delegations", "sybils are not registered: nothing to delegate to")
        groups.append(
            NodeGroup(
                group=gname,
                count=count,
                role=cast(Role, role),
                stake=stake,
                delegations=tuple(delegations),
                link_class=g.string("class", "default"),
                mode=g.string("mode", "corrupt", choices=BYZANTINE_MODES),
                flood_rate=g.number("flood_rate", 20.0, low=0, high=1000),
                flood_roots=g.integer("flood_roots", 16, low=1, high=512),
            )
        )
        g.done()
    total = sum(x.count for x in groups)
    if total > MAX_NODES:
        top.fail("nodes", f"{total} nodes in all: at most {MAX_NODES}")
    honest = sum(x.count for x in groups if x.role == "content")
    if honest < 1:
        top.fail("nodes", "at least one role = 'content' node is needed")

    lk = top.table("links")
    default_link = _link(_Table(loader, lk.table("default").data, ("links", "default")))
    pairs: list[tuple[str, str, Link]] = []
    classes = {x.link_class for x in groups} | {"default"}
    for i, item in enumerate(lk.array("pair")):
        p = _Table(loader, item, ("links", "pair", i))
        a = p.string("a", "")
        b = p.string("b", "")
        for key, cls in (("a", a), ("b", b)):
            if cls not in classes:
                p.fail(key, f"link class {cls!r} is used by no [[nodes]] group")
        pairs.append((a, b, _link(p)))
    lk.done()

    wl = top.table("workload")
    size_t = wl.table("size")
    size = SizeDist(
        dist=size_t.string("dist", "lognormal", choices=SIZE_DISTS),
        kib=size_t.number("kib", 256.0, low=0.001, high=256 * 1024),
        min_kib=size_t.number("min_kib", 16.0, low=0.001, high=256 * 1024),
        max_kib=size_t.number("max_kib", 2048.0, low=0.001, high=256 * 1024),
        sigma=size_t.number("sigma", 0.8, low=0, high=5),
    )
    if size.min_kib > size.max_kib:
        size_t.fail("min_kib", "min_kib is above max_kib")
    size_t.done()
    pop = wl.table("popularity")
    popularity = pop.string("dist", "zipf", choices=POPULARITY_DISTS)
    zipf_s = pop.number("s", 1.1, low=0, high=10, low_open=True)
    pop.done()
    workload = Workload(
        uploads=wl.integer("uploads", 4, high=10_000),
        upload_rate=wl.number("upload_rate", 1.0, low=0, high=1000, low_open=True),
        size=size,
        fetches=wl.integer("fetches", 8, high=100_000),
        fetch_rate=wl.number("fetch_rate", 2.0, low=0, high=1000, low_open=True),
        popularity=popularity,
        zipf_s=zipf_s,
        start=wl.number("start", 1.0, low=0, high=duration),
        fetch_timeout=wl.number("fetch_timeout", 20.0, low=0.1, high=600),
    )
    if workload.fetches and not workload.uploads:
        wl.fail("fetches", "fetches need uploads to fetch")
    wl.done()

    events: list[Event] = []
    group_names = [x.group for x in groups]
    for i, item in enumerate(top.array("events")):
        e = _Table(loader, item, ("events", i))
        at = e.number("at", 0.0, low=0, high=duration)
        ekind = e.string("kind", "", choices=EVENT_KINDS)
        if not ekind:
            e.fail("kind", f"every event needs kind = one of {', '.join(EVENT_KINDS)}")
        nodes = e.array("nodes")
        if not all(isinstance(n, str) for n in nodes):
            e.fail("nodes", "nodes must be node names such as 'content3'")
        group = e.string("group", "")
        if group and group not in group_names:
            e.fail("group", f"no [[nodes]] group is named {group!r}")
        event = Event(
            at=at,
            kind=ekind,
            nodes=tuple(nodes),
            count=e.integer("count", 0 if nodes else 1, high=MAX_NODES),
            group=group,
            amount=e.number("amount", 1.0, low=0, high=1000, low_open=True),
            fraction=e.number("fraction", 0.5, low=0, high=1, low_open=True),
            line=_line_of(text, ("events", i)),
        )
        if ekind == "join" and not group:
            e.fail("group", "a join names the group whose settings the new nodes copy")
        e.done()
        events.append(event)
    top.done()
    scenario = Scenario(
        name=name,
        path=source,
        seed=seed,
        duration=duration,
        settle=settle,
        replicas=replicas,
        workers=workers,
        announce_interval=announce_interval,
        repair_interval=repair_interval,
        sample_interval=sample_interval,
        chain=chain,
        groups=tuple(groups),
        default_link=default_link,
        link_pairs=tuple(pairs),
        workload=workload,
        events=tuple(sorted(events, key=lambda ev: ev.at)),
        description=description,
    )
    make_plan(scenario)  # an impossible schedule (too many leave...) fails here, at its line
    return scenario


def _link(t: _Table) -> Link:
    link = Link(
        latency_ms=t.number("latency_ms", 0.0, low=0, high=10_000),
        jitter_ms=t.number("jitter_ms", 0.0, low=0, high=10_000),
        bandwidth_mbps=t.number("bandwidth_mbps", 0.0, low=0, high=100_000),
        loss=t.number("loss", 0.0, low=0, high=0.5),
    )
    t.done()
    return link


# -- the plan: nodes and actions, decided by the seed ---------------------------


@dataclass(frozen=True)
class PlannedNode:
    name: str
    group: str
    role: Role
    stake: float
    delegations: tuple[float, ...]
    link_class: str
    mode: str
    flood_rate: float
    flood_roots: int
    secret: str  # hex secp256k1 secret, derived from the seed and the name
    worker: int
    bootstrap: tuple[str, ...]  # names of nodes it dials at start
    initial: bool  # False: started by a join event

    @property
    def staked(self) -> bool:
        return self.role != "sybil"


@dataclass(frozen=True)
class Plan:
    scenario: str
    seed: int
    nodes: tuple[PlannedNode, ...]
    actions: tuple[dict[str, Any], ...]  # sorted by "at"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1)

    def node(self, name: str) -> PlannedNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


def node_secret(seed: int, name: str) -> str:
    # sha256 output is a valid secp256k1 secret with overwhelming probability
    return hashlib.sha256(f"coliving-simnet/{seed}/{name}".encode()).hexdigest()


def make_plan(scenario: Scenario, *, seed: int | None = None) -> Plan:
    """Every node and action of the run; ScenarioError if an event is impossible."""
    seed = scenario.seed if seed is None else seed
    rng = random.Random(seed)
    nodes: list[PlannedNode] = []
    started: list[str] = []

    def new_node(group: NodeGroup, name: str, initial: bool) -> PlannedNode:
        honest_started = [n for n in started if nodes_by[n].role == "content"]
        peers = honest_started or started
        k = min(len(peers), 3)
        boot = tuple(rng.sample(peers, k)) if k else ()
        node = PlannedNode(
            name=name,
            group=group.group,
            role=group.role,
            stake=group.stake,
            delegations=group.delegations,
            link_class=group.link_class,
            mode=group.mode,
            flood_rate=group.flood_rate,
            flood_roots=group.flood_roots,
            secret=node_secret(seed, name),
            worker=len(nodes) % scenario.workers,
            bootstrap=boot,
            initial=initial,
        )
        nodes.append(node)
        nodes_by[name] = node
        started.append(name)
        return node

    nodes_by: dict[str, PlannedNode] = {}
    # content nodes first, so others bootstrap from honest ones
    order = sorted(scenario.groups, key=lambda g: ROLES.index(g.role))
    for group in order:
        for i in range(group.count):
            new_node(group, f"{group.group}{i}", True)

    live_content = [n.name for n in nodes if n.role == "content"]
    registered = {n.name for n in nodes if n.staked}
    actions: list[dict[str, Any]] = []
    wl = scenario.workload

    # timed events first: they shape who is alive when
    joined: dict[str, int] = {}
    timeline: list[tuple[float, str, str]] = []  # (at, "leave"/"join", name)
    partitioned = False
    for ev in scenario.events:
        src = f"{scenario.path}:{ev.line}: events at {ev.at}"
        if ev.kind == "join":
            group = next(g for g in scenario.groups if g.group == ev.group)
            for _ in range(ev.count):
                k = joined.get(group.group, 0)
                joined[group.group] = k + 1
                name = f"{group.group}j{k}"
                node = new_node(group, name, False)
                actions.append({"at": ev.at, "op": "join", "node": name})
                if node.role == "content":
                    live_content.append(name)
                if node.staked:
                    registered.add(name)
                timeline.append((ev.at, "join", name))
        elif ev.kind in ("leave", "slash", "deregister"):
            pool = [
                n
                for n in (ev.nodes or live_content)
                if not ev.group or (nodes_by.get(n) and nodes_by[n].group == ev.group)
            ]
            for n in ev.nodes:
                if n not in nodes_by:
                    raise ScenarioError(f"{src}: no node is named {n!r}")
                if ev.kind == "leave" and n not in live_content and nodes_by[n].role == "content":
                    raise ScenarioError(f"{src}: {n} is not alive then")
                if ev.kind != "leave" and n not in registered:
                    raise ScenarioError(f"{src}: {n} is not registered then")
            if ev.kind != "leave":
                pool = [n for n in pool if n in registered]
            count = len(ev.nodes) if ev.nodes else ev.count
            if count > len(pool):
                raise ScenarioError(
                    f"{src}: {ev.kind} of {count} nodes, but only {len(pool)} can be chosen"
                )
            chosen = list(ev.nodes) if ev.nodes else rng.sample(sorted(pool), count)
            for name in chosen:
                if ev.kind == "leave":
                    if name in live_content:
                        live_content.remove(name)
                    timeline.append((ev.at, "leave", name))
                    actions.append({"at": ev.at, "op": "leave", "node": name})
                elif ev.kind == "slash":
                    actions.append({"at": ev.at, "op": "slash", "node": name, "amount": ev.amount})
                    if nodes_by[name].stake + sum(nodes_by[name].delegations) - ev.amount < 1:
                        registered.discard(name)
                else:
                    registered.discard(name)
                    actions.append({"at": ev.at, "op": "deregister", "node": name})
            if len(live_content) < 1:
                raise ScenarioError(f"{src}: no content node would be left alive")
        elif ev.kind == "partition":
            if partitioned:
                raise ScenarioError(f"{src}: already partitioned (heal first)")
            alive = sorted(n.name for n in nodes if n.name not in _gone(timeline, ev.at))
            cut = max(1, round(len(alive) * ev.fraction))
            picked = ev.nodes or rng.sample(alive, min(cut, len(alive) - 1))
            side_b = set(picked)
            sides = {n: (1 if n in side_b else 0) for n in alive}
            actions.append({"at": ev.at, "op": "partition", "sides": sides})
            partitioned = True
        elif ev.kind == "heal":
            if not partitioned:
                raise ScenarioError(f"{src}: heal without a partition")
            actions.append({"at": ev.at, "op": "heal"})
            partitioned = False

    def alive_content(at: float, *, stays: float = 0.0) -> list[str]:
        """Content nodes alive at ``at`` (and, if they can be found, until at + stays:
        an upload or fetch should not be cut off by its own node leaving)."""
        if stays:
            staying = alive_content(at + stays)
            found = [n for n in alive_content(at) if n in staying]
            if found:
                return found
        gone = _gone(timeline, at)
        born = {name for t, what, name in timeline if what == "join" and t > at}
        return [
            n.name
            for n in nodes
            if n.role == "content" and n.name not in gone and n.name not in born
        ]

    # uploads: Poisson arrivals, sizes from the distribution, to a live content node
    t = wl.start
    uploads: list[dict[str, Any]] = []
    for i in range(wl.uploads):
        if i:
            t += rng.expovariate(wl.upload_rate)
        size = _size(rng, wl.size)
        to = rng.choice(alive_content(t, stays=wl.fetch_timeout))
        uploads.append({"at": round(t, 4), "op": "upload", "index": i, "node": to, "size": size})
    actions += uploads

    # fetches: after the first upload, Zipf (or uniform) over the uploads made by then
    t = (uploads[0]["at"] if uploads else wl.start) + 1.0
    for j in range(wl.fetches):
        if j:
            t += rng.expovariate(wl.fetch_rate)
        eligible = [u for u in uploads if u["at"] <= t - 1.0] or uploads[:1]
        if wl.popularity == "zipf":
            weights = [1.0 / (k + 1) ** wl.zipf_s for k in range(len(eligible))]
        else:
            weights = [1.0] * len(eligible)
        pick = rng.choices(eligible, weights=weights)[0]
        alive = alive_content(t, stays=wl.fetch_timeout)
        candidates = [n for n in alive if n != pick["node"]] or alive
        by = rng.choice(candidates)
        actions.append(
            {"at": round(t, 4), "op": "fetch", "index": j, "upload": pick["index"], "node": by}
        )
    actions.sort(key=lambda a: (a["at"], a["op"], a.get("index", 0), a.get("node", "")))
    return Plan(scenario.name, seed, tuple(nodes), tuple(actions))


def _gone(timeline: list[tuple[float, str, str]], at: float) -> set[str]:
    return {name for t, what, name in timeline if what == "leave" and t <= at}


def _size(rng: random.Random, dist: SizeDist) -> int:
    if dist.dist == "fixed":
        kib = dist.kib
    elif dist.dist == "uniform":
        kib = rng.uniform(dist.min_kib, dist.max_kib)
    else:
        kib = min(
            max(rng.lognormvariate(math.log(dist.kib), dist.sigma), dist.min_kib), dist.max_kib
        )
    return max(1, int(kib * 1024))


def payload(seed: int, index: int, size: int) -> bytes:
    """The bytes of upload ``index``: pseudo-random, so that every file is distinct."""
    return random.Random(f"{seed}/upload/{index}").randbytes(size)
