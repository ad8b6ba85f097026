"""The transfer benchmark runs end to end (``--quick``) and prints its four figures.

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


@pytest.mark.slow
def test_quick_benchmark_prints_the_four_figures(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.transfer", "--quick"],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert re.search(rf"^\(a\) .*?({NUMBER}) MB/s", out, re.M), out
    assert re.search(rf"^\(b\) .*?({NUMBER}) MB/s .*\(b\)/\(a\) = {NUMBER}", out, re.M), out
    assert re.search(rf"^\(c\) .*?({NUMBER}) MB/s .*\(c\)/\(a\) = {NUMBER}", out, re.M), out
    assert re.search(rf"^\(d\) .*warm ({NUMBER}) ms, cold ({NUMBER}) ms", out, re.M), out
    # the data directories of the bench, its servers and its clients are gone
    assert list(tmp_path.iterdir()) == []
