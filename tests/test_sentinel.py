"""A real Redis Sentinel failover under writes: a primary, a replica and three sentinels
(``redis-server --sentinel``) on free loopback ports in temp dirs, two ``syndicate serve`` processes (A
and B) on ``REDIS_URL=redis+sentinel://...``, writers posting articles through A, and either
``SENTINEL FAILOVER`` or a SIGKILL of the primary. Every acknowledged write must be on the new primary,
none may answer 500, writes resume within the Sentinel timeout plus 5 s, and after the switch: a feed
poll, a webhook push, B hearing of A's write on pub/sub (B's subscription made again and B's notice
count rising, not only its periodic resync), a poll's ledger line flushed to the new primary, a CLI
write through the sentinels, and the replica count a write waits for read again (``auto``).

A second scenario is the crash failover with a replica that stopped receiving (the issue's "Why": 435
of 468 acknowledged revisions lost): every write while the replica lags answers 503, and every one
acknowledged is on the replica Sentinel promotes.

SLOW (about 15 s a run). The figures are printed (run with ``-s`` to see them) and are in the README
and docs/high-availability.md.
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
    run_cli,
    start_redis,
    stop_processes,
)
from prometheus_client.parser import text_string_to_metric_families
from push_helpers import Subscriber, wait_for
from sentinel_helpers import DOWN_AFTER_MS, SERVICE, Cluster, running_cluster, wait_until

from server.core.redis_address import parse_redis_address
from server.core.redis_connection import connect
from server.core.replication import ReplicaAcks

RESUME_WITHIN = DOWN_AFTER_MS / 1000 + 5.0  # "the Sentinel timeout plus 5 s"
WRITERS = 4
JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
ADMIN_JSON = {**ADMIN, "Content-Type": "application/json"}


@pytest.fixture
def cluster(tmp_path):
    yield from running_cluster(tmp_path)


def start_serve(redis_url: str, data_dir: Path, port: int, **extra: str) -> subprocess.Popen:
    data_dir.mkdir(parents=True, exist_ok=True)
    env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(data_dir), SYNDICATE_PORT=str(port),
                  SYNDICATE_PUBLISHER_TOKENS=f"newsroom:{PUBLISHER_TOKEN}", SYNDICATE_ADMIN_TOKEN=ADMIN_TOKEN,
                  SYNDICATE_PUSH_ALLOW_NETWORKS="127.0.0.0/8", SYNDICATE_LOG_LEVEL="INFO", SYNDICATE_LOG_FORMAT="TEXT", **extra)
    log = open(data_dir.parent / f"serve-{port}.log", "wb")  # noqa: SIM115 (kept open for the process)
    return subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


async def wait_ready(session: aiohttp.ClientSession, servers: dict[str, subprocess.Popen]) -> None:
    async def up() -> bool:
        for base, server in servers.items():
            assert server.poll() is None, f"the server on {base} exited"
            try:
                async with session.get(f"{base}/readyz") as response:
                    if response.status != 200:
                        return False
            except aiohttp.ClientError:
                return False
        return True
    await wait_for(up, timeout=30, interval=0.05, message="the servers to be ready")


def stop_servers(servers: list[subprocess.Popen]) -> None:
    stop_processes(servers, grace=15)


async def process_metric(session: aiohttp.ClientSession, base: str, pid: int, name: str,
                         **labels: str) -> float | None:
    """A sample of the process ``pid`` as ``base``'s /metrics shows it (that process's own snapshot is
    refreshed first); None when there is none, or /metrics did not answer."""
    try:
        async with session.get(f"{base}/metrics", headers=ADMIN) as response:
            if response.status != 200:
                return None
            text = await response.text()
    except aiohttp.ClientError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == name and sample.labels.get("process", "").endswith(f":{pid}")
                    and all(sample.labels.get(k) == v for k, v in labels.items())):
                return float(sample.value)
    return None


async def required_replicas(cluster: Cluster) -> int:
    """What ``SYNDICATE_MIN_REPLICAS_ACKED=auto`` makes a write wait for, read through the sentinels now."""
    redis = await connect(parse_redis_address(cluster.url), timeout=5)
    try:
        acks = ReplicaAcks(redis, None, 0.5)
        await acks.refresh()
        return acks.required
    finally:
        await redis.aclose()


@dataclass
class Tally:
    acknowledged: list[str] = field(default_factory=list)  # uris answered 2xx
    unavailable: int = 0  # 503s
    other: list[tuple[int | str, str]] = field(default_factory=list)  # anything else: a failure
    failures_at: list[float] = field(default_factory=list)  # monotonic times of the 503s
    successes_at: list[float] = field(default_factory=list)
    answers: list[tuple[float, int | str, str]] = field(default_factory=list)  # (sent at, status, uri)


def start_writers(session: aiohttp.ClientSession, base: str, seed: dict,
                  prefix: str) -> tuple[Tally, asyncio.Event, list[asyncio.Task]]:
    """WRITERS writers posting until the event is set, their tally, and their tasks."""
    tally, stop = Tally(), asyncio.Event()
    return tally, stop, [asyncio.create_task(writer(session, base, seed, f"{prefix}-{i}", tally, stop))
                         for i in range(WRITERS)]


async def writer(session: aiohttp.ClientSession, base: str, seed: dict, name: str, tally: Tally,
                 stop: asyncio.Event) -> None:
    number = 0
    while not stop.is_set():
        number += 1
        uri = f"urn:test:failover:{name}:{number}"
        document = {**seed, "uri": uri, "headlines": [{"value": f"Failover {name} {number}"}]}
        sent_at = time.monotonic()
        try:
            async with session.post(f"{base}/api/articles", headers=JSON_HEADERS, data=orjson.dumps(document),
                                    timeout=aiohttp.ClientTimeout(total=10)) as response:
                await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            tally.other.append((type(exc).__name__, uri))
            tally.answers.append((sent_at, type(exc).__name__, uri))
            await asyncio.sleep(0.05)
            continue
        tally.answers.append((sent_at, status, uri))
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


async def until_writes_resumed(tally: Tally, switched_at: float) -> float:
    """Let the writers go on until writes have resumed for a second (or the time allowed is over);
    how long after ``switched_at`` they resumed."""
    deadline = switched_at + RESUME_WITHIN + 3
    while time.monotonic() < deadline:
        recent = [t for t in tally.successes_at if t > switched_at]
        last_failure = max(tally.failures_at, default=switched_at)
        if recent and recent[-1] > last_failure + 1.0:
            break
        await asyncio.sleep(0.1)
    last_failure = max([t for t in tally.failures_at if t >= switched_at], default=None)
    resumed = [t for t in tally.successes_at if t > (last_failure or switched_at)]
    assert resumed, f"writes never resumed ({len(tally.acknowledged)} acknowledged, {tally.unavailable} 503s)"
    return resumed[0] - switched_at


@pytest.mark.parametrize("how", ["sentinel-failover", "sigkill-primary"])
async def test_slow_no_acknowledged_write_is_lost_in_a_failover(cluster, tmp_path, seed_v1, how):
    started = time.monotonic()
    port_a, port_b = free_port(), free_port()
    server_a = start_serve(cluster.url, tmp_path / "a", port_a)
    server_b = start_serve(cluster.url, tmp_path / "b", port_b)
    base, base_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    receiver = await Subscriber().start()
    try:
        assert await required_replicas(cluster) == 1  # auto: the primary has a replica
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, {base: server_a, base_b: server_b})
            async with session.post(f"{base}/api/partners", headers=ADMIN_JSON, data=orjson.dumps(
                    {"name": "acme", "feeds": ["*"], "formats": ["*"]})) as response:
                assert response.status == 201, await response.text()
                key = (await response.json())["key"]
            async with session.post(f"{base}/api/partners/acme/endpoints", headers=ADMIN_JSON, data=orjson.dumps(
                    {"url": receiver.url(), "format": "ninjs", "secret": "s" * 32})) as response:
                assert response.status == 201, await response.text()
            subscriptions = await wait_for(lambda: process_metric(
                session, base_b, server_b.pid, "syndicate_pubsub_subscriptions_total"), timeout=10,
                message="B's pub/sub metrics")

            tally, stop, writers = start_writers(session, base, seed_v1, how)
            await asyncio.sleep(1.5)
            before = len(tally.acknowledged)
            assert before > 0 and not tally.other, tally.other
            old_port = cluster.master_port()
            assert old_port == cluster.primary_port
            switched_at, switched_wall = time.monotonic(), time.time()
            if how == "sentinel-failover":
                cluster.sentinel().execute_command("SENTINEL", "FAILOVER", SERVICE)
            else:
                os.kill(cluster.primary.pid, signal.SIGKILL)
                cluster.primary.wait()
            await wait_for(lambda: cluster.master_port() != old_port, timeout=RESUME_WITHIN + 5, interval=0.05,
                           message="the sentinels to name a new primary")
            resume_seconds = await until_writes_resumed(tally, switched_at)
            stop.set()
            await asyncio.gather(*writers)

            new_port = cluster.master_port()
            assert new_port == cluster.replica_port
            new_primary = redis_sync.Redis(port=new_port, decode_responses=True)
            stored = set(new_primary.hkeys("syn:articles:by-uri"))
            lost = [uri for uri in tally.acknowledged if uri not in stored]

            # B subscribed again (on the new primary: after a SIGKILL the old one is gone) ...
            async def b_subscribed_again() -> bool:
                now = await process_metric(session, base_b, server_b.pid, "syndicate_pubsub_subscriptions_total")
                return now is not None and now > subscriptions
            await wait_for(b_subscribed_again, timeout=20, interval=0.2, message="B's pub/sub to subscribe again")
            notices = await process_metric(session, base_b, server_b.pid, "syndicate_pubsub_notices_total",
                                           channel="syn:changes")
            assert notices is not None

            # ... then a write through A: a feed poll of A, B's feed, a webhook push.
            document = {**seed_v1, "uri": f"urn:test:failover:{how}:after",
                        "headlines": [{"value": "After the failover"}]}
            async with session.post(f"{base}/api/articles", headers=JSON_HEADERS,
                                    data=orjson.dumps(document)) as response:
                assert response.status == 201, await response.text()
            def shows(server_base: str):
                async def polled() -> bool:
                    async with session.get(f"{server_base}/feeds/latest/atom", headers={"X-API-Key": key}) as response:
                        return response.status == 200 and document["uri"] in await response.text()
                return polled
            await wait_for(shows(base), timeout=10, interval=0.1, message="A's feed to show the new article")
            await wait_for(shows(base_b), timeout=10, interval=0.1, message="B's feed to show A's new article")
            async def b_heard_it() -> bool:
                now = await process_metric(session, base_b, server_b.pid, "syndicate_pubsub_notices_total",
                                           channel="syn:changes")
                return now is not None and now > notices
            await wait_for(b_heard_it, timeout=10, interval=0.2, message="B to receive A's change notice")
            await wait_for(lambda: any(p.ok and document["uri"].encode() in p.body for p in receiver.posts),
                           timeout=15, interval=0.1, message="the webhook push of the new article")
            # The polls' ledger lines, flushed to the new primary (stream ids are its clock, ms).
            def polls_after_switch() -> list:
                return [fields for entry_id, fields in new_primary.xrange("syn:partner:acme:polls")
                        if int(entry_id.split("-")[0]) >= switched_wall * 1000 and fields["feed"] == "latest"]
            await wait_for(polls_after_switch, timeout=10, interval=0.1,
                           message="a poll's ledger line on the new primary")
            # The CLI through the sentinels: a durable write (waited for as the new primary's replicas need).
            env = cli_env(REDIS_URL=cluster.url, SYNDICATE_DATA_DIR=str(tmp_path / "cli"))
            result = await asyncio.to_thread(run_cli, "partner", "add", "bravo", "--feeds", "headlines",
                                             "--formats", "rss", env=env)
            assert result.returncode == 0, result.stderr
            assert new_primary.exists("syn:partner:bravo")
            # What a write waits for now: the old primary, SIGKILLed, is no replica (the new primary is
            # alone: auto is 0); demoted by SENTINEL FAILOVER, it replicates the new one (auto is 1).
            expected = 1 if how == "sentinel-failover" else 0
            async def auto_is_expected() -> bool:
                return await required_replicas(cluster) == expected
            await wait_for(auto_is_expected, timeout=20, interval=0.2, message=f"auto to be {expected}")
            new_primary.close()

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
        stop_servers([server_a, server_b])


LAG_SECONDS = 1.5


async def test_slow_a_crash_failover_with_a_replica_that_stopped_receiving_loses_no_acknowledged_write(
        cluster, tmp_path, seed_v1):
    """The replica stops receiving (``REPLICAOF`` a port where nothing listens: its link is cut, it keeps
    its data and still reports the replica role, so the sentinels still count it) while writers post;
    then the primary is SIGKILLed and Sentinel promotes the replica. Every write sent while the replica
    received nothing answers 503 (the primary has it, no replica does), none 2xx or 500; every
    acknowledged write is on the new primary; and writes of the lag are missing there, so the scenario
    does lose what the primary alone had (had they been acknowledged, this test would fail)."""
    started = time.monotonic()
    port = free_port()
    server = start_serve(cluster.url, tmp_path / "serve", port)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, {base: server})
            tally, stop, writers = start_writers(session, base, seed_v1, "lag")
            await asyncio.sleep(1.0)
            before = len(tally.acknowledged)
            assert before > 0 and not tally.other, tally.other
            replica = redis_sync.Redis(port=cluster.replica_port, decode_responses=True)
            replica.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
            lag_from = time.monotonic()
            await asyncio.sleep(LAG_SECONDS)
            lag_to = time.monotonic()
            os.kill(cluster.primary.pid, signal.SIGKILL)
            cluster.primary.wait()
            switched_at = time.monotonic()
            await wait_for(lambda: cluster.master_port() == cluster.replica_port, timeout=RESUME_WITHIN + 10,
                           interval=0.05, message="the sentinels to promote the replica")
            await until_writes_resumed(tally, switched_at)
            stop.set()
            await asyncio.gather(*writers)

        stored = set(replica.hkeys("syn:articles:by-uri"))
        lost = [uri for uri in tally.acknowledged if uri not in stored]
        during = [(status, uri) for sent_at, status, uri in tally.answers if lag_from + 0.05 <= sent_at < lag_to]
        acknowledged_during = [uri for status, uri in during if isinstance(status, int) and 200 <= status < 300]
        refused_during = [uri for status, uri in during if status == 503]
        figures = (f"lagging replica, then SIGKILL of the primary: {len(tally.acknowledged)} writes acknowledged, "
                   f"{len(lost)} lost, {tally.unavailable} answered 503 ({len(refused_during)} while the replica "
                   f"received nothing, {len([u for u in refused_during if u not in stored])} of them not on the "
                   f"new primary); run took {time.monotonic() - started:.0f} s")
        print("\n" + figures)
        replica.close()
        assert not lost, f"{len(lost)} acknowledged writes lost: {lost[:5]}"
        assert not tally.other, f"writes answered neither 2xx nor 503: {tally.other[:5]}"
        assert not acknowledged_during, f"acknowledged while no replica had them: {acknowledged_during[:5]}"
        assert refused_during and len(refused_during) == len(during), during
        assert any(uri not in stored for uri in refused_during), "the lag lost nothing: the test proves nothing"
        assert len(tally.acknowledged) > before  # writes resumed on the new primary
    finally:
        stop_servers([server])


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
