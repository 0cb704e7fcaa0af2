"""Who the client is, by address: the one place every per-client decision on the HTTP side asks (the
failed-key throttle, the hub's limits, the dashboard's login throttle, the connection caps, the fast
path, the access line).

For a request it is the TCP peer, or, when that is one of ``SYNDICATE_TRUSTED_PROXIES``, the address
the balancer forwarded: the rule is :meth:`server.core.forwarding.TrustedProxies.client_address`;
:func:`request_address` works it out once per request and keeps it on the request. The fast path asks
the same rule with the connection's peer and the parsed headers. A connection (before any request) is
known only by its peer (:func:`peer_address`): behind a balancer, the connection caps count the
balancer's connections.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.http.state import SETTINGS

UNKNOWN = "unknown"
CLIENT_ADDRESS = web.RequestKey("client_address", str)


def peer_address(peername: Any) -> str:
    """The address of a transport's ``peername`` (a tuple whose first item is the host, a Unix
    socket's path, or None)."""
    if peername is None:
        return UNKNOWN
    host = peername[0] if isinstance(peername, (list, tuple)) else peername
    return str(host) or UNKNOWN


def request_address(request: web.Request) -> str:
    """The client's address of an aiohttp request (``"unknown"`` when the peer has none)."""
    known = request.get(CLIENT_ADDRESS)
    if known is None:
        transport = request.transport
        peer = peer_address(transport.get_extra_info("peername") if transport is not None else None)
        known = request[CLIENT_ADDRESS] = request.app[SETTINGS].trusted_proxies.client_address(
            None if peer == UNKNOWN else peer, request.headers)
    return known
