"""Limits (docs/limits-and-security.md): the failed-key throttle shared by two app instances on one
Redis, the hub's limits under a burst, connection caps and read timeouts with real sockets, and the
embedded Redis's maxmemory."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os

import aiohttp
import pytest
import redis as redis_sync
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import ADMIN, AUTH, app_server, make_partner, room_in_rate_window

from server.core import keys
from server.core.networks import address_bucket
from server.http.api.hub import HUB_LIMITS
from server.http.state import EMBEDDED_REDIS, HUB_TASKS

GUESS = "syn_{:08x}_" + "x" * 43  # a key's form, a wrong secret
AUTH_LINE = f"Authorization: {AUTH['Authorization']}\r\n".encode()


def other_address() -> aiohttp.TCPConnector:
    """A connector whose connections come from 127.0.0.2: another client address on the loopback."""
    return aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))


async def settled() -> None:
    await asyncio.sleep(1.3)  # past a flush and a read-back (WATCH_SECONDS): every process knows the totals


def test_an_ipv6_address_is_counted_as_its_64():
    assert address_bucket("2001:db8:1:2:aaaa::1") == address_bucket("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_bucket("2001:db8:1:3::1") != address_bucket("2001:db8:1:2::1")
    assert address_bucket("::ffff:203.0.113.7") == address_bucket("203.0.113.7") == "203.0.113.7"
    assert address_bucket("fe80::1%eth0") == "fe80::/64"
    assert address_bucket("unknown") == "unknown"


# ----- the failed-key throttle, across two processes ----------------------------------------------


@pytest.fixture
async def two(aiohttp_client, settings):
    """Two app instances (two processes' worth of services) on one Redis."""
    return await aiohttp_client(app_server(settings)), await aiohttp_client(app_server(settings))


async def test_failed_keys_from_one_address_are_counted_by_every_process(two, settings, redis_url):
    a, b = two
    await room_in_rate_window()
    key = await make_partner(redis_url, "acme")
    limit = settings.failed_keys_per_address
    for n in range(limit):
        client = a if n % 2 else b
        assert (await client.get("/feeds/latest/atom", headers={"X-API-Key": GUESS.format(n)})).status == 401
    await settled()
    for client in (a, b):
        refused = await client.get("/feeds/latest/atom", headers={"X-API-Key": GUESS.format(999)})
        assert refused.status == 429 and refused.content_type == "application/problem+json"
        assert int(refused.headers["Retry-After"]) <= 60
        # A valid key from the throttled address is never refused.
        assert (await client.get("/feeds/latest/atom", headers={"X-API-Key": key})).status == 200
    # Another address is not throttled; nor are the bearer tokens of this one (a bad reader behind a
    # shared address does not lock out the CMS).
    async with aiohttp.ClientSession(connector=other_address()) as session:
        elsewhere = await session.get(a.make_url("/feeds/latest/atom"), headers={"X-API-Key": GUESS.format(1)})
        assert elsewhere.status == 401
    assert (await b.get("/api/articles", headers=AUTH)).status == 200


async def test_failed_attempts_at_one_key_id_are_counted_from_every_address(aiohttp_client, settings, redis_url):
    settings = dataclasses.replace(settings, failed_keys_per_key=6, failed_keys_per_address=1000)
    a, b = await aiohttp_client(app_server(settings)), await aiohttp_client(app_server(settings))
    await room_in_rate_window()
    key = await make_partner(redis_url, "acme")
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")  # the key's id, a wrong secret
    async with aiohttp.ClientSession(connector=other_address()) as elsewhere:
        for n in range(6):
            if n % 2:
                status = (await a.get("/feeds/latest/atom", headers={"X-API-Key": wrong})).status
            else:
                status = (await elsewhere.get(b.make_url("/feeds/latest/atom"), headers={"X-API-Key": wrong})).status
            assert status == 401
        await settled()
        assert (await a.get("/feeds/latest/atom", headers={"X-API-Key": wrong})).status == 429
        again = await elsewhere.get(b.make_url("/feeds/latest/atom"), headers={"X-API-Key": wrong})
        assert again.status == 429
        # Another key id from the same addresses is only 401; the key itself still works everywhere.
        assert (await a.get("/feeds/latest/atom", headers={"X-API-Key": GUESS.format(7)})).status == 401
        assert (await a.get("/feeds/latest/atom", headers={"X-API-Key": key})).status == 200
        ok = await elsewhere.get(b.make_url("/feeds/latest/atom"), headers={"X-API-Key": key})
        assert ok.status == 200


async def test_api_bearer_tokens_are_throttled_per_address_across_processes(two, settings):
    a, b = two
    await room_in_rate_window()
    limit = settings.failed_tokens_per_address
    for n in range(limit):
        client = a if n % 2 else b
        wrong = await client.get("/api/partners", headers={"Authorization": f"Bearer wrong-token-{n:04d}-abcdef"})
        assert wrong.status == 401 and wrong.content_type == "application/problem+json"
    await settled()
    for client in (a, b):
        # Tokens are secrets people choose: from a throttled address none is compared, the right one
        # included, until the minute turns (guessing gains nothing).
        refused = await client.get("/api/partners", headers=ADMIN)
        assert refused.status == 429 and refused.content_type == "application/problem+json"
        assert (await refused.json())["type"].endswith("/too-many-failures")
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert (await client.post("/api/articles", headers=AUTH, json={})).status == 429
    async with aiohttp.ClientSession(connector=other_address()) as session:
        assert (await session.get(a.make_url("/api/partners"), headers=ADMIN)).status == 200


# ----- the hub ---------------------------------------------------------------------------------------


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


class SlowSubscriber:
    """A WebSub subscriber that takes its time to answer a verification, counting how many are open."""

    def __init__(self, delay: float) -> None:
        self.delay, self.open, self.most, self.verified = delay, 0, 0, 0
        self.server: TestServer | None = None

    async def start(self) -> SlowSubscriber:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.verify)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def verify(self, request: web.Request) -> web.Response:
        self.open += 1
        self.most = max(self.most, self.open)
        try:
            await asyncio.sleep(self.delay)
            self.verified += 1
            return web.Response(text=request.query.get("hub.challenge", ""))
        finally:
            self.open -= 1

    def url(self, n: int) -> str:
        assert self.server is not None
        return str(self.server.make_url(f"/cb-{n}"))


