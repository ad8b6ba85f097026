"""The gateway service: hypercorn serving :class:`GatewayApp` under trio.

``await nursery.start(gateway.run)`` returns once the socket is bound;
``gateway.url`` then holds the address (the port is the real one when the
configuration asked for port 0). Cancel the nursery, or call ``stop()``, to
end it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework

from gateway.app import GatewayApp, StreamAborted, Timeouts
from p2p.abc import TaskStatus

if TYPE_CHECKING:
    from node import Node

log = logging.getLogger("coliving.gateway")
http_log = logging.getLogger("coliving.gateway.http")  # hypercorn's


def _not_an_abort(record: logging.LogRecord) -> bool:
    """hypercorn logs a response the app broke off on purpose (StreamAborted,
    raised so that the connection is dropped and the client sees a short body
    as an error) as an ASGI error with a traceback. The gateway has already
    logged why, in one line."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(StreamAborted)[1] is not None
    return not isinstance(exc, StreamAborted)


http_log.addFilter(_not_an_abort)


class GatewayConfigError(ValueError):
    """A gateway address is not HOST:PORT."""


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) into its parts; port 0 = any free port."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise GatewayConfigError(f"gateway address must be HOST:PORT, not {text!r}")
    return host, int(port)


@dataclass(frozen=True)
class GatewayConfig:
    bind: str = "127.0.0.1:8080"
    timeouts: Timeouts = field(default_factory=Timeouts)

    def __post_init__(self) -> None:
        parse_bind(self.bind)


class Gateway:
    """One node's HTTP gateway. ``await nursery.start(gateway.run)``."""

    def __init__(self, node: Node, config: GatewayConfig) -> None:
        self.config = config
        self.app = GatewayApp(node, timeouts=config.timeouts)
        self.url: str | None = None
        self._stop = trio.Event()

    @property
    def player_url(self) -> str | None:
        return None if self.url is None else f"{self.url}/player"

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        hc = HypercornConfig()
        hc.bind = [self.config.bind]
        hc.errorlog = http_log
        hc.accesslog = None
        hc.graceful_timeout = 1.0
        # one gateway per node, many nodes per test process: no server header games
        hc.include_server_header = False
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                partial(serve, cast(ASGIFramework, self.app), hc, shutdown_trigger=self._stop.wait)
            )
            self.url = binds[0]
            log.info("gateway on %s (player %s)", self.url, self.player_url)
            task_status.started()
