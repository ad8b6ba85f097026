"""The transfer, availability, gossip, clients, lagging, collect, relay, transcode and
upload benchmarks run end to end (``--quick``) and print their figures.

A smoke run only: the figures are not judged here (timings on a shared CI
machine mean nothing); ``make bench`` is where they are read.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NUMBER = r"[0-9]+(?:\.[0-9]+)?"


def quick_run(module: str, tmp_path: Path, *args: str, timeout: float) -> str:
    """``python -m MODULE --quick ARGS`` with its temporary files under ``tmp_path``; its stdout."""
    result = subprocess.run(
        [sys.executable, "-m", module, "--quick", *args],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_quick_benchmark_prints_the_four_figures(tmp_path: Path) -> None:
    out = quick_run("bench.transfer", tmp_path, "--pin", timeout=240)
    assert re.search(r"^(pinned: this process on CPU \d+|not pinned)", out, re.M), out
    assert re.search(rf"^\(a\) .*?({NUMBER}) MB/s", out, re.M), out
    assert re.search(rf"^\(b\) .*?({NUMBER}) MB/s .*\(b\)/\(a\) = {NUMBER}", out, re.M), out
    assert re.search(rf"^\(c\) .*?({NUMBER}) MB/s .*\(c\)/\(a\) = {NUMBER}", out, re.M), out
    assert re.search(rf"^\(d\) .*warm ({NUMBER}) ms, cold ({NUMBER}) ms", out, re.M), out
    # the data directories of the bench, its servers and its clients are gone
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_quick_availability_benchmark_prints_its_figures(tmp_path: Path) -> None:
    out = quick_run("bench.availability", tmp_path, timeout=300)
    assert re.search(rf"load average at start {NUMBER}/", out), out
    assert re.search(rf"^\(a\) raw single stream .*?{NUMBER} MB/s$", out, re.M), out
    for k in (1, 2, 3):
        line = rf"^\(b\) swarmed get .* from {k} holder .*?{NUMBER} MB/s +ratio to \(a\) {NUMBER}"
        assert re.search(line, out, re.M), out
    assert re.search(
        rf"^\(c\) gateway time to first byte.*: {NUMBER} ms held by the gateway node"
        rf".*, {NUMBER} ms held only by another node",
        out,
        re.M,
    ), out
    assert re.search(rf"^\(d\) repair after a node loss: {NUMBER} MB/s restored", out, re.M), out
    assert re.search(r"rate-limited by design.*max_per_round = \d+.*max_concurrent = \d+", out), out
    assert re.search(rf"^machine: .*load average {NUMBER}/.* before, {NUMBER}/.* after", out, re.M)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_quick_gossip_benchmark_prints_its_figures(tmp_path: Path) -> None:
    out = quick_run("bench.gossip", tmp_path, timeout=180)
    assert re.search(rf"^baseline: idle CPU {NUMBER} ms per node-second$", out, re.M), out
    assert re.search(
        rf"^announcement: -?{NUMBER} ms CPU per node .*ratio.*: -?{NUMBER}\); {NUMBER} copies",
        out,
        re.M,
    ), out


@pytest.mark.slow
def test_quick_clients_benchmark_leaves_no_state_for_departed_clients(tmp_path: Path) -> None:
    out = quick_run("bench.clients", tmp_path, timeout=240)
    assert re.search(r"^clients served and gone: 15$", out, re.M), out
    # (this one is judged: a count, not a timing)
    assert re.search(r"^bitswap state left: 0 ledgers, 0 streams, 0 send locks$", out, re.M), out
    assert re.search(rf"^memory grown per client: .*\(next/first = {NUMBER}\)$", out, re.M), out


@pytest.mark.slow
def test_quick_lagging_benchmark_prints_its_figures(tmp_path: Path) -> None:
    out = quick_run("bench.lagging", tmp_path, timeout=240)
    for reader in ("fast", "lagging"):
        line = rf"^{reader} reader \({NUMBER} MB/s\): peak {NUMBER} MiB allocated during the read$"
        assert re.search(line, out, re.M), out
    assert re.search(rf"^lagging / fast: {NUMBER}$", out, re.M), out
    assert list(tmp_path.iterdir()) == []


def test_quick_collect_benchmark_prints_its_figures(tmp_path: Path) -> None:
    out = quick_run("bench.collect", tmp_path, timeout=120)
    assert re.search(rf"^collection: {NUMBER} ms in [0-9]+ steps; removed 40 blocks", out, re.M)
    assert re.search(rf"^longest step: .*; ratio {NUMBER}$", out, re.M), out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_quick_relay_benchmark_prints_its_figures(tmp_path: Path) -> None:
    out = quick_run("bench.relay", tmp_path, timeout=240)
    assert re.search(rf"anvil raw .* {NUMBER} tx/s", out), out
    assert re.search(rf"relay .* {NUMBER} actions/s", out), out
    assert "every action landed" in out


@pytest.mark.slow
def test_quick_upload_benchmark_prints_its_figures(tmp_path: Path) -> None:
    out = quick_run("bench.upload", tmp_path, timeout=240)
    for label in ("decode alone", "transcode alone", "upload to searchable "):
        assert re.search(rf"{label}[^0-9]*{NUMBER} s", out), (label, out)


def test_quick_transcode_benchmark_prints_its_figures(tmp_path: Path) -> None:
    out = quick_run("bench.transcode", tmp_path, timeout=120)
    assert re.search(rf"decode alone[^0-9]*{NUMBER} s", out), out
    assert re.search(rf"output: stream {NUMBER} MB \(32[0-9] kbps\)", out), out