async def burst(client, subscriber: SlowSubscriber, topic: str, count: int) -> list[aiohttp.ClientResponse]:
    connector = aiohttp.TCPConnector(limit=100)  # the client's own sockets: a hundred at a time
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(n: int) -> aiohttp.ClientResponse:
            form = {"hub.mode": "subscribe", "hub.callback": subscriber.url(n), "hub.topic": topic}
            async with session.post(client.make_url("/hub"), data=form) as response:
                await response.read()
                return response
        return await asyncio.gather(*(one(n) for n in range(count)))


async def test_a_burst_of_hub_requests_gets_429s_and_does_not_exhaust_descriptors(push, push_settings):
    subscriber = await SlowSubscriber(delay=0.5).start()
    await room_in_rate_window()
    before = open_descriptors()
    topic = push_settings.base_url + "/feeds/headlines/atom"
    answers = await burst(push, subscriber, topic, 1200)
    statuses = [r.status for r in answers]
    accepted = statuses.count(202)
    assert accepted == push_settings.hub_requests_per_address  # per address, before the body is read
    assert statuses.count(429) == 1200 - accepted
    assert all(r.headers["Retry-After"].isdigit() for r in answers if r.status == 429)
    assert subscriber.most <= push_settings.hub_max_verifications
    assert open_descriptors() - before < 200  # not one outbound connection per request
    await asyncio.wait_for(_idle(push), 30)
    await subscriber.server.close()


