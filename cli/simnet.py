"""``coliving simnet``: run a scenario with real nodes and report; compare two runs.

``coliving simnet run SCENARIO --out DIR`` loads the scenario (a path, or the
name of one shipped in simnet/scenarios/), runs it with a live progress
view on stderr and writes DIR/README.md, metrics.json, the plots, plan.json
and raw.json. ``coliving simnet compare A B`` prints the metric differences
of two run directories.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import trio
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from simnet.scenario import ScenarioError, load

simnet_app = typer.Typer(help="Many real nodes under a scripted scenario.", no_args_is_help=True)
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
SHIPPED = Path(__file__).resolve().parent.parent / "simnet" / "scenarios"


def scenario_path(name: str) -> Path:
    path = Path(name)
    if path.exists():
        return path
    shipped = SHIPPED / f"{name}.toml"
    if shipped.exists():
        return shipped
    known = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.toml")))
    raise ScenarioError(f"{name}: no such file, and no shipped scenario of that name ({known})")


def _view(state: dict[str, Any]) -> Table:
    table = Table.grid(padding=(0, 2))
    t, duration = state["t"], state["duration"]
    running = state["phase"] == "running"
    done = min(1.0, max(0.0, t / duration)) if running else 1.0
    bar = "#" * int(done * 30) + "." * (30 - int(done * 30))
    table.add_row(
        f"[bold]{state['phase']}[/bold]",
        f"[{bar}] {t:5.1f}/{duration:.0f} s" if running else "",
    )
    table.add_row(
        "nodes live",
        str(state["live"]),
        "events",
        str(state["events"]),
        "below R",
        str(state["below_r"]),
    )
    table.add_row(
        "uploads ok",
        f"{state['uploads_ok']}/{state['uploads']}",
        "fetches ok",
        f"{state['fetches_ok']}/{state['fetches']}",
    )
    return table


@simnet_app.command("run")
def run_cmd(
    scenario: Annotated[str, typer.Argument(help="Scenario file, or a shipped scenario's name.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory for the report.")],
    seed: Annotated[int | None, typer.Option(help="Override the scenario's seed.")] = None,
    mode: Annotated[
        str, typer.Option(help="real: libp2p hosts on 127.0.0.1; virtual: simulated time.")
    ] = "real",
) -> None:
    """Run SCENARIO and write its report (README.md, metrics.json, PNG plots) to --out."""
    from simnet.report import write_report
    from simnet.runner import SimnetError, run_scenario

    quiet_logs()
    try:
        sc = load(scenario_path(scenario))
    except ScenarioError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if mode not in ("real", "virtual"):
        err.print(f"[red]error:[/red] --mode must be real or virtual, not {mode!r}")
        raise typer.Exit(2)
    factory = None
    if mode == "virtual":
        factory = _virtual_factory()
    err.print(f"simnet: {sc.name} ({sc.description or sc.path}), seed {seed or sc.seed}")
    with Live(console=err, refresh_per_second=4, transient=False) as live:
        last_phase = [""]

        def progress(state: dict[str, Any]) -> None:
            live.update(_view(state))
            phase = state["phase"].split(" ")[0]
            if not err.is_terminal and phase != last_phase[0]:
                # a log file gets one line per phase (Live draws only on a terminal)
                last_phase[0] = phase
                err.print(f"{time.strftime('%H:%M:%S')} {state['phase']} t={state['t']:.1f}")

        try:
            raw = trio.run(
                lambda: run_scenario(sc, out_dir, seed=seed, progress=progress, factory=factory)
            )
        except (SimnetError, ScenarioError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
    metrics = write_report(raw, out_dir)
    for name, ok in metrics["checks"].items():
        mark = "[green]PASS[/green]" if ok else "[red]FAIL[/red]"
        err.print(f"  {mark} {name.replace('_', ' ')}")
    s = metrics["summary"]
    ann = s["announcements"]
    ratio = ann["delivery_ratio"]
    err.print(
        f"  announcements delivered {ratio if ratio is None else f'{ratio:.3f}'}, "
        f"p50 {ann['latency_ms']['p50'] or 0:.0f} ms; fetches ok "
        f"{s['fetches']['ok']}/{s['fetches']['scheduled']}; wall {s['wall']['total_seconds']:.1f} s"
    )
    out.print(f"report: {out_dir / 'README.md'}")


def quiet_logs() -> None:
    """libp2p warns about every expected reset through its own logger (which does not
    propagate, so the last-resort handler prints it) and through the root."""
    import simnet.runner  # noqa: F401  (imports libp2p, which sets its loggers up)

    logging.basicConfig(level=logging.CRITICAL, stream=sys.stderr)
    logging.getLogger().setLevel(logging.CRITICAL)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)


def _virtual_factory() -> Any:
    try:
        import simnet.virtual  # noqa: F401
    except ImportError:
        err.print(
            "[red]error:[/red] --mode virtual is not available yet "
            "(simnet/virtual.py, the in-memory network under virtual time, has not landed)"
        )
        raise typer.Exit(2) from None
    err.print(
        "[red]error:[/red] --mode virtual: simnet.virtual exists but the runner does not "
        "drive it yet (its start_virtual_nodes starts whole batches of nodes)"
    )
    raise typer.Exit(2)


@simnet_app.command("compare")
def compare_cmd(
    a: Annotated[Path, typer.Argument(help="Run directory (or metrics.json) A.")],
    b: Annotated[Path, typer.Argument(help="Run directory (or metrics.json) B.")],
    all_rows: Annotated[bool, typer.Option("--all", help="Show unchanged metrics too.")] = False,
) -> None:
    """Print the differences of every metric between runs A and B, and whether
    their outcomes (uploads, fetches, deliveries, events: what happened, not
    when) are the same: two runs of one seed should print "identical"."""
    from simnet.report import compare, load_metrics, outcome_differences

    try:
        ma, mb = load_metrics(a), load_metrics(b)
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    table = Table(title=f"{a}  vs  {b}")
    for col in ("metric", "A", "B", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    shown = 0
    for key, va, vb, change in compare(ma, mb):
        if change == "=" and not all_rows:
            continue
        table.add_row(key, _num(va), _num(vb), change)
        shown += 1
    out.print(table)
    if not shown:
        out.print("no differences")
    differences = outcome_differences(ma, mb)
    out.print("outcomes: " + ("identical" if not differences else "DIFFER"))
    for line in differences:
        out.print(f"  {line}", markup=False)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
