"""Who is calling: publisher and admin bearer tokens from the settings, compared in constant time."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from aiohttp import web

from server.problems import Problem, Unauthorised
from server.settings import Settings

ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Caller:
    name: str  # the publisher token's name (recorded on revisions), or "admin"
    is_admin: bool


class TokenTable:
    """Every token the settings define. A lookup compares the presented token with each of them with
    ``hmac.compare_digest`` and always goes through the whole list, so timing reveals nothing."""

    def __init__(self, settings: Settings) -> None:
        self._entries = [(t.token.encode(), Caller(t.name, False)) for t in settings.publisher_tokens]
        if settings.admin_token:
            self._entries.append((settings.admin_token.encode(), Caller(ADMIN, True)))

    def lookup(self, presented: str) -> Caller | None:
        token = presented.encode("utf-8", "surrogateescape")
        found: Caller | None = None
        for secret, caller in self._entries:
            if hmac.compare_digest(secret, token):
                found = caller
        return found


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
