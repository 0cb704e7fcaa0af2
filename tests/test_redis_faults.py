"""Redis faults on the request path: a paused, stopped or read-only Redis is a 503 problem with
Retry-After within ``SYNDICATE_REDIS_TIMEOUT_MS`` (plus slack), never a 500; cached pages are still
served from memory; requests work again by themselves once Redis is back, the very first one included
after a restart or ``CLIENT KILL`` (stale pooled connections are retried once); a store that came back
empty or older is noticed and forgotten. The stopped, read-only and restart cases run a real
``syndicate serve`` (uvloop, as deployed) on a Redis of the test's own."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path

import http_helpers as http
import orjson
import pytest
import redis as redis_sync
from conftest import (
    ADMIN,
    ADMIN_TOKEN,
    AUTH,
    PUBLISHER_TOKEN,
    ROOT,
    SEED_V1,
    cli_env,
    free_port,
    make_partner,
    start_redis,
    stop_processes,
)

from server.core import keys
from server.core.redis_address import DirectRedis
from server.domain.articles import article_id_for_uri
from server.http.app import create_app

JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}


async def test_a_paused_redis_is_a_503_with_retry_after_and_cached_polls_still_answer(aiohttp_client, settings,
                                                                                      tmp_path, seed_v1):
    assert settings.redis_timeout_seconds == 1.0  # SYNDICATE_REDIS_TIMEOUT_MS's default, which the bound below assumes
    process, port = start_redis(tmp_path / "redis")
    try:
        url = f"redis://127.0.0.1:{port}/0"
        client = await aiohttp_client(create_app(dataclasses.replace(settings, redis_address=DirectRedis(url))))
        key = await make_partner(url)
        await asyncio.sleep(1.2)  # the new partner reaches the key table (pub/sub, or the 1 s resync)
        assert (await client.post("/api/articles", data=orjson.dumps(seed_v1), headers=JSON_HEADERS)).status == 201
        assert (await client.get("/feeds/latest/atom", headers={"X-API-Key": key})).status == 200  # now cached

        admin = redis_sync.Redis(port=port)
        admin.execute_command("CLIENT", "PAUSE", "6000", "ALL")
        try:
            asked = time.monotonic()
            refused = await client.post("/api/articles", data=orjson.dumps({**seed_v1, "uri": seed_v1["uri"] + "-2"}),
                                        headers=JSON_HEADERS)
            waited = time.monotonic() - asked
            assert refused.status == 503, await refused.text()
            # Within SYNDICATE_REDIS_TIMEOUT_MS (1 s here) and generous slack: not the pause's 6 s, not forever.
            assert waited < 3.0, f"the 503 took {waited:.1f} s"
            assert refused.content_type == "application/problem+json"
            assert refused.headers["Retry-After"] == "1"
            assert (await refused.json())["type"].endswith("/storage-unavailable")
            asked = time.monotonic()
            cached = await client.get("/feeds/latest/atom", headers={"X-API-Key": key})
            assert cached.status == 200  # from this process's memory: no Redis needed
            assert time.monotonic() - asked < 1.0  # and without waiting for Redis
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        again = await client.post("/api/articles", data=orjson.dumps({**seed_v1, "uri": seed_v1["uri"] + "-2"}),
                                  headers=JSON_HEADERS)
        assert again.status == 201, await again.text()
        admin.close()
    finally:
        process.terminate()
        process.wait(10)


async def test_a_store_that_came_back_empty_is_noticed_and_nothing_from_before_is_served(aiohttp_client, settings,
                                                                                         redis_url, sync_redis,
                                                                                         seed_v1):
    from push_helpers import wait_for

    client = await aiohttp_client(create_app(settings))
    key = await make_partner(redis_url)
    await asyncio.sleep(1.2)  # the partner reaches the key table
    assert (await client.post("/api/articles", data=orjson.dumps(seed_v1), headers=JSON_HEADERS)).status == 201
    before = await client.get("/feeds/latest/json", headers={"X-API-Key": key})
    assert before.status == 200 and len((await before.json())["items"]) == 1  # rendered and in memory

    sync_redis.flushall()  # Redis came back empty

    async def key_refused() -> bool:
        return (await client.get("/feeds/latest/json", headers={"X-API-Key": key})).status == 401

    await wait_for(key_refused, timeout=10, message="the key of a partner that no longer exists to be refused")
    other = await make_partner(redis_url, "after")
    await wait_for(lambda: _accepted(client, other), timeout=10, message="the new partner's key")
    page = await (await client.get("/feeds/latest/json", headers={"X-API-Key": other})).json()
    assert page["items"] == []  # not the page rendered before the wipe
    fresh = {**seed_v1, "uri": seed_v1["uri"] + "-after"}
    assert (await client.post("/api/articles", data=orjson.dumps(fresh), headers=JSON_HEADERS)).status == 201
    page = await (await client.get("/feeds/latest/json", headers={"X-API-Key": other})).json()
    assert [item["id"] for item in page["items"]] == [fresh["uri"]]


async def _accepted(client, key: str) -> bool:
    return (await client.get("/feeds/latest/json", headers={"X-API-Key": key})).status == 200


async def _feed(client, key: str) -> list[tuple[str, int]] | None:
    """(uri, version) of every item of ``latest`` as the partner reads it, or None when refused."""
    answer = await client.get("/feeds/latest/json", headers={"X-API-Key": key})
    if answer.status != 200:
        return None
    return [(item["id"], item["_syndicate"]["version"]) for item in (await answer.json())["items"]]


@pytest.mark.parametrize("copy_epoch", ["same", "other"])
async def test_a_store_restored_from_an_older_copy_is_noticed_by_every_process(aiohttp_client, settings, redis_url,
                                                                              seed_v1, seed_v2, copy_epoch):
    """An older copy of the store put back under two running processes: with the epoch it had (only
    the change log's sequence went backwards) or another one. Each process forgets its rendered pages,
    feed generations and key table, and serves what the copy holds, then what is written after it."""
    from push_helpers import wait_for

    processes = [await aiohttp_client(create_app(settings)), await aiohttp_client(create_app(settings))]
    raw = redis_sync.Redis.from_url(redis_url)
    try:
        old_key = await make_partner(redis_url, "before")
        for process in processes:
            await wait_for(lambda p=process: _accepted(p, old_key), timeout=10, message="the first partner's key")
        assert (await processes[0].post("/api/articles", data=orjson.dumps(seed_v1), headers=JSON_HEADERS)).status == 201
        first = [(seed_v1["uri"], 1)]
        for process in processes:
            await wait_for(lambda p=process: _feed_is(p, old_key, first), timeout=10, message="the first article")

        epoch_of_the_copy = raw.get(keys.store_epoch())
        copy = {key: (max(raw.pttl(key), 0), raw.dump(key)) for key in raw.keys("*")
                if not key.startswith(b"syn:lock:")}

        # The store moves on: a second partner, a second story, a correction; every process serves them.
        new_key = await make_partner(redis_url, "after")
        later = {**seed_v1, "uri": seed_v1["uri"] + "-later"}
        assert (await processes[0].post("/api/articles", data=orjson.dumps(later), headers=JSON_HEADERS)).status == 201
        assert (await processes[0].post("/api/articles?signal=correction", data=orjson.dumps(seed_v2),
                                        headers=JSON_HEADERS)).status == 200
        moved_on = [(seed_v1["uri"], 2), (later["uri"], 1)]
        for process in processes:
            await wait_for(lambda p=process: _accepted(p, new_key), timeout=10, message="the second partner's key")
            await wait_for(lambda p=process: _feed_is(p, old_key, moved_on), timeout=10, message="the later changes")

        # The older copy replaces the store at once (one transaction: no process sees it empty).
        with raw.pipeline(transaction=True) as pipe:
            pipe.flushall()
            for key, (ttl, value) in copy.items():
                pipe.restore(key, ttl, value)
            if copy_epoch == "other":
                pipe.set(keys.store_epoch(), "a-copy-of-another-store")
            pipe.execute()

        for process in processes:
            await wait_for(lambda p=process: _refused(p, new_key), timeout=10,
                           message="the key of a partner the copy does not hold to be refused")
            # Not the pages rendered before, nor what the generations counted since the copy.
            await wait_for(lambda p=process: _feed_is(p, old_key, first), timeout=10, message="the copy's feed")
        assert raw.get(keys.store_epoch()) != epoch_of_the_copy  # a new epoch, or the other store's
        # A write after the restore reaches every process (its generations are the copy's, not the old higher ones).
        fresh = {**seed_v1, "uri": seed_v1["uri"] + "-after-the-restore"}
        assert (await processes[0].post("/api/articles", data=orjson.dumps(fresh), headers=JSON_HEADERS)).status == 201
        for process in processes:
            await wait_for(lambda p=process: _feed_is(p, old_key, [(fresh["uri"], 1), *first]), timeout=10,
                           message="the write made after the restore")
        assert [g["name"] for g in raw.xinfo_groups(keys.changelog())] == [keys.DISPATCH_GROUP.encode()]
    finally:
        raw.close()


async def test_after_a_wipe_the_push_group_is_made_again_and_ready_means_pushes_are_delivered(
        aiohttp_client, push_settings, sync_redis, receivers, seed_v1):
    """FLUSHALL under a running process: the dispatcher's read fails (NOGROUP) and /readyz says so until
    the epoch watch has made the change log's consumer group again; then a partner, its webhook and a
    story made after the wipe are dispatched and delivered."""
    from push_helpers import wait_for

    client = await aiohttp_client(create_app(dataclasses.replace(push_settings, heartbeat_seconds=0.2)))
    assert (await client.get("/readyz")).status == 200

    sync_redis.flushall()
    answers: list[tuple[bool, int, dict]] = []  # (the group existed before the request, status, checks)

    async def readiness() -> tuple[int, dict]:
        existed = _dispatch_group_exists(sync_redis)
        response = await client.get("/readyz")
        checks = (await response.json())["checks"]
        answers.append((existed, response.status, checks))
        return response.status, checks

    async def dispatch_failing() -> bool:
        status, checks = await readiness()
        return status == 503 and checks.get("pushDispatch", "").startswith("failed")

    await wait_for(dispatch_failing, timeout=10, message="/readyz to say the dispatcher cannot read the change log")
    # Made at once after the wipe, possibly before the group is made again: it must be fanned out all the same.
    response = await client.post("/api/partners", data=orjson.dumps({"name": "acme", "feeds": ["*"], "formats": ["*"]}),
                                 headers={**ADMIN, "Content-Type": "application/json"})
    assert response.status == 201, await response.text()
    receiver = await receivers()
    response = await client.post("/api/partners/acme/endpoints", data=orjson.dumps(
        {"url": receiver.url(), "format": "ninjs", "secret": "a-webhook-secret-0123456789"}),
        headers={**ADMIN, "Content-Type": "application/json"})
    assert response.status == 201, await response.text()
    assert (await client.post("/api/articles", data=orjson.dumps(seed_v1), headers=JSON_HEADERS)).status == 201

    async def ready() -> bool:
        return (await readiness())[0] == 200

    await wait_for(ready, timeout=20, message="/readyz to be ready again")
    assert all(existed for existed, status, _checks in answers if status == 200), answers  # never ready without it
    await wait_for(lambda: receiver.delivered, timeout=20, message="the story pushed after the wipe")
    assert [orjson.loads(post.body)["uri"] for post in receiver.delivered] == [seed_v1["uri"]]
    assert _dispatch_group_exists(sync_redis)


def _dispatch_group_exists(redis) -> bool:
    try:
        return any(group["name"] == keys.DISPATCH_GROUP for group in redis.xinfo_groups(keys.changelog()))
    except redis_sync.ResponseError:  # no change log at all
        return False


async def _feed_is(client, key: str, expected: list[tuple[str, int]]) -> bool:
    return await _feed(client, key) == expected


async def _refused(client, key: str) -> bool:
    return (await client.get("/feeds/latest/json", headers={"X-API-Key": key})).status == 401


def test_a_transport_error_from_inside_the_redis_client_is_a_storage_fault():
    """uvloop raises RuntimeError("... the handler is closed") when a connection drops mid-write; redis-py
    lets it through unwrapped. It is a 503 like any Redis fault, not a 500."""
    import redis.asyncio.connection as redis_connection

    from server.http.problems import _raised_talking_to_redis

    def inside_redis():
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")

    namespace = {"__name__": redis_connection.__name__, "inside_redis": inside_redis}
    exec("def call():\n    inside_redis()\n", namespace)  # a frame whose module is the Redis client's
    try:
        namespace["call"]()
    except RuntimeError as exc:
        assert _raised_talking_to_redis(exc)
    try:
        raise RuntimeError("a bug of ours")
    except RuntimeError as exc:
        assert not _raised_talking_to_redis(exc)


# ----- a real `syndicate serve` (uvloop, as deployed) on a Redis of the test's own --------------------

SERVE_HEADERS = {**JSON_HEADERS}
ADMIN_JSON = {**ADMIN, "Content-Type": "application/json"}


def serve(redis_port: int, tmp_path: Path, **env: str) -> tuple[subprocess.Popen, int]:
    """``syndicate serve`` on ``REDIS_URL`` = the test's Redis, ready; its log in ``tmp_path/serve.log``."""
    port = free_port()
    environment = cli_env(REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", SYNDICATE_DATA_DIR=str(tmp_path / "var"),
                          SYNDICATE_PORT=str(port), SYNDICATE_PUBLISHER_TOKENS=f"newsroom:{PUBLISHER_TOKEN}",
                          SYNDICATE_ADMIN_TOKEN=ADMIN_TOKEN, SYNDICATE_REDIS_TIMEOUT_MS="1000", **env)
    log = open(tmp_path / "serve.log", "ab")  # noqa: SIM115 (kept open for the process)
    process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], cwd=ROOT, env=environment,
                               stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 60
    while http.get(port, "/readyz")[0] != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            stop_processes([process])
            raise AssertionError("the server did not become ready:\n" + (tmp_path / "serve.log").read_text()[-3000:])
        time.sleep(0.05)
    return process, port


