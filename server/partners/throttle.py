"""The failed-key throttle: the one rule for credentials that fail, on every way in that takes one
(feeds and items, ``/api/me``, the WebSub hub, the ``/api`` bearer tokens, the dashboard's login).

Failures are counted in one-minute windows shared by every process through Redis
(:class:`~server.partners.ratelimit.SharedCounts`: in memory on the request path, added up at every
flush), per client address bucket (an IPv4 address, an IPv6 /64: :func:`server.core.networks.address_bucket`)
and, for a credential in the form of a partner key (``syn_<key id>_<secret>``), per key id too.

The exact rule:

- **Partner keys** are 32 random bytes: no rate of guessing finds one, so the throttle never refuses a
  valid key, whatever its address or key id has seen (a partner behind the same NAT as a bad reader is
  not locked out). Once the address bucket has had ``key_failures_per_address`` failed keys in the
  minute, or the key id ``key_failures_per_key`` (from any address), a failed key is answered 429
  ``too-many-failures`` with ``Retry-After`` (the seconds until the minute turns) instead of 401.
- **Tokens** (the admin and publisher bearer tokens) are secrets people choose and copy; they are
  counted apart from partner keys (a bad feed reader does not lock out the CMS behind the same
  address). Once the address bucket has had ``token_failures_per_address`` failed tokens in the minute,
  no token from it is compared until the minute turns: 429, the right token included, so guessing
  gains nothing.

Anything presented that is neither a valid key nor a valid token is a failed key if it has a key's
form, else a failed token.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.core.networks import address_bucket
from server.partners.ratelimit import SharedCounts, seconds_left


@dataclass(frozen=True, slots=True)
class ThrottleLimits:
    """Failures a minute past which the throttle answers 429 (see the module's docstring)."""

    key_failures_per_address: int = 20
    key_failures_per_key: int = 20
    token_failures_per_address: int = 10


class FailedKeyThrottle:
    """Counts failed keys and tokens in ``counts`` and says when their answer is 429."""

    def __init__(self, counts: SharedCounts, limits: ThrottleLimits) -> None:
        self.counts = counts
        self.limits = limits

    def key_failed(self, address: str, key_id: str | None) -> int | None:
        """Count a failed partner key from ``address`` (for ``key_id``, when it has a key's form); the
        ``Retry-After`` seconds when it is to be answered 429, else None (401)."""
        limits, counts = self.limits, self.counts
        over = counts.count(f"failed-key:address:{address_bucket(address)}") > limits.key_failures_per_address
        if key_id is not None:
            over = counts.count(f"failed-key:key:{key_id}") > limits.key_failures_per_key or over
        return seconds_left() if over else None

    def token_wait(self, address: str) -> int | None:
        """The ``Retry-After`` seconds while no token from ``address`` is to be compared, else None."""
        failed = self.counts.total(f"failed-token:address:{address_bucket(address)}")
        return seconds_left() if failed >= self.limits.token_failures_per_address else None

    def token_failed(self, address: str) -> None:
        self.counts.count(f"failed-token:address:{address_bucket(address)}")
