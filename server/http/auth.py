"""Who is calling the API: the publisher and admin bearer tokens, checked by
:meth:`AccessControl.check_token <server.partners.access.AccessControl.check_token>` (in constant time,
under the failed-key throttle)."""

from __future__ import annotations

from aiohttp import web

from server.core.errors import Problem, Unauthorised
from server.domain.callers import Caller
from server.http.client_address import request_address
from server.http.state import ACCESS

_CHALLENGE = 'Bearer realm="syndicate"'


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def require_caller(request: web.Request, *, admin: bool = False) -> Caller:
    token = bearer_token(request)
    if token is None:
        needed = "the admin token" if admin else "a publisher or admin token"
        raise Unauthorised(f"This endpoint needs 'Authorization: Bearer <token>' ({needed}).",
                           headers={"WWW-Authenticate": _CHALLENGE})
    caller = request.app[ACCESS].check_token(token, request_address(request), _CHALLENGE)
    if admin and not caller.is_admin:
        raise Problem("This endpoint needs the admin token.", status=403, slug="forbidden")
    return caller
