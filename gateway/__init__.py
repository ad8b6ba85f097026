"""HTTP gateway of a node: files by CID with Range support, a web player, health, metrics.

Start it with the node (``NodeConfig.gateway = "HOST:PORT"``) or on its own:
``await nursery.start(Gateway(node, GatewayConfig(bind=...)).run)``.
"""

from gateway.app import GatewayApp, RequestRecord, Timeouts
from gateway.server import Gateway, GatewayConfig, GatewayConfigError, parse_bind

__all__ = [
    "Gateway",
    "GatewayApp",
    "GatewayConfig",
    "GatewayConfigError",
    "RequestRecord",
    "Timeouts",
    "parse_bind",
]
