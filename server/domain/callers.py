"""Who is calling the API: publisher and admin bearer tokens from the settings, compared in
constant time."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from server.core.settings import Settings

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
        token = presented.encode("utf-8", "surrogatepass")
        found: Caller | None = None
        for secret, caller in self._entries:
            if hmac.compare_digest(secret, token):
                found = caller
        return found
