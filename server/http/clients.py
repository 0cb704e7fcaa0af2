"""The client's address of a request, for every consumer on the HTTP side (the failed-key throttle, the
hub's and the dashboard's per-address limits, the access line): the TCP peer, or, when that is one of
``SYNDICATE_TRUSTED_PROXIES``, the address the balancer forwarded. The rule is
:meth:`server.core.forwarding.TrustedProxies.client_address`; this works it out once per request and
keeps it on the request. The fast path (:mod:`server.http.fast_path`) asks the same rule with the
connection's peer and the parsed headers."""

from __future__ import annotations

from aiohttp import web

from server.http.state import SETTINGS

CLIENT_ADDRESS = web.RequestKey("client_address", str)


def client_address(request: web.Request) -> str:
    """The client's address (``"unknown"`` when the peer has none, e.g. a Unix socket)."""
    known = request.get(CLIENT_ADDRESS)
    if known is None:
        known = request[CLIENT_ADDRESS] = request.app[SETTINGS].trusted_proxies.client_address(
            request.remote, request.headers)
    return known
