"""A real local chain for integration tests: anvil (npm ``@foundry-rs/anvil``) on 127.0.0.1.

``start_anvil()`` is a sync context manager yielding the JSON-RPC URL; the
``anvil_url`` fixture in tests/conftest.py wraps it. Anvil automines (no
``--block-time``): every transaction is mined in its own block at once.

Port: anvil 1.7 accepts ``--port 0`` and reports the port the OS chose on its
``Listening on 127.0.0.1:PORT`` line, so there is no pick-then-bind race to
retry on. Readiness is that line plus one answered ``eth_chainId``, all within
one deadline; no sleeps. Anvil logs every RPC call to stdout, so a daemon
thread keeps draining it (a full pipe would stall the chain) and keeps the
tail for error messages.
"""

from __future__ import annotations

import collections
import contextlib
import json
import queue
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ANVIL = REPO / "node_modules" / ".bin" / "anvil"
ANVIL_CHAIN_ID = 31337
# anvil's first default dev account (the well-known, public "test test ... junk" mnemonic)
ANVIL_KEY_0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ANVIL_ADDRESS_0 = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"

_LISTENING = re.compile(r"Listening on (\S+):(\d+)")
_EOF = None


class AnvilError(RuntimeError):
    """Anvil did not start, or did not answer in time."""


def anvil_available() -> bool:
    return ANVIL.exists()


def _pump(stream: object, lines: queue.Queue[str | None], tail: collections.deque[str]) -> None:
    # runs until anvil closes stdout (it exits): drains so anvil never blocks on a full pipe
    assert hasattr(stream, "readline")
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        tail.append(line)
        lines.put(line)
    lines.put(_EOF)


def rpc_call(
    url: str, method: str, params: Sequence[object] = (), *, timeout: float = 5.0
) -> object:
    """One JSON-RPC call; returns ``result`` or raises ``AnvilError``."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise AnvilError(f"{method} at {url} failed: {exc}") from None
    if "error" in reply:
        raise AnvilError(f"{method} at {url}: {reply['error']}")
    return reply.get("result")


@contextlib.contextmanager
def start_anvil(
    *,
    chain_id: int | None = None,
    port: int = 0,
    accounts: int = 10,
    extra_args: Sequence[str] = (),
    timeout: float = 15.0,
) -> Iterator[str]:
    """Runs anvil on 127.0.0.1 (a free port) until the block exits; yields its URL.

    Skips the test if the binary is missing. Raises ``AnvilError`` (with anvil's
    last output lines) if it exits or does not answer ``eth_chainId`` within
    ``timeout`` seconds.
    """
    if not anvil_available():
        pytest.skip(f"anvil not installed ({ANVIL} missing): run npm ci")
    args = [str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--accounts", str(accounts)]
    if chain_id is not None:
        args += ["--chain-id", str(chain_id)]
    args += list(extra_args)
    deadline = time.monotonic() + timeout
    process = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    tail: collections.deque[str] = collections.deque(maxlen=40)
    pump = threading.Thread(target=_pump, args=(process.stdout, lines, tail), daemon=True)
    pump.start()
    try:
        url = _wait_listening(lines, tail, deadline)
        _wait_rpc(url, tail, deadline)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        pump.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


def _wait_listening(
    lines: queue.Queue[str | None], tail: collections.deque[str], deadline: float
) -> str:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AnvilError("anvil did not report 'Listening on' in time:\n" + "\n".join(tail))
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is _EOF:
            raise AnvilError("anvil exited during start-up:\n" + "\n".join(tail))
        match = _LISTENING.search(line)
        if match:
            return f"http://{match.group(1)}:{match.group(2)}"


def _wait_rpc(url: str, tail: collections.deque[str], deadline: float) -> None:
    # anvil prints the line once its socket is bound; one call proves it serves
    last: AnvilError | None = None
    while time.monotonic() < deadline:
        try:
            rpc_call(url, "eth_chainId", timeout=max(0.1, deadline - time.monotonic()))
            return
        except AnvilError as exc:
            last = exc
    raise AnvilError(f"anvil at {url} did not answer eth_chainId: {last}\n" + "\n".join(tail))
