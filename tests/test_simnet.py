"""The simnet: scenario files, the seeded schedule, and a small run end to end.

The end-to-end run is the ``mini`` scenario below: six staked content nodes,
one byzantine and one sybil, one node leaving; its report must show what the
scenario guarantees: every upload retrievable after churn and repair, no
sybil announcement accepted, every byzantine block rejected.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from simnet.report import compare, metrics, outcome_differences, write_report
from simnet.runner import run_scenario
from simnet.scenario import ScenarioError, load, loads, make_plan

SHIPPED = Path(__file__).resolve().parent.parent / "simnet" / "scenarios"

MINI = """\
[scenario]
name = "mini"
seed = 11
duration = 9.0
settle = 4.0
replicas = 3
repair_interval = 0.5

[chain]
kind = "embedded"
poll_interval = 0.2

[[nodes]]
group = "content"
count = 6
class = "lan"

[[nodes]]
group = "byz"
count = 1
role = "byzantine"
mode = "corrupt"

[[nodes]]
group = "sybil"
count = 1
role = "sybil"
flood_rate = 10.0

[links.default]
latency_ms = 2.0

[[links.pair]]
a = "lan"
b = "default"
latency_ms = 10.0
loss = 0.02

[workload]
uploads = 3
upload_rate = 2.0
size = { dist = "uniform", min_kib = 100, max_kib = 700 }
fetches = 6
fetch_rate = 2.0
start = 0.5
fetch_timeout = 20.0

[[events]]
at = 4.0
kind = "leave"
count = 1
"""


# -- the schedule --------------------------------------------------------------------


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    for path in sorted(SHIPPED.glob("*.toml")):
        scenario = load(path)
        assert make_plan(scenario).to_json() == make_plan(load(path)).to_json(), path
    churn = load(SHIPPED / "churn.toml")
    assert make_plan(churn, seed=1).to_json() != make_plan(churn, seed=2).to_json()


def test_the_plan_names_keys_and_respects_liveness() -> None:
    plan = make_plan(loads(MINI))
    assert len({n.secret for n in plan.nodes}) == len(plan.nodes)
    gone = {a["node"] for a in plan.actions if a["op"] == "leave"}
    for action in plan.actions:
        if action["op"] in ("upload", "fetch") and action["at"] >= 4.0:
            assert action["node"] not in gone
        if action["op"] in ("upload", "fetch"):
            assert plan.node(action["node"]).role == "content"


# -- bad files -------------------------------------------------------------------------


def error_of(text: str) -> str:
    with pytest.raises(ScenarioError) as info:
        loads(text, source="bad.toml")
    return str(info.value)


def test_unknown_key_points_at_its_line() -> None:
    text = MINI.replace('class = "lan"\n', 'class = "lan"\ncolour = "red"\n', 1)
    line = text.splitlines().index('colour = "red"') + 1
    message = error_of(text)
    assert message.startswith(f"bad.toml:{line}: nodes[0].colour: unknown key 'colour'"), message


def test_negative_count_points_at_its_line() -> None:
    text = MINI.replace("count = 6", "count = -2")
    line = text.splitlines().index("count = -2") + 1
    message = error_of(text)
    assert message.startswith(f"bad.toml:{line}: nodes[0].count"), message
    assert "out of range" in message


def test_bad_distribution_name_points_at_its_line() -> None:
    text = MINI.replace('dist = "uniform"', 'dist = "pareto"')
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "pareto" in s)
    message = error_of(text)
    assert message.startswith(f"bad.toml:{line}: workload.size.dist"), message
    assert "lognormal" in message


def test_impossible_event_points_at_the_event() -> None:
    text = MINI.replace('kind = "leave"\ncount = 1', 'kind = "leave"\ncount = 9')
    line = text.splitlines().index("[[events]]") + 1
    message = error_of(text)
    assert message.startswith(f"bad.toml:{line}: events at 4.0: leave of 9 nodes"), message


def test_unknown_table_and_syntax_errors() -> None:
    assert error_of(MINI + "\n[extra]\nx = 1\n").startswith("bad.toml:")
    assert "unknown key 'extra'" in error_of(MINI + "\n[extra]\nx = 1\n")
    assert error_of("[scenario\n").startswith("bad.toml:1:")
    assert "embedded chain lives in one process" in error_of(
        MINI.replace("repair_interval = 0.5", "repair_interval = 0.5\nworkers = 2")
    )


# -- end to end ------------------------------------------------------------------------


@pytest.mark.slow
async def test_mini_scenario_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "mini.toml"
    path.write_text(MINI)
    scenario = load(path)
    raw = await run_scenario(scenario, tmp_path / "run")
    m = write_report(raw, tmp_path / "run")
    s = m["summary"]
    # every acknowledged upload is retrievable at the end (on a loaded machine an
    # upload can still be waiting for its replicas when the run ends: not acknowledged)
    assert len(raw["uploads"]) == 3
    assert s["uploads"]["ok"] >= 1, [u.get("error") for u in raw["uploads"]]
    assert m["checks"]["all_uploads_retrievable"], raw["final"]
    assert s["retrievable"]["fetched_ok"] == s["uploads"]["ok"]
    assert s["replication"]["lost_final"] == 0
    # the sybil flooded; nothing of it was accepted by an honest node
    assert s["sybil"]["announcements_published"] > 10
    assert s["sybil"]["accepted_by_honest"] == 0
    assert s["sybil"]["rejected_by_honest"] >= 1
    # byzantine blocks: never accepted as data
    assert s["byzantine"]["corrupt_data_accepted"] == 0
    # a node that caught a byzantine block still bans its sender (bans last 10 minutes)
    caught = s["byzantine"]["bad_blocks_detected"] > 0
    assert (s["byzantine"]["bans_in_force_at_end"] > 0) == caught
    assert m["checks"]["every_byzantine_block_rejected"]
    # announcements among the honest nodes arrived
    assert s["announcements"]["delivery_ratio"] is not None
    assert s["announcements"]["delivery_ratio"] >= 0.9
    assert s["announcements"]["latency_ms"]["n"] > 0
    # the report is complete
    run = tmp_path / "run"
    for name in ("README.md", "metrics.json", "plan.json", "delivery.png", "replication.png"):
        assert (run / name).exists(), name
    assert "![" in (run / "README.md").read_text()
    # the schedule executed is the plan's (same seed: same events, in order)
    plan = json.loads((run / "plan.json").read_text())
    planned = [(a["op"], a.get("node")) for a in plan["actions"] if a["op"] == "leave"]
    done = [(e["op"], e.get("node")) for e in raw["events"] if e["op"] == "leave"]
    assert planned == done
    # compare: a run against itself differs nowhere
    assert all(change in ("=", "") for _k, _a, _b, change in compare(m, metrics(raw)))


TWICE = """\
[scenario]
name = "twice"
seed = 23
duration = 12.0
settle = 4.0
replicas = 2
repair_interval = 0.5

