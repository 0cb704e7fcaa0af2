"""Liveness and readiness: ``/healthz`` does no I/O; ``/readyz`` checks Redis with a short timeout, the
push workers' heartbeats, this process's push dispatcher and the embedded Redis child."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from server.core import keys
from server.http.state import CACHE_REDIS, EMBEDDED_REDIS, METRICS, PUSH_WORKER, REDIS
from server.observability.metrics import workers_alive


async def healthz(request: web.Request) -> web.Response:
    """Alive, with no I/O: only the embedded Redis child, when this process runs one, must be running
    (it is restarted when it dies; while it is down, or if it cannot be, this fails)."""
    embedded = request.app.get(EMBEDDED_REDIS)
    if embedded is not None and not embedded.running:
        return web.json_response({"status": "unavailable", "embeddedRedis": "not running"}, status=503)
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(request.app[REDIS].ping(), timeout=1.0)
        checks["redis"] = "ok"
    except Exception as exc:  # any failure means not ready; say which
        checks["redis"] = f"failed: {type(exc).__name__}"
    try:
        await asyncio.wait_for(request.app[CACHE_REDIS].ping(), timeout=1.0)
        checks["cacheRedis"] = "ok"
    except Exception as exc:
        checks["cacheRedis"] = f"failed: {type(exc).__name__}"
    workers = None
    if checks["redis"] == "ok":
        try:
            workers = await asyncio.wait_for(workers_alive(request.app[REDIS]), timeout=1.0)
            if request.app[PUSH_WORKER] is not None:  # this process runs workers: its own heartbeat must be live
                own = keys.worker_heartbeat(request.app[METRICS].process_id)
                alive = await asyncio.wait_for(request.app[REDIS].exists(own), timeout=1.0)
                checks["workerHeartbeat"] = "ok" if alive else "missing"
        except Exception as exc:
            checks["workerHeartbeat"] = f"failed: {type(exc).__name__}"
    worker = request.app[PUSH_WORKER]
    if worker is not None:  # its dispatcher reads the change log (not while its consumer group is gone)
        failing = worker.dispatcher.failing
        checks["pushDispatch"] = "ok" if failing is None else f"failed: {failing}"
    embedded = request.app[EMBEDDED_REDIS]
    if embedded is not None:
        checks["embeddedRedis"] = "ok" if embedded.running else "not running"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"status": "ok" if ready else "unavailable", "checks": checks, "workers": workers,
                              "pid": os.getpid()}, status=200 if ready else 503)
