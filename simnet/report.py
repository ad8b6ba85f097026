"""Metrics, plots and the summary of a simnet run; and the comparison of two runs.

:func:`metrics` reduces the runner's raw results to numbers (every quantity
measured, JSON); :func:`write_report` writes ``metrics.json``, the PNG plots
and ``README.md`` (a markdown summary linking the plots) in the run's
directory; :func:`compare` lines up two runs' numbers.

Definitions (docs/simnet.md has the long form):

- an *announcement* is one gossip message published by an honest node; its
  *expected receivers* are the honest content nodes alive at publish time
  that stay alive for the next 5 s (a node about to leave is not counted);
  *delivered* when the receiver's validator accepted it; latency is the
  receiver's clock minus the publisher's (one machine: one clock);
- *duplicates* of a message: copies a node received after the first (the
  gossipsub seen-cache hits, plus second validations of copies that arrived
  while the first was still being validated), summed over nodes;
- fetch *TTFB*: from the fetch call to the first verified leaf byte;
  *throughput*: bytes / whole fetch time; local reads are reported apart;
- *below R*: successful uploads held (pinned) by fewer than
  min(R, live honest staked content nodes) such nodes, sampled over time;
- *repair traffic*: bytes and CIDs pulled by replicators (on upload and in
  repair rounds), cumulative;
- *bandwidth per node*: bytes its libp2p connections wrote (after Noise).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LEAVE_GRACE = 5.0


def _pct(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _dist(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "mean": sum(values) / len(values) if values else None,
        "p50": _pct(values, 0.5),
        "p90": _pct(values, 0.9),
        "p99": _pct(values, 0.99),
        "max": max(values) if values else None,
    }


def metrics(raw: dict[str, Any]) -> dict[str, Any]:
    t0 = raw["t0"]
    nodes = {n["name"]: n for n in raw["nodes"]}
    by_peer = {n["peer"]: n for n in raw["nodes"]}
    name_of = {peer: n["name"] for peer, n in by_peer.items()}
    sybils = {n["peer"] for n in raw["nodes"] if n["role"] == "sybil"}
    byzantine = {n["peer"] for n in raw["nodes"] if n["role"] == "byzantine"}
    content = [n for n in raw["nodes"] if n["role"] == "content" and n["alive"]]
    rec = raw["records"]

    # -- announcements -------------------------------------------------------------
    first_ok: dict[tuple[str, str], float] = {}
    validations: dict[tuple[str, str], int] = defaultdict(int)
    for mid, origin, receiver, t, accepted in rec["received"]:
        if receiver == origin:
            continue
        validations[(receiver, mid)] += 1
        if accepted and (mid, receiver) not in first_ok:
            first_ok[(mid, receiver)] = t
    latencies: list[float] = []
    ratios: list[float] = []
    expected_total = delivered_total = 0
    honest_msgs = []
    deliveries: list[str] = []  # "origin root receiver", expected and delivered
    missed: list[str] = []  # the same, expected and not delivered
    for mid, origin, t_pub, roots in rec["published"]:
        if origin in sybils:
            continue
        honest_msgs.append(mid)
        rel = t_pub - t0
        expected = [
            n
            for n in content
            if n["peer"] != origin
            and n["alive"][0] <= rel
            and (n["alive"][1] is None or n["alive"][1] > rel + LEAVE_GRACE)
        ]
        got = 0
        for n in expected:
            t_recv = first_ok.get((mid, n["peer"]))
            pairs = [f"{name_of.get(origin, origin)} {r} {n['name']}" for r in roots]
            if t_recv is not None:
                got += 1
                latencies.append(max(0.0, t_recv - t_pub))
                deliveries += pairs
            else:
                missed += pairs
        expected_total += len(expected)
        delivered_total += got
        if expected:
            ratios.append(got / len(expected))
    dup_per_msg: dict[str, int] = defaultdict(int)
    dup_per_node: dict[str, int] = defaultdict(int)
    for peer, mid, count in rec["duplicates"]:
        dup_per_msg[mid] += count
        dup_per_node[peer] += count
    for (receiver, mid), count in validations.items():
        if count > 1:
            dup_per_msg[mid] += count - 1
            dup_per_node[receiver] += count - 1
    honest_dups = [float(dup_per_msg.get(m, 0)) for m in honest_msgs]

    # -- fetches -------------------------------------------------------------------
    fetches = raw["fetches"]
    remote = [f for f in fetches if f.get("ok") and not f.get("local")]
    ttfb = [f["ttfb"] * 1000 for f in remote if "ttfb" in f]
    throughput = [f["bytes"] / f["seconds"] / 1e6 for f in remote if f.get("seconds")]
    final = raw["final"]
    uploads = raw["uploads"]

    # -- adversaries ---------------------------------------------------------------
    sybil_published = sum(1 for _m, o, _t, _r in rec["published"] if o in sybils)
    sybil_accepted = sum(
        1 for _m, o, r, _t, ok in rec["received"] if o in sybils and ok and r not in sybils
    )
    sybil_rejected = sum(
        1 for _m, o, r, _t, ok in rec["received"] if o in sybils and not ok and r not in sybils
    )
    last = raw.get("last_nodes", {})
    honest_names = {n["name"] for n in content}
    bad_blocks = sum(s["bad_blocks"] for name, s in last.items() if name in honest_names)
    reports_on_byz = sum(
        1
        for name, s in last.items()
        if name in honest_names
        for peer in s["misbehaviour"]
        if peer in byzantine
    )
    # (honest node, byzantine peer) pairs under a ban when the run ended
    bans_on_byz = sum(
        1
        for name, s in last.items()
        if name in honest_names
        for peer in s.get("banned", [])
        if peer in byzantine
    )
    corrupt_accepted = sum(1 for f in [*fetches, *final] if f.get("corrupt"))
    unstaked_after: dict[str, int] = {}
    for n in raw["nodes"]:
        if n.get("unstaked_at") is None:
            continue
        # accepted announcements from it, published more than 3 s after its stake went
        cutoff = t0 + n["unstaked_at"] + 3.0
        late = {m for m, o, t, _r in rec["published"] if o == n["peer"] and t > cutoff}
        unstaked_after[n["name"]] = sum(
            1 for m, o, r, _t, ok in rec["received"] if ok and m in late and r != o
        )

    samples = raw["samples"]
    bytes_out = raw.get("bytes_out", {})
    per_node = {
        name: {
            "role": nodes[name]["role"],
            "bytes_out": bytes_out.get(nodes[name]["peer"], s.get("bytes_out", 0)),
            "bytes_served": s["bytes_served"],
            "bytes_fetched": s["bytes_fetched"],
            "repair_bytes": s["bytes_pulled"],
            "repair_pulls": s["pulled"],
            "duplicates": dup_per_node.get(nodes[name]["peer"], 0),
        }
        for name, s in sorted(last.items())
    }
    ok_uploads = [u for u in uploads if u.get("ok")]
    summary = {
        "announcements": {
            "messages": len(honest_msgs),
            "expected_deliveries": expected_total,
            "delivered": delivered_total,
            "delivery_ratio": delivered_total / expected_total if expected_total else None,
            "latency_ms": _dist([x * 1000 for x in latencies]),
            "duplicates_per_message": _dist(honest_dups),
        },
        "uploads": {
            "scheduled": len(uploads),
            "ok": len(ok_uploads),
            "seconds": _dist([u["seconds"] for u in ok_uploads]),
            "replicas_at_ack": _dist([float(u.get("replicas") or 0) for u in ok_uploads]),
        },
        "fetches": {
            "scheduled": len(fetches),
            "ok": sum(1 for f in fetches if f.get("ok")),
            "skipped": sum(1 for f in fetches if f.get("skipped")),
            "local": sum(1 for f in fetches if f.get("ok") and f.get("local")),
            "ttfb_ms": _dist(ttfb),
            "throughput_mbps": _dist([t * 8 for t in throughput]),
        },
        "retrievable": {
            "uploads": len(ok_uploads),
            "fetched_ok": sum(1 for f in final if f.get("ok")),
        },
        "replication": {
            "below_r_final": samples[-1]["below_r"] if samples else None,
            "lost_final": samples[-1]["lost"] if samples else None,
            "below_r_max": max((s["below_r"] for s in samples), default=0),
            "repair_bytes": samples[-1]["repair_bytes"] if samples else 0,
            "repair_pulls": samples[-1]["repair_pulls"] if samples else 0,
        },
        "bandwidth": {
            "bytes_out_total": sum(bytes_out.values()),
            "bytes_out_per_node": _dist([float(v["bytes_out"]) for v in per_node.values()]),
            "retransmits": raw.get("retransmits", 0),
            "writes_held_by_partition": raw.get("held_by_partition", 0),
        },
        "byzantine": {
            "nodes": len(byzantine),
            "wants_answered_badly": sum(
                b["replies_sent"] for b in raw.get("byzantine", {}).values()
            ),
            "bad_blocks_detected": bad_blocks,
            "misbehaviour_reports": reports_on_byz,
            "bans_in_force_at_end": bans_on_byz,
            "corrupt_data_accepted": corrupt_accepted,
        },
        "sybil": {
            "nodes": len(sybils),
            "announcements_published": sybil_published,
            "flood_attempts": sum(raw.get("flooded", {}).values()),
            "accepted_by_honest": sybil_accepted,
            "rejected_by_honest": sybil_rejected,
        },
        "unstaked": {
            "nodes": sorted(unstaked_after),
            "accepted_after_unstake": sum(unstaked_after.values()),
        },
        "wall": raw["wall"],
    }
    checks = {
        "all_uploads_retrievable": summary["retrievable"]["fetched_ok"] == len(ok_uploads),
        "no_upload_lost": (summary["replication"]["lost_final"] or 0) == 0,
        "zero_sybil_accepted": sybil_accepted == 0,
        "every_byzantine_block_rejected": corrupt_accepted == 0,
        "no_announcement_after_unstake": summary["unstaked"]["accepted_after_unstake"] == 0,
    }
    # What happened, without when: equal for two runs of one seed on a healthy
    # machine (timings differ; these must not)
    outcomes = {
        "uploads": {str(u["index"]): u.get("cid") if u.get("ok") else None for u in uploads},
        "fetches": {str(f["index"]): bool(f.get("ok")) for f in fetches},
        "retrievable": {str(f["upload"]): bool(f.get("ok")) for f in final},
        "events": [f"{e['op']} {e.get('node', '')}".strip() for e in raw["events"]],
        "deliveries": sorted(set(deliveries)),
        "missed": sorted(set(missed)),
    }
    return {
        "scenario": raw["scenario"],
        "summary": summary,
        "checks": checks,
        "outcomes": outcomes,
        "per_node": per_node,
        "series": {
            "latency_ms": sorted(x * 1000 for x in latencies),
            "delivery_ratio_per_message": ratios,
            "duplicates_per_message": honest_dups,
            "ttfb_ms": ttfb,
            "throughput_mbps": [t * 8 for t in throughput],
            "samples": samples,
        },
        "_by_peer": name_of,
    }


# -- plots and summary -----------------------------------------------------------


def _plots(m: dict[str, Any], out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = m["series"]
    made: list[tuple[str, str]] = []

    def save(fig: Any, name: str, title: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        made.append((name, title))

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    lat = s["latency_ms"]
    if lat:
        a.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))])
    a.set(xlabel="delivery latency (ms)", ylabel="fraction of deliveries", title="Announcement CDF")
    a.grid(alpha=0.3)
    b.hist(s["delivery_ratio_per_message"] or [0], bins=20, range=(0, 1))
    b.set(xlabel="delivery ratio", ylabel="messages", title="Delivery ratio per message")
    save(fig, "delivery.png", "Announcement delivery latency CDF and delivery ratio")

    fig, ax = plt.subplots(figsize=(6, 4))
    dups = s["duplicates_per_message"]
    ax.hist(dups or [0], bins=max(5, min(40, int(max(dups or [1])) + 1)))
    ax.set(xlabel="duplicate copies (all nodes)", ylabel="messages", title="Duplicates per message")
    save(fig, "duplicates.png", "Duplicates per message")

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    ttfb = sorted(s["ttfb_ms"])
    if ttfb:
        a.plot(ttfb, [(i + 1) / len(ttfb) for i in range(len(ttfb))])
    a.set(xlabel="time to first byte (ms)", ylabel="fraction", title="Fetch TTFB CDF")
    a.grid(alpha=0.3)
    b.hist(s["throughput_mbps"] or [0], bins=15)
    b.set(xlabel="throughput (Mbit/s)", ylabel="fetches", title="Fetch throughput")
    save(fig, "fetch.png", "Fetch time to first byte and throughput")

    samples = s["samples"]
    t = [x["t"] for x in samples]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(t, [x["below_r"] for x in samples], label="below R")
    a.plot(t, [x["lost"] for x in samples], label="no holder")
    a.plot(t, [x["live"] for x in samples], label="live honest nodes", linestyle=":")
    a.set(xlabel="time (s)", ylabel="count", title="Replication health")
    a.legend()
    a.grid(alpha=0.3)
    b.plot(t, [x["repair_bytes"] / 1e6 for x in samples])
    b.set(xlabel="time (s)", ylabel="MB pulled (cumulative)", title="Repair traffic")
    b.grid(alpha=0.3)
    save(fig, "replication.png", "Replication health over time and repair traffic")

    per = m["per_node"]
    names = list(per)
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.25), 4))
    colours = {"content": "tab:blue", "byzantine": "tab:red", "sybil": "tab:orange"}
    ax.bar(
        range(len(names)),
        [per[n]["bytes_out"] / 1e6 for n in names],
        color=[colours.get(per[n]["role"], "grey") for n in names],
    )
    if len(names) <= 40:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set(
        ylabel="MB written", title="Bandwidth per node (blue honest, red byzantine, orange sybil)"
    )
    save(fig, "bandwidth.png", "Bandwidth per node")

    sm = m["summary"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    byz = sm["byzantine"]
    a.bar(
        ["bad answers sent", "bad blocks caught", "reports", "bans at end", "corrupt accepted"],
        [
            byz["wants_answered_badly"],
            byz["bad_blocks_detected"],
            byz["misbehaviour_reports"],
            byz["bans_in_force_at_end"],
            byz["corrupt_data_accepted"],
        ],
        color="tab:red",
    )
    a.set(title=f"Byzantine peers ({byz['nodes']})")
    a.tick_params(axis="x", labelsize=7)
    syb = sm["sybil"]
    b.bar(
        ["published", "accepted", "rejected"],
        [syb["announcements_published"], syb["accepted_by_honest"], syb["rejected_by_honest"]],
        color="tab:orange",
    )
    b.set(title=f"Sybil peers ({syb['nodes']}): announcements")
    save(fig, "adversaries.png", "What the byzantine and sybil peers achieved")
    return made


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def write_report(raw: dict[str, Any], out: Path) -> dict[str, Any]:
    """metrics.json, the plots and README.md in ``out``; returns the metrics."""
    m = metrics(raw)
    m.pop("_by_peer")
    (out / "metrics.json").write_text(json.dumps(m, indent=1, sort_keys=True))
    plots = _plots(m, out)
    sc = m["scenario"]
    sm = m["summary"]
    lines = [
        f"# simnet run: {sc['name']}",
        "",
        f"Scenario `{sc['path']}`, seed {sc['seed']}, {sc['nodes']} nodes, "
        f"{sc['workers']} process(es), chain {sc['chain']}, R = {sc['replicas']}, "
        f"{sc['duration']} s + {sc['settle']} s settle. "
        f"Wall time {sm['wall']['total_seconds']:.1f} s "
        f"(set-up {sm['wall']['setup_seconds']:.1f} s).",
        "",
        "## Guarantees",
        "",
        *[
            f"- {'PASS' if ok else 'FAIL'}: {name.replace('_', ' ')}"
            for name, ok in m["checks"].items()
        ],
        "",
        "## Numbers",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    for key, value in flatten(sm).items():
        if not key.startswith("wall."):
            lines.append(f"| {key} | {_fmt(value)} |")
    lines += ["", "## Plots", ""]
    for name, title in plots:
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    lines += [
        "Every number is in [metrics.json](metrics.json); the schedule in [plan.json](plan.json)."
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return m


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif (isinstance(value, (int, float)) and not isinstance(value, bool)) or value is None:
            out[name] = value
    return out


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any, str]]:
    """(metric, A, B, change) for every numeric summary metric of two runs."""
    fa, fb = flatten(a["summary"]), flatten(b["summary"])
    fa.update({f"checks.{k}": int(v) for k, v in a.get("checks", {}).items()})
    fb.update({f"checks.{k}": int(v) for k, v in b.get("checks", {}).items()})
    rows = []
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key), fb.get(key)
        if va is None or vb is None:
            change = ""
        elif va == vb:
            change = "="
        elif va:
            change = f"{(vb - va) / abs(va) * 100:+.1f}%"
        else:
            change = f"{vb - va:+g}"
        rows.append((key, va, vb, change))
    return rows


def outcome_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """How two runs' outcomes (metrics()["outcomes"]) differ: one line each."""
    oa, ob = a.get("outcomes"), b.get("outcomes")
    if oa is None or ob is None:
        return ["a run has no outcomes recorded (made before they were)"]
    out = []
    for key in sorted(set(oa) | set(ob)):
        va, vb = oa.get(key), ob.get(key)
        if va == vb:
            continue
        if isinstance(va, list) and isinstance(vb, list):
            only_a, only_b = sorted(set(va) - set(vb)), sorted(set(vb) - set(va))
            out.append(
                f"{key}: {len(only_a)} only in A {only_a[:3]}, {len(only_b)} only in B {only_b[:3]}"
            )
        elif isinstance(va, dict) and isinstance(vb, dict):
            keys = sorted(k for k in set(va) | set(vb) if va.get(k) != vb.get(k))
            out.append(f"{key}: differ at {', '.join(keys[:8])}")
        else:
            out.append(f"{key}: {va!r} vs {vb!r}")
    return out


def load_metrics(path: Path) -> dict[str, Any]:
    """A run directory (its metrics.json) or a metrics.json file."""
    target = path / "metrics.json" if path.is_dir() else path
    data: dict[str, Any] = json.loads(target.read_text())
    return data


__all__ = [
    "compare",
    "flatten",
    "load_metrics",
    "metrics",
    "outcome_differences",
    "write_report",
]
