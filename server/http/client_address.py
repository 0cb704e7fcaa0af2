"""Who the client is, by address: the one place every per-client decision asks (the failed-key throttle,
the hub's limits, the dashboard's login throttle, the connection caps, the fast path).

Today the address is the TCP peer's, as aiohttp gives it; ``headers`` are taken so that an address read
from ``X-Forwarded-For``/``Forwarded`` (when the peer is a trusted proxy) can be put here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

UNKNOWN = "unknown"


def client_address(peername: Any, headers: Mapping[str, str] | None = None) -> str:
    """The client's address for a connection whose peer is ``peername`` (a transport's ``peername``: a
    tuple whose first item is the host, a Unix socket's path, or None), presenting ``headers``."""
    del headers  # unused until proxies are trusted
    if peername is None:
        return UNKNOWN
    host = peername[0] if isinstance(peername, (list, tuple)) else peername
    return str(host) or UNKNOWN


def request_address(request: web.Request) -> str:
    """:func:`client_address` of an aiohttp request."""
    transport = request.transport
    return client_address(transport.get_extra_info("peername") if transport is not None else None, request.headers)
