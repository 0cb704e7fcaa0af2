"""Redis faults on the request path: a paused (or gone) Redis is a 503 problem with Retry-After, soon,
never a 500; cached pages are still served from memory; requests work again once Redis is back."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import orjson
import redis as redis_sync
from conftest import AUTH, make_partner, start_redis

from server.core.redis_address import DirectRedis
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
