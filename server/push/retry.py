"""The retry policy of push: after one attempt, whether to be done, retry (and when) or give up.

Pure: no Redis, no HTTP, no clock and no random numbers of its own. The deliverer passes in the
attempt's :class:`Outcome`, how many attempts this revision has had, when the first of them was made,
the time now and the jitter; :func:`next_step` answers with a :class:`Step`.

The rules:

- a 2xx is :attr:`StepKind.DONE`; a 410 from a WebSub callback is :attr:`StepKind.END` (the
  subscription is removed);
- a transient failure (5xx, 408, 429, a timeout, a refused connection) is retried after its
  ``Retry-After`` (see :func:`parse_retry_after`), else after ``2 s × 2^(attempts − 1)``, at most
  600 s, times the jitter (0.5 to 1);
- a payload that cannot be rendered (:attr:`OutcomeKind.UNRENDERABLE`) is a permanent failure:
  :attr:`StepKind.GIVE_UP` at once, whatever the attempt count or the give-up time (only a retry by
  hand sends it again);
- any other failure, or a transient one of a delivery whose first attempt is ``push_give_up_seconds``
  or more ago, is :attr:`StepKind.GIVE_UP`;
- an unexpected error inside the server is retried in 5 s (its attempt is counted; the give-up time
  applies at the next real attempt).
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 600.0
INTERNAL_ERROR_RETRY_SECONDS = 5.0
MIN_JITTER, MAX_JITTER = 0.5, 1.0


class OutcomeKind(StrEnum):
    """What one attempt came to."""

    DELIVERED = "delivered"  # 2xx
    GONE = "gone"  # 410 from a WebSub callback: the subscriber ended it
    TRANSIENT = "transient"  # worth another try: 5xx, 408, 429, timeouts, connection errors
    REFUSED = "refused"  # anything else (4xx, a redirect, an unsafe address): trying again will not help
    INTERNAL = "internal"  # the server failed before or while making it
    UNRENDERABLE = "unrenderable"  # the payload could not be rendered: no attempt will ever make it


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    status: int | None = None  # the HTTP status, when there was an answer
    error: str | None = None
    retry_after: timedelta | None = None  # the answer's Retry-After, parsed

    @property
    def ok(self) -> bool:
        return self.kind is OutcomeKind.DELIVERED


class StepKind(StrEnum):
    DONE = "done"  # delivered: nothing more to do
    END = "end"  # the destination is gone
    RETRY = "retry"  # try again at Step.at
    GIVE_UP = "give-up"


@dataclass(frozen=True, slots=True)
class Step:
    kind: StepKind
    at: datetime | None = None  # RETRY only: when the next attempt is due

    @classmethod
    def retry(cls, at: datetime) -> Step:
        return cls(StepKind.RETRY, at)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    give_up_after: timedelta
    backoff_base: timedelta = timedelta(seconds=BACKOFF_BASE_SECONDS)
    backoff_cap: timedelta = timedelta(seconds=BACKOFF_CAP_SECONDS)
    internal_error_delay: timedelta = timedelta(seconds=INTERNAL_ERROR_RETRY_SECONDS)

    @classmethod
    def from_settings(cls, give_up_seconds: float) -> RetryPolicy:
        """The policy for ``push_give_up_seconds``, with this module's backoff as it is when called."""
        return cls(give_up_after=timedelta(seconds=give_up_seconds),
                   backoff_base=timedelta(seconds=BACKOFF_BASE_SECONDS),
                   backoff_cap=timedelta(seconds=BACKOFF_CAP_SECONDS),
                   internal_error_delay=timedelta(seconds=INTERNAL_ERROR_RETRY_SECONDS))

    def backoff(self, attempts: int, jitter: float) -> timedelta:
        """The wait after the ``attempts``-th failed attempt when the answer named none."""
        exponent = max(attempts - 1, 0)
        cap = self.backoff_cap.total_seconds()
        # Long before 2^40 the cap is reached: stop doubling there, so no count overflows a float.
        seconds = cap if exponent > 40 else min(cap, self.backoff_base.total_seconds() * 2 ** exponent)
        return timedelta(seconds=seconds * jitter)


def classify(status: int, websub: bool, retry_after: timedelta | None = None) -> Outcome:
    """The outcome of an attempt the destination answered with ``status``."""
    if 200 <= status < 300:
        return Outcome(OutcomeKind.DELIVERED, status)
    if status == 410 and websub:
        return Outcome(OutcomeKind.GONE, status, "410 Gone")
    transient = status >= 500 or status in (408, 429)
    return Outcome(OutcomeKind.TRANSIENT if transient else OutcomeKind.REFUSED, status, f"HTTP {status}",
                   retry_after=retry_after)


def next_step(outcome: Outcome, attempts: int, first_try: datetime, now: datetime, *, policy: RetryPolicy,
              jitter: float = MAX_JITTER) -> Step:
    """What to do after the ``attempts``-th attempt (counting this one) of a delivery first tried at
    ``first_try``. ``jitter`` (``MIN_JITTER`` to ``MAX_JITTER``, random in production) scales the backoff,
    not a ``Retry-After``."""
    match outcome.kind:
        case OutcomeKind.DELIVERED:
            return Step(StepKind.DONE)
        case OutcomeKind.GONE:
            return Step(StepKind.END)
        case OutcomeKind.INTERNAL:
            return Step.retry(now + policy.internal_error_delay)
        case OutcomeKind.REFUSED | OutcomeKind.UNRENDERABLE:
            return Step(StepKind.GIVE_UP)
    if first_try <= now - policy.give_up_after:
        return Step(StepKind.GIVE_UP)
    delay = outcome.retry_after if outcome.retry_after is not None else policy.backoff(attempts, jitter)
    return Step.retry(now + max(delay, timedelta(0)))


def parse_retry_after(value: str | None, now: datetime, cap: timedelta = timedelta(seconds=BACKOFF_CAP_SECONDS),
                      ) -> timedelta | None:
    """A Retry-After header (delay-seconds or an HTTP-date) as a wait of at least 1 s and at most ``cap``;
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = (email.utils.parsedate_to_datetime(value) - now).total_seconds()
        except (TypeError, ValueError):
            return None
    return timedelta(seconds=min(max(seconds, 1.0), cap.total_seconds()))
