"""Per-partner rate limits: counted in process memory, shared through Redis in the background.

A fixed one-minute window per partner. Each process counts its own requests in memory and, every
flush interval (100 ms by default), adds them to the window's Redis counter with one pipelined INCRBY
per partner, learning the total of all processes in the same round trip. A request is allowed while
``total at the last flush + this process's count since`` is under the limit, so the limit holds across
processes to within one flush interval. Requests are counted in tenths: a 200 costs 10, a 304 only 1
(a conditional GET that finds nothing new is cheap for us and is what well-behaved pollers do).
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from functools import lru_cache

from redis.asyncio import Redis

from server.core import keys

WINDOW_SECONDS = 60
WATCH_SECONDS = 1.0  # how often SharedCounts reads back the names it did not count since its last flush
WATCHED_NAMES = 1000  # and how many of them at most (the highest)
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


def seconds_left(now: float | None = None) -> int:
    """Seconds until the current one-minute window turns (a ``Retry-After``), at least 1."""
    moment = time.time() if now is None else now
    return max(1, WINDOW_SECONDS - int(moment) % WINDOW_SECONDS)


class SharedCounts:
    """Fixed one-minute windows per name (a failed key's address or key id, a hub client's address, a
    topic), counted in this process's memory and added to Redis counters every flush with one pipelined
    ``INCRBY`` + ``EXPIRE`` per name counted since (``keys.limit_window``, 120 s TTL: a cache key), which
    returns every process's total in the same round trip; once a second, also a ``GET`` of the other
    names this process counted in the window (the ``WATCHED_NAMES`` highest), so it learns what the others
    add while it counts nothing more. :meth:`total` is the total at this process's
    last flush plus its count since, so a limit on it holds across processes to within one flush
    interval, with no Redis round trip on the request path. Bounded: at most ``max_names`` names are
    counted in a window (past that a new name is not counted, and its total reads 0)."""

    def __init__(self, redis: Redis, max_names: int = 100_000) -> None:
        self.redis = redis
        self.max_names = max_names
        self._window = 0
        self._pending: dict[str, int] = {}  # counted here since the last flush (this window)
        self._flushing: dict[str, int] = {}  # counted here, being added to Redis now
        self._known: dict[str, int] = {}  # every process's, at the last flush (this window)
        self._watched_at = 0.0

    def _turn(self, now: float | None) -> int:
        window = int((time.time() if now is None else now) // WINDOW_SECONDS) * WINDOW_SECONDS
        if window != self._window:
            self._window, self._pending, self._flushing, self._known = window, {}, {}, {}
        return window

    def total(self, name: str, now: float | None = None) -> int:
        """How often ``name`` was counted in the current window, as this process knows it."""
        self._turn(now)
        return self._known.get(name, 0) + self._flushing.get(name, 0) + self._pending.get(name, 0)

    def count(self, name: str, now: float | None = None) -> int:
        """Count one for ``name`` in the current window; the total (see :meth:`total`), this one included."""
        self._turn(now)
        pending = self._pending.get(name)
        if pending is None:
            if len(self._pending) + len(self._known) >= self.max_names and name not in self._known:
                return 0
            pending = 0
        self._pending[name] = pending + 1
        return self._known.get(name, 0) + self._flushing.get(name, 0) + pending + 1

    async def flush(self) -> None:
        """Add this process's counts to Redis and learn every process's totals for the names it counted."""
        self._turn(None)
        window = self._window
        pending, self._pending = self._pending, {}
        watched: list[str] = []
        if time.monotonic() - self._watched_at >= WATCH_SECONDS:
            self._watched_at = time.monotonic()
            watched = heapq.nlargest(WATCHED_NAMES, (n for n in self._known if n not in pending), key=self._known.__getitem__)
        if not pending and not watched:
            return
        self._flushing = pending
        names = list(pending)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                counter = keys.limit_window(name, window)
                pipe.incrby(counter, pending[name])
                pipe.expire(counter, 2 * WINDOW_SECONDS)
            for name in watched:
                pipe.get(keys.limit_window(name, window))
            try:
                results = await pipe.execute()
            except Exception:
                if window == self._window:  # keep the counts; try again next flush
                    self._flushing = {}
                    for name, n in pending.items():
                        self._pending[name] = self._pending.get(name, 0) + n
                raise
        if window != self._window:
            return  # the window turned while flushing: these totals are of the last one
        added = results[:2 * len(names)]
        for name, total in zip(names, added[::2], strict=True):
            self._known[name] = int(total)
        for name, total in zip(watched, results[2 * len(names):], strict=True):
            self._known[name] = max(self._known.get(name, 0), int(total or 0))
        self._flushing = {}
