"""Per-partner rate limits: counted in process memory, shared through Redis in the background.

A fixed one-minute window per partner. Each process counts its own requests in memory and, every
flush interval (100 ms by default), adds them to the window's Redis counter with one pipelined INCRBY
per partner, learning the total of all processes in the same round trip. A request is allowed while
``total at the last flush + this process's count since`` is under the limit, so the limit holds across
processes to within one flush interval. Requests are counted in tenths: a 200 costs 10, a 304 only 1
(a conditional GET that finds nothing new is cheap for us and is what well-behaved pollers do).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

from redis.asyncio import Redis

from server.core import keys

WINDOW_SECONDS = 60
FULL, NOT_MODIFIED = 10, 1  # tenths of a request


@dataclass(slots=True)
class Quota:
    """A partner's standing in the current window, as this process knows it (counts in tenths)."""

    allowed: bool
    limit: int
    used: int  # tenths: every process's at the last flush, plus this process's since
    reset_seconds: int
    window: tuple[str, int]  # (partner, window start): where this request is counted

    @property
    def remaining(self) -> int:
        return max(0, self.limit - (self.used + 9) // 10)

    def headers(self) -> dict[str, str]:
        """IETF draft-ietf-httpapi-ratelimit-headers: the RateLimit-Policy and RateLimit fields."""
        policy, state = self.header_values()
        return {"RateLimit-Policy": policy, "RateLimit": state}

    def header_values(self) -> tuple[str, str]:
        """The RateLimit-Policy and RateLimit values (what :meth:`headers` holds, without the dict)."""
        return _policy(self.limit), _state(self.remaining, self.reset_seconds)

    def header_lines(self) -> str:
        """The same two fields as HTTP header lines, each ending in CRLF (for :mod:`server.http.fast_path`)."""
        return _header_lines(self.limit, self.remaining, self.reset_seconds)


@lru_cache(maxsize=256)
def _policy(limit: int) -> str:
    return f'"partner";q={limit};w={WINDOW_SECONDS}'


@lru_cache(maxsize=1024)
def _state(remaining: int, reset_seconds: int) -> str:
    return f'"partner";r={remaining};t={reset_seconds}'


@lru_cache(maxsize=1024)
def _header_lines(limit: int, remaining: int, reset_seconds: int) -> str:
    return f"RateLimit-Policy: {_policy(limit)}\r\nRateLimit: {_state(remaining, reset_seconds)}\r\n"


class RateLimiter:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._pending: dict[tuple[str, int], int] = {}  # counted here since the last flush
        self._known_total: dict[tuple[str, int], int] = {}  # all processes, at the last flush
        # Counts on their way to Redis: still counted by check until the totals that include them land.
        self._flushing: dict[tuple[str, int], int] = {}

    def check(self, partner: str, limit: int, now: float | None = None) -> Quota:
        now = time.time() if now is None else now
        start = int(now // WINDOW_SECONDS) * WINDOW_SECONDS
        window = (partner, start)
        used = self._known_total.get(window, 0) + self._pending.get(window, 0) + self._flushing.get(window, 0)
        reset = max(1, int(start + WINDOW_SECONDS - now))
        # Allowed while any budget is left: a request is only known to be a cheap 304 once answered.
        return Quota(used < limit * 10, limit, used, reset, window)

    def charge(self, quota: Quota, tenths: int) -> None:
        """Count an answered request in the window it was checked in, and update ``quota`` to include it."""
        self._pending[quota.window] = self._pending.get(quota.window, 0) + tenths
        quota.used += tenths

    async def flush(self) -> None:
        """Add this process's counts to Redis and learn every process's totals, for each partner that
        used the current window here (so other processes' use is seen even when this one is idle)."""
        pending, self._pending = self._pending, {}
        self._flushing = pending
        try:
            await self._flush(pending)
        finally:
            self._flushing = {}

    async def _flush(self, pending: dict[tuple[str, int], int]) -> None:
        current = int(time.time() // WINDOW_SECONDS) * WINDOW_SECONDS
        self._known_total = {k: v for k, v in self._known_total.items() if k[1] >= current}
        watched = list(dict.fromkeys([*pending, *self._known_total]))
        if not watched:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for partner, window in watched:
                name = keys.rate_window(partner, window)
                tenths = pending.get((partner, window), 0)
                pipe.incrby(name, tenths)
                pipe.expire(name, 2 * WINDOW_SECONDS)
            try:
                results = await pipe.execute()
            except Exception:
                for key, tenths in pending.items():  # keep the counts; try again next flush
                    self._pending[key] = self._pending.get(key, 0) + tenths
                raise
        for key, total in zip(watched, results[::2], strict=True):
            self._known_total[key] = int(total)


class Windows:
    """Fixed one-minute windows counted in this process's memory, per key (a client address, a topic):
    for limits that protect this process (the WebSub hub) rather than meter a partner. Bounded: at most
    ``max_keys`` keys are remembered in a window."""

    def __init__(self, per_minute: int, max_keys: int = 100_000) -> None:
        self.per_minute = per_minute
        self.max_keys = max_keys
        self._minute = 0
        self._counts: dict[str, int] = {}

    def take(self, key: str, now: float | None = None) -> int | None:
        """Count one for ``key``; None when allowed, else the seconds until the window turns."""
        moment = time.time() if now is None else now
        minute = int(moment // WINDOW_SECONDS)
        if minute != self._minute:
            self._minute, self._counts = minute, {}
        count = self._counts.get(key, 0)
        if count >= self.per_minute:
            return WINDOW_SECONDS - int(moment) % WINDOW_SECONDS
        if len(self._counts) < self.max_keys or key in self._counts:
            self._counts[key] = count + 1
        return None
