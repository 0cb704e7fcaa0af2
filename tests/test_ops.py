"""The ops views: /api/status, /api/propagation, /api/deliveries and retry, and the CLI's status."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import replace

import orjson
from aiohttp import web
from conftest import ADMIN, AUTH, cli_env, free_port, run_cli

from server.domain.articles import article_id_for_uri
from server.http.app import create_app

JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
ADMIN_JSON = {**ADMIN, "Content-Type": "application/json"}


async def publish(client, doc, query=""):
    response = await client.post(f"/api/articles{query}", data=orjson.dumps(doc), headers=JSON_HEADERS)
    assert response.status in (200, 201), await response.text()


async def make_partner(client, name, **body):
    response = await client.post("/api/partners", data=orjson.dumps({"name": name, **body}), headers=ADMIN_JSON)
    assert response.status == 201
    return (await response.json())["key"]


async def wait_for(predicate, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_correction_outstanding_then_received_by_poll(client, seed_v1, seed_v2):
    await publish(client, seed_v1)
    key = await make_partner(client, "poller", feeds=["latest"], formats=["atom"])
    assert (await client.get("/feeds/latest/atom", headers={"X-API-Key": key})).status == 200
    await publish(client, seed_v2, "?signal=correction")

    flow = await (await client.get("/api/propagation", headers=ADMIN)).json()
    [item] = flow["items"]
    assert item["kind"] == "correction" and item["version"] == 2 and item["id"] == article_id_for_uri(seed_v1["uri"])
    assert [(p["partner"], p["received"]) for p in item["partners"]] == [("poller", False)]
    assert item["partners"][0]["outstandingSeconds"] >= 0 and flow["outstanding"] == 1
    status = await (await client.get("/api/status", headers=ADMIN)).json()
    [row] = status["partners"]
    assert row["partner"] == "poller" and row["lag"]["revisions"] == 1 and row["outstanding"] == 1
    assert row["state"] in ("healthy", "behind") and row["lastPoll"]

    assert (await client.get("/feeds/latest/atom", headers={"X-API-Key": key})).status == 200
    flow = await (await client.get("/api/propagation", headers=ADMIN)).json()
    assert flow["items"][0]["partners"][0]["received"] is True and flow["outstanding"] == 0
    status = await (await client.get("/api/status", headers=ADMIN)).json()
    assert status["partners"][0]["lag"] == {"revisions": 0, "seconds": 0}
    assert (await client.get("/api/propagation?from=2100-01-01T00:00:00Z", headers=ADMIN)).status == 200
    assert (await client.get("/api/propagation?from=yesterday", headers=ADMIN)).status == 400
    assert (await client.get("/api/status", headers=AUTH)).status == 403
    assert (await client.get("/api/status")).status == 401


async def test_push_failure_shows_then_retry_delivers(aiohttp_client, settings, seed_v1, seed_v2):
    settings = replace(settings, push_allow_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    client = await aiohttp_client(create_app(settings))
    received: list[bytes] = []
    answer = {"status": 400}

    async def endpoint(request: web.Request) -> web.Response:
        body = await request.read()
        if answer["status"] == 200:
            received.append(body)
        return web.Response(status=answer["status"])

    receiver = web.Application()
    receiver.router.add_post("/hook", endpoint)
    runner = web.AppRunner(receiver)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await make_partner(client, "pushed", feeds=["latest"], formats=["atom", "json"])
        created = await client.post("/api/partners/pushed/endpoints", headers=ADMIN_JSON, data=orjson.dumps(
            {"url": f"http://127.0.0.1:{port}/hook", "format": "ninjs", "secret": "s" * 20}))
        assert created.status == 201
        await publish(client, seed_v1)

        async def gave_up():
            result = await (await client.get("/api/deliveries?status=failed", headers=ADMIN)).json()
            return bool(result["failed"])

        assert await wait_for(gave_up)  # a 400 is not retried: given up at once
        failed = (await (await client.get("/api/deliveries?status=failed&partner=pushed", headers=ADMIN)).json())
        [failure] = failed["failed"]
        assert failure["lastStatus"] == 400 and failure["partner"] == "pushed"
        assert failed["attempts"][0]["ok"] is False and failed["attempts"][0]["status"] == 400
        status = await (await client.get("/api/status", headers=ADMIN)).json()
        assert status["partners"][0]["state"] == "failing" and status["queue"]["failed"] == 1
        assert status["partners"][0]["failingEndpoints"] == [failure["destination"]]

        await publish(client, seed_v2, "?signal=correction")  # also fails (400), the correction is outstanding
        assert await wait_for(gave_up)
        answer["status"] = 200
        failed = (await (await client.get("/api/deliveries?status=failed", headers=ADMIN)).json())["failed"]
        retried = await client.post(f"/api/deliveries/{failed[0]['delivery']}/retry", headers=ADMIN)
        assert retried.status == 202 and (await retried.json())["version"] == 2  # the newest revision

        async def delivered():
            return bool(received)

        assert await wait_for(delivered)
        assert "200,000" in orjson.loads(received[-1])["bodies"][0]["value"]

        async def counted():  # the worker records the acknowledgement just after the receiver answers
            flow = await (await client.get("/api/propagation", headers=ADMIN)).json()
            return flow["items"][0]["partners"][0]["received"]

        assert await wait_for(counted)  # an acknowledged push counts as received
        status = await (await client.get("/api/status", headers=ADMIN)).json()
        assert status["partners"][0]["lastPush"] is not None
        assert (await client.post("/api/deliveries/" + "0" * 32 + "/retry", headers=ADMIN)).status == 404
        assert (await client.post("/api/deliveries/nope/retry", headers=ADMIN)).status == 404
    finally:
        await runner.cleanup()


def test_status_cli_shows_outstanding_correction(redis_url, tmp_path):
    env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(tmp_path / "var"))
    from conftest import SEED_V1, SEED_V2

    assert run_cli("import", str(SEED_V1), env=env).returncode == 0
    assert run_cli("partner", "add", "acme", "--feeds", "latest", "--formats", "atom", env=env).returncode == 0
    assert run_cli("import", str(SEED_V2), "--signal", "correction", env=env).returncode == 0
    result = run_cli("status", env=env)
    assert result.returncode == 0, result.stderr
    assert "acme" in result.stdout and "correction" in result.stdout and "not yet received" in result.stdout
    failed = run_cli("deliveries", "--failed", env=env)
    assert failed.returncode == 0 and failed.stdout == ""
    missing = run_cli("retry", "0" * 32, env=env)
    assert missing.returncode != 0 and "No failed delivery" in missing.stderr
