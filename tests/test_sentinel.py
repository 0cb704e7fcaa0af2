"""A real Redis Sentinel failover under writes: a primary, a replica and three sentinels
(``redis-server --sentinel``) on free loopback ports in temp dirs, a ``syndicate serve`` process on
``REDIS_URL=redis+sentinel://...``, writers posting articles, and either ``SENTINEL FAILOVER`` or a
SIGKILL of the primary. Every acknowledged write must be on the new primary, none may answer 500,
writes resume within the Sentinel timeout plus 5 s, and a feed poll and a webhook push work after.

SLOW (about 15 s a run). The figures are printed (run with ``-s`` to see them) and are in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis as redis_sync
from conftest import (
    ADMIN,
    ADMIN_TOKEN,
    AUTH,
    PUBLISHER_TOKEN,
    ROOT,
    cli_env,
    free_port,
    start_redis,
    stop_processes,
)
from push_helpers import Subscriber, wait_for
from sentinel_helpers import DOWN_AFTER_MS, SERVICE, running_cluster, wait_until

RESUME_WITHIN = DOWN_AFTER_MS / 1000 + 5.0  # "the Sentinel timeout plus 5 s"
WRITERS = 4
JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
ADMIN_JSON = {**ADMIN, "Content-Type": "application/json"}


@pytest.fixture
def cluster(tmp_path):
    yield from running_cluster(tmp_path)


def start_serve(redis_url: str, data_dir: Path, port: int) -> subprocess.Popen:
    env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(data_dir), SYNDICATE_PORT=str(port),
                  SYNDICATE_PUBLISHER_TOKENS=f"newsroom:{PUBLISHER_TOKEN}", SYNDICATE_ADMIN_TOKEN=ADMIN_TOKEN,
                  SYNDICATE_PUSH_ALLOW_NETWORKS="127.0.0.0/8", SYNDICATE_LOG_LEVEL="INFO", SYNDICATE_LOG_FORMAT="TEXT")
    log = open(data_dir.parent / f"serve-{port}.log", "wb")  # noqa: SIM115 (kept open for the process)
    return subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


@dataclass
class Tally:
    acknowledged: list[str] = field(default_factory=list)  # uris answered 2xx
    unavailable: int = 0  # 503s
    other: list[tuple[int | str, str]] = field(default_factory=list)  # anything else: a failure
    failures_at: list[float] = field(default_factory=list)  # monotonic times of the 503s
    successes_at: list[float] = field(default_factory=list)


async def writer(session: aiohttp.ClientSession, base: str, seed: dict, name: str, tally: Tally,
                 stop: asyncio.Event) -> None:
    number = 0
    while not stop.is_set():
        number += 1
        uri = f"urn:test:failover:{name}:{number}"
        document = {**seed, "uri": uri, "headlines": [{"value": f"Failover {name} {number}"}]}
        try:
            async with session.post(f"{base}/api/articles", headers=JSON_HEADERS, data=orjson.dumps(document),
                                    timeout=aiohttp.ClientTimeout(total=10)) as response:
                await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            tally.other.append((type(exc).__name__, uri))
            await asyncio.sleep(0.05)
            continue
        if 200 <= status < 300:
            tally.acknowledged.append(uri)
            tally.successes_at.append(time.monotonic())
        elif status == 503:
            assert response.headers.get("Retry-After") == "1"
            tally.unavailable += 1
            tally.failures_at.append(time.monotonic())
            await asyncio.sleep(0.05)
        else:
            tally.other.append((status, uri))


@pytest.mark.parametrize("how", ["sentinel-failover", "sigkill-primary"])
async def test_slow_no_acknowledged_write_is_lost_in_a_failover(cluster, tmp_path, seed_v1, how):
    started = time.monotonic()
    port = free_port()
    (tmp_path / "serve").mkdir()
    server = start_serve(cluster.url, tmp_path / "serve", port)
    base = f"http://127.0.0.1:{port}"
    receiver = await Subscriber().start()
    try:
        async with aiohttp.ClientSession() as session:
            async def up() -> bool:
                assert server.poll() is None, "the server exited"
                try:
                    async with session.get(f"{base}/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False
            await wait_for(up, timeout=30, interval=0.05, message="the server to be ready")
            async with session.post(f"{base}/api/partners", headers=ADMIN_JSON, data=orjson.dumps(
                    {"name": "acme", "feeds": ["*"], "formats": ["*"]})) as response:
                assert response.status == 201, await response.text()
                key = (await response.json())["key"]
            async with session.post(f"{base}/api/partners/acme/endpoints", headers=ADMIN_JSON, data=orjson.dumps(
                    {"url": receiver.url(), "format": "ninjs", "secret": "s" * 32})) as response:
                assert response.status == 201, await response.text()

            tally, stop = Tally(), asyncio.Event()
            writers = [asyncio.create_task(writer(session, base, seed_v1, f"{how}-{i}", tally, stop))
                       for i in range(WRITERS)]
            await asyncio.sleep(1.5)
            before = len(tally.acknowledged)
            assert before > 0 and not tally.other, tally.other
            old_port = cluster.master_port()
            assert old_port == cluster.primary_port
            switched_at = time.monotonic()
            if how == "sentinel-failover":
                cluster.sentinel().execute_command("SENTINEL", "FAILOVER", SERVICE)
            else:
                os.kill(cluster.primary.pid, signal.SIGKILL)
                cluster.primary.wait()
            await wait_for(lambda: cluster.master_port() != old_port, timeout=RESUME_WITHIN + 5, interval=0.05,
                           message="the sentinels to name a new primary")
            # Writes go on until they have resumed for a second (or the time allowed is over).
            deadline = switched_at + RESUME_WITHIN + 3
            while time.monotonic() < deadline:
                recent = [t for t in tally.successes_at if t > switched_at]
                last_failure = max(tally.failures_at, default=switched_at)
                if recent and recent[-1] > last_failure + 1.0:
                    break
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*writers)

            last_failure = max([t for t in tally.failures_at if t >= switched_at], default=None)
            resumed = [t for t in tally.successes_at if t > (last_failure or switched_at)]
            assert resumed, f"writes never resumed ({len(tally.acknowledged)} acknowledged, {tally.unavailable} 503s)"
            resume_seconds = resumed[0] - switched_at

            new_port = cluster.master_port()
            assert new_port == cluster.replica_port
            new_primary = redis_sync.Redis(port=new_port, decode_responses=True)
            stored = set(new_primary.hkeys("syn:articles:by-uri"))
            lost = [uri for uri in tally.acknowledged if uri not in stored]

            # A feed poll and a webhook push, after the switch.
            document = {**seed_v1, "uri": f"urn:test:failover:{how}:after",
                        "headlines": [{"value": "After the failover"}]}
            async with session.post(f"{base}/api/articles", headers=JSON_HEADERS,
                                    data=orjson.dumps(document)) as response:
                assert response.status == 201, await response.text()
            async def polled() -> bool:
                async with session.get(f"{base}/feeds/latest/atom", headers={"X-API-Key": key}) as response:
                    return response.status == 200 and document["uri"] in await response.text()
            await wait_for(polled, timeout=10, interval=0.1, message="the feed to show the new article")
            await wait_for(lambda: any(p.ok and document["uri"].encode() in p.body for p in receiver.posts),
                           timeout=15, interval=0.1, message="the webhook push of the new article")

        figures = (f"{how}: {len(tally.acknowledged)} writes acknowledged, {len(lost)} lost, "
                   f"{tally.unavailable} answered 503, {len(tally.other)} other failures; writes resumed "
                   f"{resume_seconds:.1f} s after the switch; run took {time.monotonic() - started:.0f} s")
        print("\n" + figures)
        assert not lost, f"{len(lost)} acknowledged writes lost: {lost[:5]}"
        assert not tally.other, f"writes answered neither 2xx nor 503: {tally.other[:5]}"
        assert resume_seconds <= RESUME_WITHIN, figures
        assert len(tally.acknowledged) > before
    finally:
        await receiver.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


async def test_a_write_no_replica_confirms_is_a_503_and_so_is_its_retry_until_one_does(
        aiohttp_client, settings, seed_v1, tmp_path):
    """SYNDICATE_MIN_REPLICAS_ACKED=1 on a Redis without replicas: the commit is made but not confirmed.
    Its retry is recognised ('unchanged') but confirmed too before it is acknowledged: 503 while no
    replica has it, 200 once one does."""
    import dataclasses

    from server.core.redis_address import DirectRedis
    from server.http.app import create_app

    primary, port = start_redis(tmp_path / "primary")
    replica = None
    try:
        client = await aiohttp_client(create_app(dataclasses.replace(
            settings, redis_address=DirectRedis(f"redis://127.0.0.1:{port}/0"), min_replicas_acked=1,
            replica_ack_timeout_seconds=0.05)))
        response = await client.post("/api/articles", data=orjson.dumps(seed_v1), headers=JSON_HEADERS)
        assert response.status == 503 and response.headers["Retry-After"] == "1"
        assert (await response.json())["type"].endswith("/write-not-confirmed")
        retry = await client.post("/api/articles", data=orjson.dumps(seed_v1), headers=JSON_HEADERS)
        assert retry.status == 503, await retry.text()  # stored, but still on no replica
        replica, _replica_port = start_redis(tmp_path / "replica", "--replicaof", "127.0.0.1", str(port))
        primary_client = redis_sync.Redis(port=port)
        wait_until(lambda: any(v.get("state") == "online" for k, v in primary_client.info("replication").items()
                               if k.startswith("slave") and isinstance(v, dict)), 30, "the replica in sync")
        for _attempt in range(40):  # as a CMS retries on 503 (the new replica may still be settling in)
            retry = await client.post("/api/articles", data=orjson.dumps(seed_v1), headers=JSON_HEADERS)
            if retry.status != 503:
                break
            await asyncio.sleep(0.5)
        assert retry.status == 200, await retry.text()  # stored by the first attempt, now on a replica
        assert (await retry.json())["outcome"] == "unchanged"
    finally:
        stop_processes([p for p in (replica, primary) if p is not None], grace=15)
