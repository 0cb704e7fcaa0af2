"""The supervised job group: a crashed job is restarted (logged and counted), jobs stop in reverse
order, a job that ignores its stop event is cancelled after the grace period. No Redis, no HTTP."""

from __future__ import annotations

import asyncio
import logging

from push_helpers import wait_for

from server.observability.metrics import Metrics
from server.runtime.jobs import JobGroup, PeriodicJob


class Crashing:
    name = "crashing"

    def __init__(self, crashes: int) -> None:
        self.crashes, self.runs = crashes, 0

    async def run(self, stop: asyncio.Event) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise RuntimeError(f"crash {self.runs}")
        await stop.wait()


class Recording:
    def __init__(self, name: str, stopped: list[str]) -> None:
        self.name, self.stopped = name, stopped

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.stopped.append(self.name)


class Stubborn:
    name = "stubborn"
    cancelled = False

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            Stubborn.cancelled = True
            raise


def restarts(metrics: Metrics, job: str) -> float:
    return metrics.job_restarts.labels(job=job)._value.get()


async def test_a_crashed_job_is_restarted_logged_and_counted(caplog):
    metrics, job = Metrics("test"), Crashing(crashes=3)
    group = JobGroup(metrics, first_restart_seconds=0.01)
    with caplog.at_level(logging.ERROR, logger="server.runtime.jobs"):
        group.start(job)
        await wait_for(lambda: job.runs == 4, message="the job to be restarted three times")
    assert group.alive("crashing")
    assert restarts(metrics, "crashing") == 3
    assert sum("job crashing crashed" in r.getMessage() for r in caplog.records) == 3
    await group.stop()
    assert not group.names


async def test_jobs_stop_in_reverse_order_and_a_stubborn_one_is_cancelled():
    stopped: list[str] = []
    group = JobGroup(Metrics("test"), grace_seconds=0.2)
    for name in ("first", "second", "third"):
        group.start(Recording(name, stopped))
    group.start(Stubborn())
    await asyncio.sleep(0)
    await group.stop()
    assert stopped == ["third", "second", "first"]
    assert Stubborn.cancelled


async def test_a_failing_tick_does_not_end_a_periodic_job():
    class Ticking(PeriodicJob):
        name = where = "ticking"
        interval = 0.01
        tick_at_start = True

        def __init__(self) -> None:
            super().__init__(Metrics("test"))
            self.ticks, self.lasts = 0, 0

        async def tick(self) -> None:
            self.ticks += 1
            if self.ticks % 2:
                raise RuntimeError("every other tick fails")

        async def last(self) -> None:
            self.lasts += 1

    job, group = Ticking(), JobGroup(Metrics("test"))
    group.start(job)
    await wait_for(lambda: job.ticks >= 5, message="five ticks")
    await group.stop()
    assert job.lasts == 1


async def test_a_job_waiting_to_restart_is_not_alive():
    """The heartbeat reports a push worker only while all its loops run: one waiting to be restarted
    after a crash is not alive (so /readyz can tell)."""
    metrics, job = Metrics("test"), Crashing(crashes=1)
    group = JobGroup(metrics, first_restart_seconds=0.5)
    group.start(job)
    await wait_for(lambda: job.runs == 1 and not group.alive("crashing"), message="the crash")
    assert not group.all_alive()
    await wait_for(lambda: job.runs == 2 and group.all_alive(), message="the restart")
    await group.stop()


class Quitting:
    """A job whose ``run`` returns on its own (no exception) the first ``quits`` times."""

    name = "quitting"

    def __init__(self, quits: int) -> None:
        self.quits, self.runs = quits, 0

    async def run(self, stop: asyncio.Event) -> None:
        self.runs += 1
        if self.runs <= self.quits:
            return
        await stop.wait()


async def test_a_job_that_returns_while_the_service_runs_is_restarted_and_counted(caplog):
    metrics, job = Metrics("test"), Quitting(quits=2)
    group = JobGroup(metrics, first_restart_seconds=0.01)
    with caplog.at_level(logging.ERROR, logger="server.runtime.jobs"):
        group.start(job)
        await wait_for(lambda: job.runs == 3 and group.alive("quitting"), message="the job to be restarted twice")
    assert restarts(metrics, "quitting") == 2
    assert sum("job quitting ended before it was stopped" in r.getMessage() for r in caplog.records) == 2
    await group.stop()
    assert job.runs == 3  # a return after the stop is the normal end: not restarted
    assert restarts(metrics, "quitting") == 2


async def test_a_woken_periodic_job_ticks_now_not_at_its_interval():
    """The maintenance is woken when the store Redis changed under the process (EpochWatch), so an older
    copy's indexes are reconciled at once rather than after its hour."""
    class Hourly(PeriodicJob):
        name = where = "hourly"
        interval = 3600.0

        def __init__(self) -> None:
            super().__init__(Metrics("test"))
            self.ticks = 0

        async def tick(self) -> None:
            self.ticks += 1

    job, group = Hourly(), JobGroup(Metrics("test"))
    group.start(job)
    await asyncio.sleep(0.1)
    assert job.ticks == 0
    job.wake()
    await wait_for(lambda: job.ticks == 1, timeout=5, message="a tick on waking")
    job.wake()
    await wait_for(lambda: job.ticks == 2, timeout=5, message="a second tick on waking again")
    await group.stop()
