"""The gateway benchmark runs end to end (``--quick``) and prints its figures.

A smoke run only: timings on a shared CI machine are not judged here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MS = r"[0-9]+\.[0-9]+ ms"


@pytest.mark.slow
def test_quick_gateway_benchmark(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.gateway", "--quick"],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert re.search(rf"^\(a\) held locally: +direct Node.fetch +{MS}", out, re.M), out
    assert len(re.findall(rf"gateway (?:GET|Range) +{MS}", out)) == 3, out
    assert re.search(rf"^\(b\) from other node: +direct Node.fetch +{MS}", out, re.M), out
    assert list(tmp_path.iterdir()) == []
