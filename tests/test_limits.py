"""Limits (docs/limits-and-security.md): the failed-key throttle shared by two app instances on one
Redis, the hub's limits under a burst, connection caps and read timeouts with real sockets, and the
embedded Redis's maxmemory."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import ADMIN, AUTH, app_server, make_partner, room_in_rate_window

from server.core.networks import address_bucket
from server.http.api.hub import HUB_LIMITS
from server.http.state import HUB_TASKS

GUESS = "syn_{:08x}_" + "x" * 43  # a key's form, a wrong secret


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
