"""The Python SDK of Coliving: :class:`Coliving` (trio) and :class:`ColivingSync`
(plain scripts). See :mod:`sdk.client` for what it talks to and how."""

from sdk.client import (
    Account,
    Coliving,
    ColivingError,
    Network,
    NotFound,
    RateLimited,
    Refused,
    Unavailable,
)
from sdk.sync import ColivingSync

__all__ = [
    "Account",
    "Coliving",
    "ColivingError",
    "ColivingSync",
    "Network",
    "NotFound",
    "RateLimited",
    "Refused",
    "Unavailable",
]