[chain]
kind = "embedded"
poll_interval = 0.2

[[nodes]]
group = "content"
count = 5

[links.default]
latency_ms = 3.0
jitter_ms = 2.0

[workload]
uploads = 2
upload_rate = 2.0
size = { dist = "uniform", min_kib = 100, max_kib = 400 }
fetches = 4
fetch_rate = 2.0
start = 0.5
fetch_timeout = 20.0

[[events]]
at = 11.0
kind = "leave"
count = 1
"""


@pytest.mark.slow
async def test_same_seed_same_delivery_outcomes(tmp_path: Path) -> None:
    """Two runs of one scenario and seed: the same uploads (CIDs), fetch results,
    events and announcement deliveries (who learned of which root from whom);
    only the timings differ. (The leave comes more than 5 s after the last
    upload, so no announcement's expected receivers hinge on timing.)"""
    path = tmp_path / "twice.toml"
    path.write_text(TWICE)
    runs = []
    for run in ("a", "b"):
        raw = await run_scenario(load(path), tmp_path / run)
        runs.append(write_report(raw, tmp_path / run))
    a, b = runs
    assert all(a["outcomes"]["uploads"].values()), a["outcomes"]["uploads"]
    assert a["outcomes"]["deliveries"] and not a["outcomes"]["missed"]
    assert outcome_differences(a, b) == []
    assert a["outcomes"] == b["outcomes"]
    result = CliRunner().invoke(
        app, ["simnet", "compare", str(tmp_path / "a"), str(tmp_path / "b")]
    )
    assert "outcomes: identical" in result.output, result.output


def test_cli_reports_a_bad_scenario_and_compares(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(MINI.replace("count = 6", "count = -1"))
    result = CliRunner().invoke(app, ["simnet", "run", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "bad.toml:" in result.output and "count" in result.output
    a, b = tmp_path / "a", tmp_path / "b"
    for d, ratio in ((a, 1.0), (b, 0.5)):
        d.mkdir()
        d.joinpath("metrics.json").write_text(
            json.dumps({"summary": {"announcements": {"delivery_ratio": ratio}}, "checks": {}})
        )
    result = CliRunner().invoke(app, ["simnet", "compare", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert "announcements.delivery_ratio" in result.output and "-50.0%" in result.output