def eventually(predicate, timeout: float = 30.0, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(0.05)


def new_partner(port: int, name: str = "reader") -> str:
    status, body = http.request(port, "POST", "/api/partners",
                                orjson.dumps({"name": name, "feeds": ["*"], "formats": ["*"]}), ADMIN_JSON)
    assert status == 201, body
    return str(orjson.loads(body)["key"])


def timed(port: int, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes, float]:
    """One request on a new connection: status, headers (lower-case names), body, seconds taken."""
    connection = HTTPConnection("127.0.0.1", port, timeout=30)
    asked = time.monotonic()
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        answer = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, answer, time.monotonic() - asked
    finally:
        connection.close()


def assert_storage_unavailable(answer: tuple[int, dict[str, str], bytes, float], what: str) -> None:
    """A 503 problem+json ``storage-unavailable`` with ``Retry-After: 1``, within the 1 s timeout and slack."""
    status, headers, body, took = answer
    assert status == 503, f"{what}: {status} {body[:300]!r}"
    assert headers["content-type"].startswith("application/problem+json"), what
    assert headers.get("retry-after") == "1", what
    assert orjson.loads(body)["type"].endswith("/storage-unavailable"), what
    assert took < 3.0, f"{what}: the 503 took {took:.1f} s"


@dataclasses.dataclass
class OwnRedis:
    """A test redis-server of its own and a ``syndicate serve`` on it, with a partner, for the tests
    that stop the Redis under the server and start it again on the same port and data."""

    directory: Path
    started: list[subprocess.Popen]  # the server, then the current redis-server
    redis_port: int
    port: int = 0
    key: str = ""

    @property
    def server(self) -> subprocess.Popen:
        return self.started[0]

    def stop_redis(self) -> None:
        self.started[-1].terminate()
        self.started[-1].wait(10)

    def start_redis_again(self) -> None:
        self.started[-1], _port = start_redis(self.directory, port=self.redis_port)


@contextlib.contextmanager
def own_redis_and_server(tmp_path: Path) -> Iterator[OwnRedis]:
    redis, redis_port = start_redis(tmp_path / "redis")
    served = OwnRedis(tmp_path / "redis", [redis], redis_port)
    try:
        server, served.port = serve(redis_port, tmp_path)
        served.started.insert(0, server)
        served.key = new_partner(served.port)
        yield served
    finally:
        stop_processes(served.started)


def test_a_stopped_redis_is_a_503_on_writes_and_reads_and_the_server_recovers_by_itself(tmp_path, seed_v2):
    with own_redis_and_server(tmp_path) as served:
        port, key = served.port, served.key
        assert http.request(port, "POST", "/api/articles", SEED_V1.read_bytes(), SERVE_HEADERS)[0] == 201
        article = article_id_for_uri(orjson.loads(SEED_V1.read_bytes())["uri"])
        feed = {"X-API-Key": key}
        assert eventually(lambda: http.get(port, "/feeds/latest/json", feed)[0] == 200, 10, "the partner's key")

        served.stop_redis()  # stopped: every connection is refused from now on
        assert_storage_unavailable(timed(port, "POST", "/api/articles", orjson.dumps(seed_v2), SERVE_HEADERS),
                                   "a write")
        assert_storage_unavailable(timed(port, "POST", "/api/partners", orjson.dumps(
            {"name": "other", "feeds": ["*"], "formats": ["*"]}), ADMIN_JSON), "a partner write")
        assert_storage_unavailable(timed(port, "GET", f"/api/articles/{article}", None, AUTH), "a read")
        assert_storage_unavailable(timed(port, "GET", "/feeds/latest/json?since=0", None, feed), "an uncached poll")
        status, _headers, _body, took = timed(port, "GET", "/feeds/latest/json", None, feed)
        assert status == 200 and took < 1.0  # the cached page, from memory
        assert http.get(port, "/readyz")[0] == 503
        assert http.get(port, "/healthz")[0] == 200  # alive: an external Redis is not this process's to restart

        served.start_redis_again()  # back, on the same port and data
        assert eventually(lambda: http.get(port, "/readyz")[0] == 200, 30, "ready again")
        assert http.request(port, "POST", "/api/articles?signal=correction", orjson.dumps(seed_v2),
                            SERVE_HEADERS)[0] == 200
        assert http.get(port, f"/api/articles/{article}", AUTH)[0] == 200
        assert served.server.poll() is None
        assert "unhandled error" not in (tmp_path / "serve.log").read_text()


def test_a_read_only_redis_is_a_503_on_writes_never_a_500_and_the_server_recovers_by_itself(tmp_path, seed_v2):
    """The store Redis turned into a replica (``REPLICAOF`` a copy of itself, so the data stays as it
    was): every write meets ``READONLY``."""
    primary, primary_port = start_redis(tmp_path / "primary")
    started = [primary]
    try:
        server, port = serve(primary_port, tmp_path)
        started.insert(0, server)
        key = new_partner(port)
        feed = {"X-API-Key": key}
        assert http.request(port, "POST", "/api/articles", SEED_V1.read_bytes(), SERVE_HEADERS)[0] == 201
        article = article_id_for_uri(orjson.loads(SEED_V1.read_bytes())["uri"])
        assert eventually(lambda: http.get(port, "/feeds/latest/json", feed)[0] == 200, 10, "the partner's key")

        # A copy of the store (a replica, then promoted), and the store made its replica.
        copy, copy_port = start_redis(tmp_path / "copy")
        started.append(copy)
        store, other = redis_sync.Redis(port=primary_port), redis_sync.Redis(port=copy_port)
        other.replicaof("127.0.0.1", primary_port)
        eventually(lambda: other.info("replication").get("master_link_status") == "up"
                   and other.dbsize() >= store.dbsize() - 5, 30, "the copy to sync")
        other.replicaof("NO", "ONE")
        store.replicaof("127.0.0.1", copy_port)
        eventually(lambda: store.info("replication").get("master_link_status") == "up", 30, "the store to follow the copy")
        with pytest.raises(redis_sync.ReadOnlyError):
            store.set("probe", "1")

        assert_storage_unavailable(timed(port, "POST", "/api/articles", orjson.dumps(seed_v2), SERVE_HEADERS),
                                   "a write")
        assert_storage_unavailable(timed(port, "POST", "/api/partners", orjson.dumps(
            {"name": "other", "feeds": ["*"], "formats": ["*"]}), ADMIN_JSON), "a partner write")
        # Reads are answered from the replica's data, or refused like a write when they write (a render's
        # lock in the cache): never a 500.
        for path, headers in ((f"/api/articles/{article}", AUTH), ("/feeds/latest/json?since=0", feed),
                              ("/feeds/latest/atom", feed), ("/feeds/latest/json", feed)):
            answer = timed(port, "GET", path, None, headers)
            if answer[0] != 200:
                assert_storage_unavailable(answer, f"GET {path}")
        assert timed(port, "GET", f"/api/articles/{article}", None, AUTH)[0] == 200

        store.replicaof("NO", "ONE")  # writable again
        assert eventually(lambda: http.request(port, "POST", "/api/articles?signal=correction", orjson.dumps(seed_v2),
                                               SERVE_HEADERS)[0] == 200, 30, "writes to work again")
        assert eventually(lambda: http.get(port, "/readyz")[0] == 200, 30, "ready again")
        assert server.poll() is None
        assert "unhandled error" not in (tmp_path / "serve.log").read_text()
        store.close()
        other.close()
    finally:
        stop_processes(started)


def test_the_first_request_after_a_redis_restart_or_a_client_kill_succeeds(tmp_path, seed_v2):
    """Every pooled connection made stale at once (``CLIENT KILL TYPE normal``, or the Redis stopped and
    started again on the same port and data): the very next request, with no retry by the client, is a
    2xx (the server's Redis client retries a connection the server closed, once)."""
    with own_redis_and_server(tmp_path) as served:
        port, key = served.port, served.key
        feed = {"X-API-Key": key}
        article = article_id_for_uri(orjson.loads(SEED_V1.read_bytes())["uri"])
        assert eventually(lambda: http.get(port, "/feeds/latest/json", feed)[0] == 200, 10, "the partner's key")
        with ThreadPoolExecutor(16) as pool:  # several connections in the pools
            assert set(pool.map(lambda _: http.get(port, "/api/articles", AUTH)[0], range(64))) == {200}
        admin = redis_sync.Redis(port=served.redis_port)

        def kill_every_client() -> None:
            assert admin.client_kill_filter(_type="normal", skipme=True) >= 1

        kill_every_client()
        assert http.request(port, "POST", "/api/articles", SEED_V1.read_bytes(), SERVE_HEADERS)[0] == 201
        kill_every_client()
        assert http.get(port, f"/api/articles/{article}", AUTH)[0] == 200
        kill_every_client()
        assert http.get(port, "/feeds/latest/json?since=0", feed)[0] == 200  # a page not rendered yet
        admin.close()

        for request in (lambda: http.request(port, "POST", "/api/articles?signal=correction", orjson.dumps(seed_v2),
                                             SERVE_HEADERS)[0] == 200,
                        lambda: http.get(port, f"/api/articles/{article}/versions", AUTH)[0] == 200,
                        lambda: http.get(port, "/feeds/latest/atom?since=0", feed)[0] == 200):
            served.stop_redis()
            served.start_redis_again()  # the same port and data
            assert request()
        status, body = http.get(port, f"/api/articles/{article}/versions", AUTH)
        assert status == 200 and [v["version"] for v in orjson.loads(body)["versions"]] == [1, 2]
