"""The push retry policy (``server.push.retry``) alone: no Redis, no HTTP, no clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.push.retry import (
    BACKOFF_CAP_SECONDS,
    MAX_JITTER,
    MIN_JITTER,
    Outcome,
    OutcomeKind,
    RetryPolicy,
    Step,
    StepKind,
    classify,
    next_step,
    parse_retry_after,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
DAY = RetryPolicy(give_up_after=timedelta(hours=24))
TRANSIENT = Outcome(OutcomeKind.TRANSIENT, 503, "HTTP 503")


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


# ----- classify -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "websub", "kind"), [
    (200, False, OutcomeKind.DELIVERED), (204, True, OutcomeKind.DELIVERED), (299, False, OutcomeKind.DELIVERED),
    (410, True, OutcomeKind.GONE), (410, False, OutcomeKind.REFUSED),
    (500, False, OutcomeKind.TRANSIENT), (503, True, OutcomeKind.TRANSIENT), (599, False, OutcomeKind.TRANSIENT),
    (408, False, OutcomeKind.TRANSIENT), (429, True, OutcomeKind.TRANSIENT),
    (301, False, OutcomeKind.REFUSED), (302, True, OutcomeKind.REFUSED), (400, False, OutcomeKind.REFUSED),
    (401, False, OutcomeKind.REFUSED), (404, True, OutcomeKind.REFUSED), (422, False, OutcomeKind.REFUSED),
])
def test_an_answer_is_classified_by_its_status(status, websub, kind):
    outcome = classify(status, websub, seconds(7))
    assert outcome.kind is kind and outcome.status == status
    assert outcome.ok == (kind is OutcomeKind.DELIVERED)
    assert (outcome.error is None) == (kind is OutcomeKind.DELIVERED)


def test_a_failed_answer_keeps_its_retry_after_and_names_its_status():
    assert classify(429, False, seconds(30)) == Outcome(OutcomeKind.TRANSIENT, 429, "HTTP 429", seconds(30))
    assert classify(410, True).error == "410 Gone"


# ----- next_step: the table -------------------------------------------------------------------------

@pytest.mark.parametrize(("outcome", "attempts", "first_try", "jitter", "expected"), [
    # delivered, or gone: whatever the history
    (Outcome(OutcomeKind.DELIVERED, 200), 1, NOW, 1.0, Step(StepKind.DONE)),
    (Outcome(OutcomeKind.DELIVERED, 200), 50, NOW - timedelta(days=3), 1.0, Step(StepKind.DONE)),
    (Outcome(OutcomeKind.GONE, 410, "410 Gone"), 1, NOW, 1.0, Step(StepKind.END)),
    # refused: given up at once, however young
    (Outcome(OutcomeKind.REFUSED, 404, "HTTP 404"), 1, NOW, 1.0, Step(StepKind.GIVE_UP)),
    (Outcome(OutcomeKind.REFUSED, None, "unsafe"), 1, NOW, 1.0, Step(StepKind.GIVE_UP)),
    # a payload that cannot be rendered: given up at once, whatever the count or age (never retried)
    (Outcome(OutcomeKind.UNRENDERABLE, None, "payload could not be rendered"), 1, NOW, 1.0, Step(StepKind.GIVE_UP)),
    (Outcome(OutcomeKind.UNRENDERABLE, None, "payload could not be rendered"), 9, NOW - seconds(1), 0.5,
     Step(StepKind.GIVE_UP)),
    # transient: 2 s × 2^(attempts − 1), times the jitter, at most 600 s
    (TRANSIENT, 1, NOW, 1.0, Step.retry(NOW + seconds(2))),
    (TRANSIENT, 2, NOW, 1.0, Step.retry(NOW + seconds(4))),
    (TRANSIENT, 3, NOW - seconds(6), 1.0, Step.retry(NOW + seconds(8))),
    (TRANSIENT, 3, NOW, 0.5, Step.retry(NOW + seconds(4))),
    (TRANSIENT, 9, NOW, 1.0, Step.retry(NOW + seconds(512))),
    (TRANSIENT, 10, NOW, 1.0, Step.retry(NOW + seconds(600))),
    (TRANSIENT, 10, NOW, 0.5, Step.retry(NOW + seconds(300))),
    (TRANSIENT, 10_000, NOW, 1.0, Step.retry(NOW + seconds(600))),
    # Retry-After wins over the backoff, without jitter
    (Outcome(OutcomeKind.TRANSIENT, 429, "HTTP 429", seconds(30)), 1, NOW, 0.5, Step.retry(NOW + seconds(30))),
    (Outcome(OutcomeKind.TRANSIENT, 503, "HTTP 503", seconds(1)), 9, NOW, 1.0, Step.retry(NOW + seconds(1))),
    # the give-up time: a first attempt 24 h or more ago ends it
    (TRANSIENT, 5, NOW - timedelta(hours=24) + seconds(1), 1.0, Step.retry(NOW + seconds(32))),
    (TRANSIENT, 5, NOW - timedelta(hours=24), 1.0, Step(StepKind.GIVE_UP)),
    (TRANSIENT, 5, NOW - timedelta(days=2), 1.0, Step(StepKind.GIVE_UP)),
    (Outcome(OutcomeKind.TRANSIENT, 429, "HTTP 429", seconds(30)), 5, NOW - timedelta(days=2), 1.0,
     Step(StepKind.GIVE_UP)),
    # an error inside the server: again in 5 s, even past the give-up time (the next real attempt decides)
    (Outcome(OutcomeKind.INTERNAL, error="internal error"), 1, NOW, 0.5, Step.retry(NOW + seconds(5))),
    (Outcome(OutcomeKind.INTERNAL, error="internal error"), 7, NOW - timedelta(days=2), 1.0,
     Step.retry(NOW + seconds(5))),
])
def test_next_step(outcome, attempts, first_try, jitter, expected):
    assert next_step(outcome, attempts, first_try, NOW, policy=DAY, jitter=jitter) == expected


def test_the_give_up_time_comes_from_the_policy():
    hour = RetryPolicy(give_up_after=timedelta(hours=1))
    assert next_step(TRANSIENT, 3, NOW - timedelta(minutes=59), NOW, policy=hour).kind is StepKind.RETRY
    assert next_step(TRANSIENT, 3, NOW - timedelta(hours=1), NOW, policy=hour).kind is StepKind.GIVE_UP
    never_retry = RetryPolicy.from_settings(0.0)  # SYNDICATE_PUSH_GIVE_UP_HOURS=0
    assert next_step(TRANSIENT, 1, NOW, NOW, policy=never_retry).kind is StepKind.GIVE_UP


def test_the_policy_from_settings_reads_the_backoff_when_made(monkeypatch):
    from server.push import retry

    assert RetryPolicy.from_settings(3600.0) == RetryPolicy(give_up_after=timedelta(hours=1))
    monkeypatch.setattr(retry, "BACKOFF_BASE_SECONDS", 0.05)
    fast = RetryPolicy.from_settings(3600.0)
    assert next_step(TRANSIENT, 1, NOW, NOW, policy=fast) == Step.retry(NOW + seconds(0.05))


# ----- next_step: properties ------------------------------------------------------------------------

moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
ages = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30))
give_ups = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=7))
jitters = st.floats(min_value=MIN_JITTER, max_value=MAX_JITTER)
retry_afters = st.none() | st.timedeltas(min_value=seconds(1), max_value=seconds(BACKOFF_CAP_SECONDS))
outcomes = st.builds(Outcome, st.sampled_from(list(OutcomeKind)), st.none() | st.integers(100, 599),
                     st.none() | st.text(max_size=20), retry_afters)


@given(outcomes, st.integers(1, 10**6), ages, moments, give_ups, jitters)
def test_a_retry_is_never_in_the_past_and_never_further_than_the_cap(outcome, attempts, age, now, give_up, jitter):
    step = next_step(outcome, attempts, now - age, now, policy=RetryPolicy(give_up_after=give_up), jitter=jitter)
    if step.kind is StepKind.RETRY:
        assert step.at is not None and now <= step.at <= now + seconds(BACKOFF_CAP_SECONDS)
    else:
        assert step.at is None


@given(st.integers(1, 10**6), ages, moments, give_ups, jitters, retry_afters)
def test_a_transient_failure_is_retried_exactly_while_the_give_up_time_is_ahead(attempts, age, now, give_up,
                                                                                 jitter, retry_after):
    outcome = Outcome(OutcomeKind.TRANSIENT, 503, "HTTP 503", retry_after)
    step = next_step(outcome, attempts, now - age, now, policy=RetryPolicy(give_up_after=give_up), jitter=jitter)
    assert step.kind is (StepKind.RETRY if age < give_up else StepKind.GIVE_UP)
    if step.kind is StepKind.RETRY and retry_after is not None:
        assert step.at == now + retry_after  # Retry-After is honoured as given


@given(st.integers(1, 200), jitters)
def test_the_backoff_never_shrinks_and_stays_within_the_jitter_band(attempts, jitter):
    policy = DAY
    later = policy.backoff(attempts + 1, jitter)
    assert policy.backoff(attempts, jitter) <= later
    full = policy.backoff(attempts, 1.0)
    assert full * MIN_JITTER <= policy.backoff(attempts, jitter) <= full


@given(st.sampled_from([OutcomeKind.DELIVERED, OutcomeKind.GONE, OutcomeKind.REFUSED, OutcomeKind.UNRENDERABLE]),
       st.integers(1, 10**6),
       ages, moments, give_ups)
def test_final_outcomes_do_not_depend_on_the_history(kind, attempts, age, now, give_up):
    step = next_step(Outcome(kind), attempts, now - age, now, policy=RetryPolicy(give_up_after=give_up))
    assert step == next_step(Outcome(kind), 1, now, now, policy=DAY)


# ----- Retry-After ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("", None), ("soon", None), ("\u00b2", None), ("-5", None), ("1.5", None),
    ("7", seconds(7)), (" 30 ", seconds(30)), ("0", seconds(1)), ("600", seconds(600)), ("601", seconds(600)),
    ("9" * 400, seconds(600)),
    ("Sun, 01 Mar 2026 12:00:45 GMT", seconds(45)),  # an HTTP-date: the wait until then
    ("Sun, 01 Mar 2026 11:00:00 GMT", seconds(1)),  # already passed: at least 1 s
    ("Mon, 02 Mar 2026 12:00:00 GMT", seconds(600)),  # too far: the cap
    ("Sun, 01 Mar 2026 12:00:45 -0000", None),  # no known timezone: unreadable
])
def test_retry_after(header, expected):
    assert parse_retry_after(header, NOW) == expected


def test_retry_after_is_capped_by_the_cap_it_is_given():
    assert parse_retry_after("120", NOW, cap=seconds(60)) == seconds(60)


@given(st.text(max_size=40), moments)
def test_any_retry_after_is_none_or_within_bounds(header, now):
    wait = parse_retry_after(header, now)
    assert wait is None or seconds(1) <= wait <= seconds(BACKOFF_CAP_SECONDS)