async def test_hub_verifications_at_once_are_bounded_and_the_rest_get_503(aiohttp_client, push_settings):
    settings = dataclasses.replace(push_settings, hub_requests_per_address=5000, hub_requests_per_topic=5000,
                                   hub_max_verifications=8)
    client = await aiohttp_client(app_server(settings))
    subscriber = await SlowSubscriber(delay=1.0).start()
    await room_in_rate_window()
    answers = await burst(client, subscriber, settings.base_url + "/feeds/headlines/atom", 300)
    statuses = [r.status for r in answers]
    assert statuses.count(202) >= 8 and statuses.count(503) >= 200
    assert set(statuses) <= {202, 503}
    assert all(r.headers["Retry-After"] == "5" for r in answers if r.status == 503)
    assert subscriber.most <= 8 and len(client.server.app[HUB_TASKS]) <= 8
    await asyncio.wait_for(_idle(client), 30)
    await subscriber.server.close()


async def test_hub_requests_per_topic_are_counted_by_every_process(aiohttp_client, push_settings):
    settings = dataclasses.replace(push_settings, hub_requests_per_topic=4)
    a, b = await aiohttp_client(app_server(settings)), await aiohttp_client(app_server(settings))
    await room_in_rate_window()
    topic = settings.base_url + "/feeds/headlines/atom"
    form = {"hub.mode": "subscribe", "hub.topic": topic}
    for n in range(4):
        client = a if n % 2 else b
        assert (await client.post("/hub", data={**form, "hub.callback": f"http://127.0.0.1:9/cb-{n}"})).status == 202
    await settled()
    for client in (a, b):
        refused = await client.post("/hub", data={**form, "hub.callback": "http://127.0.0.1:9/late"})
        assert refused.status == 429 and refused.headers["Retry-After"].isdigit()
    other = settings.base_url + "/feeds/headlines/rss"  # another topic is not limited by this one
    assert (await a.post("/hub", data={**form, "hub.topic": other, "hub.callback": "http://127.0.0.1:9/x"})).status == 202
    assert a.server.app[HUB_LIMITS].per_topic == 4
    await asyncio.wait_for(_idle(a), 30)
    await asyncio.wait_for(_idle(b), 30)


async def _idle(client) -> None:
    while client.server.app[HUB_TASKS]:
        await asyncio.sleep(0.05)


# ----- connections: caps and read timeouts, with real sockets -----------------------------------------


class Raw:
    """Plain sockets to a server started for the test (no HTTP client in between)."""

    def __init__(self, server: TestServer) -> None:
        self.host, self.port = "127.0.0.1", server.port

    async def open(self, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port, local_addr=(source, 0))

    async def ask(self, request: bytes, source: str = "127.0.0.1", timeout: float = 10) -> tuple[int, dict, bytes]:
        """Send a request that closes its connection; the status, headers and body of the answer."""
        reader, writer = await self.open(source)
        writer.write(request)
        try:
            return parse(await asyncio.wait_for(reader.read(), timeout))
        finally:
            writer.close()


