"""Background jobs, supervised together: one group per process keeps every task's reference, restarts
a job that ended while the process still runs (it crashed, or its ``run`` returned before it was asked
to stop: either way with a logged error, a metric and a growing pause), and stops them in the reverse
order of their start.

A job is a small object with a ``name`` and ``async run(stop)``, which returns once ``stop`` is set.
Most are periodic (:class:`PeriodicJob`): ``tick()`` every ``interval`` seconds, and ``last()`` once on
the way out (a flush, say). Stopping is by the event, not by cancellation first: redis-py can swallow
a ``CancelledError`` in the middle of a command; a job still running after the grace period is
cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from server.observability.metrics import Metrics

log = logging.getLogger(__name__)

FIRST_RESTART_SECONDS = 0.1
LONGEST_RESTART_SECONDS = 5.0


class Job(Protocol):
    name: str

    async def run(self, stop: asyncio.Event) -> None: ...


class PeriodicJob:
    """``tick()`` every ``interval`` seconds (or at once when woken) until stopped (first at once when
    ``tick_at_start``), then ``last()``. A tick that raises is logged and counted; the next tick comes at its time."""

    name = "periodic"
    where = "periodic"  # the place its Redis errors are counted under (syndicate_redis_errors)
    interval = 1.0
    tick_at_start = False

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._woken = asyncio.Event()

    def wake(self) -> None:
        """Tick now rather than at the next interval (e.g. the store changed under the process)."""
        self._woken.set()

    async def tick(self) -> None:
        raise NotImplementedError

    async def last(self) -> None:
        return None

    async def run(self, stop: asyncio.Event) -> None:
        first = self.tick_at_start
        while not stop.is_set():
            if not first:
                waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._woken.wait())]
                try:
                    await asyncio.wait(waits, timeout=self.interval, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiting in waits:
                        waiting.cancel()
                if stop.is_set():
                    break
            first = False
            self._woken.clear()
            try:
                await self.tick()
            except Exception:
                self.metrics.count_redis_error(self.where)
                log.exception("%s failed; will try again", self.name)
        await self.last()


class JobGroup:
    """The supervised jobs of one process."""

    def __init__(self, metrics: Metrics, grace_seconds: float = 10.0,
                 first_restart_seconds: float = FIRST_RESTART_SECONDS) -> None:
        self.metrics = metrics
        self.grace_seconds = grace_seconds
        self.first_restart_seconds = first_restart_seconds
        self._running: list[tuple[Job, asyncio.Event, asyncio.Task[None]]] = []
        self._alive: dict[str, bool] = {}  # job name -> running now (not ended, not waiting to restart)

    def start(self, job: Job) -> None:
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._supervise(job, stop), name=f"job:{job.name}")
        self._alive[job.name] = True
        self._running.append((job, stop, task))

    @property
    def names(self) -> list[str]:
        return [job.name for job, _stop, _task in self._running]

    def all_alive(self) -> bool:
        """Started, and no job has ended (a job being restarted after a crash counts as ended)."""
        return bool(self._running) and all(self._alive[job.name] for job, _stop, _task in self._running)

    def alive(self, name: str) -> bool:
        return self._alive.get(name, False)

    async def _supervise(self, job: Job, stop: asyncio.Event) -> None:
        pause = self.first_restart_seconds
        while not stop.is_set():
            self._alive[job.name] = True
            try:
                await job.run(stop)
                if stop.is_set():
                    return
                # Returned on its own while the process runs: as good as a crash, and restarted like one.
                self.metrics.job_restarted(job.name)
                log.error("job %s ended before it was stopped; restarting it in %.1f s", job.name, pause)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.metrics.job_restarted(job.name)
                log.exception("job %s crashed; restarting it in %.1f s", job.name, pause)
            finally:
                self._alive[job.name] = False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=pause)
            pause = min(pause * 2, LONGEST_RESTART_SECONDS)

    async def stop(self) -> None:
        """Stop every job, the last started first; each gets ``grace_seconds`` before it is cancelled."""
        while self._running:
            job, stop, task = self._running.pop()
            stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=self.grace_seconds)
            except TimeoutError:
                log.warning("job %s did not stop within %.0f s; cancelling it", job.name, self.grace_seconds)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            except Exception:
                log.exception("job %s failed while stopping", job.name)
