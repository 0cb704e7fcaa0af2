"""Who is calling: publisher and admin bearer tokens from the settings, compared in constant time."""

from __future__ import annotations

from aiohttp import web

from server.core.errors import Problem, Unauthorised
from server.domain.callers import Caller, TokenTable


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def require_caller(request: web.Request, table: TokenTable, *, admin: bool = False) -> Caller:
    token = bearer_token(request)
    challenge = {"WWW-Authenticate": 'Bearer realm="syndicate"'}
    if token is None:
        needed = "the admin token" if admin else "a publisher or admin token"
        raise Unauthorised(f"This endpoint needs 'Authorization: Bearer <token>' ({needed}).",
                           headers=challenge)
    caller = table.lookup(token)
    if caller is None:
        raise Unauthorised("The bearer token is not valid.",
                           headers={"WWW-Authenticate": 'Bearer realm="syndicate", error="invalid_token"'})
    if admin and not caller.is_admin:
        raise Problem("This endpoint needs the admin token.", status=403, slug="forbidden")
    return caller