def parse(answer: bytes) -> tuple[int, dict, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def trickle(writer: asyncio.StreamWriter, data: bytes) -> bool:
    """Send a little more; False once the server has closed the connection."""
    try:
        writer.write(data)
        await writer.drain()
    except ConnectionError:
        return False
    return not writer.transport.is_closing()


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()


@pytest.fixture
async def serve(settings):
    """Start the app (on the runner `syndicate serve` uses) with changed settings; stopped after the test."""
    started: list[TestServer] = []

    async def start(**changes) -> Raw:
        server = app_server(dataclasses.replace(settings, **changes))
        await server.start_server()
        started.append(server)
        return Raw(server)

    yield start
    for server in started:
        await server.close()


async def test_1100_half_open_connections_from_one_address_do_not_lock_out_another(serve):
    raw = await serve()  # the default caps: 256 connections per address
    held = []
    for _batch in range(11):
        opened = await asyncio.gather(*(raw.open() for _ in range(100)))
        for _reader, writer in opened:
            writer.write(b"GET /feeds/headlines/atom HTTP/1.1\r\nHost: test\r\n")  # never finished
        held += opened
    # Another address is served: a feed, and the health check.
    status, _headers, _body = await raw.ask(get("/feeds/headlines/atom"), source="127.0.0.2")
    assert status == 200
    assert (await raw.ask(get("/healthz"), source="127.0.0.2"))[0] == 200
    # The address past its cap: its health check is still answered, anything else is 429.
    assert (await raw.ask(get("/healthz")))[0] == 200
    status, headers, body = await raw.ask(get("/feeds/headlines/atom"))
    assert status == 429 and headers["content-type"] == "application/problem+json"
    assert headers["retry-after"] == "1" and headers["connection"] == "close"
    assert b"too-many-connections" in body
    # A refused connection that never finishes its head is answered the same, and closed.
    status, _headers, _body = parse(await asyncio.wait_for(held[-1][0].read(), 10))
    assert status == 429
    for _reader, writer in held:
        writer.close()


async def test_past_the_process_cap_a_request_gets_503_but_the_health_check_is_answered(serve):
    raw = await serve(max_connections=5)
    held = [await raw.open(source=f"127.0.0.{n}") for n in range(10, 15)]  # five idle connections
    status, headers, body = await raw.ask(get("/feeds/headlines/atom"), source="127.0.0.2")
    assert status == 503 and headers["content-type"] == "application/problem+json" and b"server-busy" in body
    assert headers["retry-after"] == "1"
    assert (await raw.ask(get("/healthz"), source="127.0.0.3"))[0] == 200
    for _reader, writer in held:
        writer.close()
    await asyncio.sleep(0.2)
    assert (await raw.ask(get("/feeds/headlines/atom"), source="127.0.0.2"))[0] == 200


async def test_trickled_headers_are_cut_off_after_the_header_timeout(serve):
    raw = await serve(header_timeout_seconds=1.0)
    reader, writer = await raw.open()
    started = asyncio.get_running_loop().time()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
    answer = asyncio.create_task(reader.read(65536))
    for n in range(20):  # a header line every 0.2 s: the head would take 4 s
        await asyncio.sleep(0.2)
        if answer.done() or not await trickle(writer, f"X-Slow-{n}: 1\r\n".encode()):
            break
    status, headers, body = parse(await asyncio.wait_for(answer, 5))
    assert status == 408 and headers["content-type"] == "application/problem+json" and b"request-timeout" in body
    assert asyncio.get_running_loop().time() - started < 2.5
    writer.close()
    # A connection that sends nothing at all is cut off too.
    reader, writer = await raw.open()
    assert parse(await asyncio.wait_for(reader.read(), 5))[0] == 408
    writer.close()


async def test_a_trickled_body_is_cut_off_after_the_body_timeout(serve):
    raw = await serve(body_timeout_seconds=1.0)
    reader, writer = await raw.open()
    started = asyncio.get_running_loop().time()
    writer.write(b"POST /api/articles HTTP/1.1\r\nHost: test\r\n" + AUTH_LINE +
                 b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{")
    answer = asyncio.create_task(reader.read(65536))
    for _ in range(30):  # a byte every 0.1 s: the body would take minutes
        await asyncio.sleep(0.1)
        if answer.done() or not await trickle(writer, b" "):
            break
    status, headers, body = parse(await asyncio.wait_for(answer, 5))
    assert status == 408 and headers["content-type"] == "application/problem+json"
    assert b"did not arrive within 1 s" in body
    assert asyncio.get_running_loop().time() - started < 3
    writer.close()


async def test_an_unreadable_request_is_a_400_problem_and_logs_no_traceback(serve, caplog):
    raw = await serve()
    with caplog.at_level(logging.DEBUG):
        for request in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header Name: x\r\n\r\n",
                        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: test\r\n\r\n",
                        b"GET / HTTP/1.1\r\nHost: test\r\nContent-Length: -5\r\n\r\n"):
            status, headers, body = await raw.ask(request)
            assert status == 400 and headers["content-type"] == "application/problem+json", request[:40]
            assert b'"status":400' in body and b"could not be read as HTTP/1.1" in body
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in caplog.records if r.exc_info]


# ----- Redis memory: only caches may be evicted ----------------------------------------------------


async def test_durable_keys_have_no_ttl_and_expiring_ones_always_have_one(client, settings, sync_redis, seed_v1):
    """The rule maxmemory-policy volatile-lru relies on (server.core.keys.expires), over a workload that
    writes every kind of key: ingest, partners, polls and renders, rate and failure counters, the hub."""
    assert (await client.post("/api/articles", json=seed_v1, headers=AUTH)).status == 201
    key = await make_partner(settings.redis_address.url, "acme")
    await settled()  # the app hears of the new partner
    for path in ("/feeds/latest/atom", "/feeds/latest/rss", "/feeds/latest/json", "/feeds/latest/newsml"):
        assert (await client.get(path, headers={"X-API-Key": key})).status == 200
    assert (await client.get("/feeds/latest/atom", headers={"X-API-Key": GUESS.format(1)})).status == 401
    assert (await client.get("/api/partners", headers={"Authorization": "Bearer wrong-token-0123456789"})).status == 401
    form = {"hub.mode": "subscribe", "hub.topic": settings.base_url + "/feeds/headlines/atom",
            "hub.callback": "http://127.0.0.1:9/cb"}
    assert (await client.post("/hub", data=form)).status in (202, 400)
    await settled()
    found = {k: sync_redis.ttl(k) for k in sync_redis.scan_iter("*")}
    kinds = {k.split(":")[1] for k in found}
    assert {"article", "cache", "ratelimit", "limit", "partner", "changelog"} <= kinds
    wrong = {k: ttl for k, ttl in found.items() if (ttl > 0) != keys.expires(k)}
    assert not wrong, f"keys whose TTL breaks the rule: {wrong}"


async def test_past_maxmemory_caches_are_evicted_and_articles_are_still_stored(aiohttp_client, settings, tmp_path,
                                                                            seed_v1):
    settings = dataclasses.replace(settings, redis_address=None, data_dir=tmp_path / "embedded",
                                   redis_maxmemory_mb=8)
    client = await aiohttp_client(app_server(settings))
    embedded = client.server.app[EMBEDDED_REDIS]
    assert embedded is not None
    with redis_sync.Redis.from_url(embedded.url) as redis:
        assert int(redis.config_get("maxmemory")["maxmemory"]) == 8 * 1024 * 1024
        assert redis.config_get("maxmemory-policy")["maxmemory-policy"] == "volatile-lru"
        # 20 MB of rendered feeds (cache keys, with their TTL): more than maxmemory.
        blob = os.urandom(64 * 1024)
        for n in range(320):
            redis.set(keys.rendered_feed("latest", "atom", "head", n, "full", "e"), blob, ex=3600)
        stored = []
        for n in range(30):
            document = {**seed_v1, "uri": f"{seed_v1['uri']}-{n}"}
            response = await client.post("/api/articles", json=document, headers=AUTH)
            assert response.status == 201, await response.text()
            stored.append((await response.json())["id"])
            redis.set(keys.rendered_feed("latest", "atom", "head", 1000 + n, "full", "e"), blob, ex=3600)
        assert int(redis.info("stats")["evicted_keys"]) > 0
        assert len(list(redis.scan_iter("syn:cache:*"))) < 350
        assert all(redis.exists(keys.article(article_id)) for article_id in stored)
        assert all(redis.ttl(keys.article(article_id)) == -1 for article_id in stored)
    assert (await client.get("/api/articles", headers=AUTH)).status == 200


def test_a_trusted_balancer_is_held_only_to_the_process_cap():
    """Every client behind a balancer comes on its connections: the per-address cap would lock them all
    out, so a peer in SYNDICATE_TRUSTED_PROXIES is only held to the process cap."""
    from server.core.forwarding import TrustedProxies
    from server.core.networks import parse_networks
    from server.http.connections import Admission, ConnectionGate, ConnectionLimits

    gate = ConnectionGate(ConnectionLimits(max_connections=10, max_per_address=3,
                                           trusted_proxies=TrustedProxies(parse_networks("10.0.0.0/8"))))
    assert [gate.admit("10.0.0.5") for _ in range(10)] == [Admission.ADMITTED] * 10
    assert gate.admit("10.0.0.5") is Admission.OVER_PROCESS
    other = ConnectionGate(ConnectionLimits(max_connections=10, max_per_address=3))
    assert [other.admit("192.0.2.1") for _ in range(4)][-1] is Admission.OVER_ADDRESS
