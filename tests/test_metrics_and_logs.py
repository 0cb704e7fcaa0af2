"""Ops issue, items 3 to 5: Prometheus metrics at /metrics, /readyz with worker heartbeats, JSON logs.

Real Redis (the tests' own), the app under ``aiohttp_client`` with its in-process push worker, and a
real webhook receiver (:class:`push_helpers.Subscriber`). The exposition is parsed with
prometheus-client's own parser.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import ipaddress
import logging
import socket

import orjson
import pytest
from conftest import ADMIN, ADMIN_TOKEN, AUTH
from prometheus_client.parser import text_string_to_metric_families
from push_helpers import Behaviour, Subscriber, wait_for

from server.core import keys
from server.http.app import create_app
from server.http.middleware import add_get
from server.http.state import METRICS
from server.observability import logs

JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
ADMIN_JSON = {**ADMIN, "Content-Type": "application/json"}
FEED_ROUTE = "/feeds/{name}/{format}"


@pytest.fixture
def ops_settings(settings):
    return dataclasses.replace(settings, heartbeat_seconds=0.2,
                               push_allow_networks=(ipaddress.ip_network("127.0.0.0/8"),))


@pytest.fixture
async def app_client(aiohttp_client, ops_settings):
    return await aiohttp_client(create_app(ops_settings))


@pytest.fixture
async def receiver():
    subscriber = await Subscriber(Behaviour()).start()
    yield subscriber
    await subscriber.close()


@pytest.fixture
def log_lines(ops_settings):
    """Configure logging as the CLI does, into a buffer; ``log_lines(fmt)`` -> a function returning the lines."""
    root, access = logging.getLogger(), logging.getLogger("aiohttp.access")
    saved = (list(root.handlers), root.level, access.level)
    buffers = []

    def start(fmt: str = "json"):
        buffer = io.StringIO()
        logs.configure(dataclasses.replace(ops_settings, log_format=fmt), stream=buffer)
        buffers.append(buffer)
        return lambda: buffer.getvalue().splitlines()

    yield start
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    access.setLevel(saved[2])


async def publish(client, doc: dict, query: str = "") -> None:
    response = await client.post(f"/api/articles{query}", data=orjson.dumps(doc), headers=JSON_HEADERS)
    assert response.status in (200, 201), await response.text()


async def make_partner(client, name: str) -> str:
    """A partner entitled to every feed and format, made through the admin API (which reloads the keys)."""
    response = await client.post("/api/partners", headers=ADMIN_JSON,
                                 data=orjson.dumps({"name": name, "feeds": ["*"], "formats": ["*"]}))
    assert response.status == 201, await response.text()
    return (await response.json())["key"]


async def scrape(client) -> tuple[str, dict]:
    response = await client.get("/metrics", headers=ADMIN)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    return text, {family.name: family for family in text_string_to_metric_families(text)}


def values(family, sample_name: str | None = None, **labels: str) -> list[float]:
    return [s.value for s in family.samples
            if (sample_name is None or s.name == sample_name) and all(s.labels.get(k) == v for k, v in labels.items())]


# ----- /metrics ------------------------------------------------------------------------------------------

async def test_metrics_need_the_admin_token(app_client):
    key = await make_partner(app_client, "acme")
    assert (await app_client.get("/metrics")).status == 401
    assert (await app_client.get("/metrics", headers={"Authorization": "Bearer not-a-token-at-all-000"})).status == 401
    assert (await app_client.get("/metrics", headers=AUTH)).status == 403
    assert (await app_client.get("/metrics", headers={"Authorization": f"Bearer {key}"})).status == 401
    assert (await app_client.get(f"/metrics?key={key}")).status == 401
    await scrape(app_client)


async def test_metrics_after_publish_keyed_poll_304_and_push(app_client, sync_redis, receiver,
                                                            seed_v1, seed_v2):
    key = await make_partner(app_client, "acme")
    await make_partner(app_client, "late")  # entitled, never polls, no endpoint: the correction stays outstanding
    endpoint = await app_client.post("/api/partners/acme/endpoints", headers=ADMIN_JSON, data=orjson.dumps(
        {"url": receiver.url("/hook"), "format": "ninjs", "secret": "s3cret-for-the-tests-0123456789"}))
    assert endpoint.status == 201, await endpoint.text()

    await publish(app_client, seed_v1)
    await publish(app_client, seed_v2, "?signal=correction")
    # Newest wins: v1 and v2 may go out as one delivery or two.
    # Wait for the correction itself: an empty queue alone may only mean v1 is done and v2 not yet fanned out.
    await wait_for(lambda: any(b"200,000 people" in post.body for post in receiver.delivered)
                   and not sync_redis.zcard(keys.push_waiting_since()),
                   message="the correction pushed and acknowledged")
    pushed = float(len(receiver.delivered))

    first = await app_client.get(f"/feeds/world/rss?key={key}")
    assert first.status == 200
    again = await app_client.get(f"/feeds/world/rss?key={key}", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status == 304

    text, families = await scrape(app_client)
    assert key not in text and key.split("_", 2)[2] not in text
    process = app_client.server.app[METRICS].process_id
    assert process.startswith(socket.gethostname() + ":")

    requests = families["syndicate_http_requests"]
    assert values(requests, route=FEED_ROUTE, status="200", method="GET", process=process) == [1.0]
    assert values(requests, route=FEED_ROUTE, status="304", method="GET", process=process) == [1.0]
    assert values(requests, route="/api/articles", status="201", method="POST")
    assert all("key" not in s.labels.get("route", "") for s in requests.samples)
    assert {s.labels["route"] for s in requests.samples} <= {r.resource.canonical for r in
                                                            app_client.server.app.router.routes()} | {"(unmatched)"}
    duration = families["syndicate_http_request_duration_seconds"]
    assert values(duration, "syndicate_http_request_duration_seconds_count", route=FEED_ROUTE) == [2.0]

    cacheable = values(families["syndicate_http_cacheable_responses"], route=FEED_ROUTE)
    not_modified = values(families["syndicate_http_not_modified"], route=FEED_ROUTE)
    assert cacheable == [2.0] and not_modified == [1.0]

    cache = families["syndicate_feed_cache_requests"]
    assert values(cache, result="render") == [1.0]  # the first GET rendered, the 304 came from memory
    assert values(cache, result="memory_hit") == [1.0]
    assert values(cache, result="redis_hit") == [0.0]
    render = families["syndicate_feed_render_seconds"]
    assert values(render, "syndicate_feed_render_seconds_count", format="rss") == [1.0]
    assert 0 < values(render, "syndicate_feed_render_seconds_sum", format="rss")[0] < 10

    deliveries = families["syndicate_push_deliveries"]
    assert values(deliveries, kind="webhook", outcome="ok") == [pushed]
    assert values(deliveries, kind="webhook", outcome="gave_up") == [0.0]
    latency = families["syndicate_push_delivery_latency_seconds"]
    assert values(latency, "syndicate_push_delivery_latency_seconds_count", kind="webhook") == [pushed]
    assert 0 <= values(latency, "syndicate_push_delivery_latency_seconds_sum", kind="webhook")[0] < 60

    assert values(families["syndicate_push_queue_depth"], state="due") == [0.0]
    assert values(families["syndicate_push_queue_depth"], state="in_flight") == [0.0]
    assert values(families["syndicate_push_pending_deliveries"]) == [0.0]
    assert values(families["syndicate_push_oldest_pending_seconds"]) == [0.0]
    assert values(families["syndicate_push_failed_deliveries"]) == [0.0]
    assert values(families["syndicate_websub_subscriptions"]) == [0.0]
    assert values(families["syndicate_webhook_endpoints"]) == [1.0]
    assert values(families["syndicate_workers_alive"]) == [1.0]

    outstanding = families["syndicate_outstanding_revisions"]
    assert values(outstanding, partner="late", kind="correction") == [1.0]
    assert values(outstanding, partner="acme", kind="correction") == []  # pushed and polled: no series
    assert values(outstanding, partner="late", kind="kill") == []
    assert values(families["syndicate_outstanding_oldest_seconds"], partner="late", kind="correction")[0] >= 0
    assert all("process" not in s.labels for s in outstanding.samples)  # cluster-wide: no process label

    errors = families["syndicate_redis_errors"]
    assert values(errors, where="http", process=process) == [0.0]


async def test_metrics_cover_every_live_process(aiohttp_client, ops_settings, redis_url):
    """Two apps (as two processes would): either one's /metrics shows both, each under its process label."""
    first = await aiohttp_client(create_app(ops_settings))
    second = await aiohttp_client(create_app(dataclasses.replace(ops_settings, run_workers=False)))
    one, two = first.server.app[METRICS].process_id, second.server.app[METRICS].process_id
    assert one != two
    for _ in range(3):
        assert (await second.get("/healthz")).status == 200
    _text, families = await scrape(second)  # the answering process's own counts are fresh
    assert values(families["syndicate_http_requests"], route="/healthz", process=two) == [3.0]

    async def seen_by_first():  # another process's counts arrive with its next heartbeat
        _text, families = await scrape(first)
        return values(families["syndicate_http_requests"], route="/healthz", process=two) == [3.0] and families
    families = await wait_for(seen_by_first, message="the second process's snapshot")
    assert values(families["syndicate_http_requests"], route="/healthz", process=one) == []
    assert values(families["syndicate_workers_alive"]) == [1.0]  # only the first runs workers
    _text, families = await scrape(first)
    assert values(families["syndicate_http_requests"], route="/metrics", process=one, status="200")


# ----- /readyz -------------------------------------------------------------------------------------------

async def test_readyz_counts_workers_by_heartbeat(aiohttp_client, app_client, ops_settings, sync_redis):
    ready = await app_client.get("/readyz")
    body = await ready.json()
    assert ready.status == 200, body
    assert body["workers"] == 1 and body["checks"]["workerHeartbeat"] == "ok" and body["checks"]["redis"] == "ok"
    assert (await app_client.get("/healthz")).status == 200

    process = app_client.server.app[METRICS].process_id
    heartbeat = keys.worker_heartbeat(process)
    assert heartbeat == f"syn:heartbeat:worker:{process}" and 0 < sync_redis.pttl(heartbeat) <= 600

    # A process without workers is ready whatever the heartbeats; it still reports the count.
    no_workers = await aiohttp_client(create_app(dataclasses.replace(ops_settings, run_workers=False)))
    body = await (await no_workers.get("/readyz")).json()
    assert body["status"] == "ok" and body["workers"] == 1 and "workerHeartbeat" not in body["checks"]

    # This process's heartbeat gone (its worker stuck or Redis lost it): unavailable until the next beat.
    sync_redis.delete(heartbeat)
    missing = await app_client.get("/readyz")
    assert missing.status == 503 and (await missing.json())["checks"]["workerHeartbeat"] == "missing"

    async def ready_again():
        return (await app_client.get("/readyz")).status == 200
    await wait_for(ready_again, message="the next heartbeat")


async def test_a_stopped_worker_withdraws_its_heartbeat(aiohttp_client, ops_settings, sync_redis):
    client = await aiohttp_client(create_app(ops_settings))
    process = client.server.app[METRICS].process_id
    assert sync_redis.exists(keys.worker_heartbeat(process))
    await client.close()
    assert not sync_redis.exists(keys.worker_heartbeat(process))
    assert sync_redis.zcount(keys.worker_heartbeats(), "-inf", "+inf") == 0


# ----- logs ----------------------------------------------------------------------------------------------

async def test_json_access_lines_have_request_id_status_partner_and_never_the_key(
        aiohttp_client, ops_settings, seed_v1, log_lines):
    read = log_lines("json")
    app = create_app(ops_settings)

    async def noisy(request):
        logging.getLogger("server.test").warning("inside the handler, url %s", request.path_qs)
        raise RuntimeError("boom")

    add_get(app, "/test/noisy", noisy)  # as every route is added: wrapped
    client = await aiohttp_client(app)
    key = await make_partner(client, "acme")
    await publish(client, seed_v1)

    polled = await client.get(f"/feeds/world/rss?key={key}&since=0", headers={"X-Request-Id": "poll-42.a:b"})
    assert polled.status == 200 and polled.headers["X-Request-Id"] == "poll-42.a:b"
    by_header = await client.get("/feeds/world/atom", headers={"X-API-Key": key, "X-Request-Id": "x" * 65})
    generated = by_header.headers["X-Request-Id"]
    assert by_header.status == 200 and generated != "x" * 65 and len(generated) == 32
    refused = await client.get("/feeds/world/rss?key=sk_wrong_key_value", headers={"X-Request-Id": "bad id"})
    assert refused.status == 401 and refused.headers["X-Request-Id"] != "bad id"
    failed = await client.get(f"/test/noisy?key={key}", headers={"X-Request-Id": "noisy-1"})
    assert failed.status == 500 and failed.headers["X-Request-Id"] == "noisy-1"
    assert (await client.get(f"/no/such/{key}", headers={"X-Request-Id": "nowhere"})).status == 404
    assert (await client.post("/healthz", headers={"X-Request-Id": "wrong-method"})).status == 405
    # A malformed request: aiohttp's 400 log quotes the raw header, with the token in it.
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\nX: y\r\n\r\n".encode())
    assert (await asyncio.wait_for(reader.readline(), 10)).split(b" ")[1] == b"400"
    writer.close()
    await client.close()

    lines = read()
    text = "\n".join(lines)
    assert key not in text and key.split("_", 2)[2] not in text and "sk_wrong_key_value" not in text
    assert ADMIN_TOKEN not in text and "Authorization: [redacted]" in text
    entries = [orjson.loads(line) for line in lines]  # every line is one JSON object
    for entry in entries:
        assert {"timestamp", "level", "logger", "message"} <= entry.keys(), entry
        assert entry["timestamp"].endswith("Z")
    access = {e["request_id"]: e for e in entries if e["logger"] == "syndicate.access"}

    poll = access["poll-42.a:b"]
    assert poll["level"] == "INFO" and poll["status"] == 200 and poll["partner"] == "acme"
    assert poll["method"] == "GET" and poll["route"] == FEED_ROUTE and isinstance(poll["latency_ms"], float)
    assert poll["path"] == "/feeds/world/rss?key=[redacted]&since=0"
    assert access[generated]["partner"] == "acme" and access[generated]["status"] == 200
    [unknown] = [e for e in access.values() if e["path"].startswith("/feeds/world/rss?key=")
                 and e["status"] == 401]
    assert "partner" not in unknown

    assert access["nowhere"]["route"] == "(unmatched)" and access["nowhere"]["status"] == 404
    assert access["nowhere"]["path"] == f"/no/such/syn_{key.split('_')[1]}_[redacted]"  # a key pasted in a path
    assert access["wrong-method"]["route"] == "(unmatched)" and access["wrong-method"]["status"] == 405

    noisy_lines = [e for e in entries if e.get("request_id") == "noisy-1"]
    assert [e["logger"] for e in noisy_lines] == ["server.test", "server.http.problems", "syndicate.access"]
    assert "key=[redacted]" in noisy_lines[0]["message"] and "RuntimeError: boom" in noisy_lines[1]["exc"]
    assert all("partner" not in e for e in noisy_lines)  # no feed access check ran: no partner named
    assert noisy_lines[2]["status"] == 500
    # Every line about a request carries its id, but for aiohttp's own about one it could not parse.
    [unparsed] = [e for e in entries if e["logger"] == "aiohttp.server"]
    assert "Authorization: [redacted]" in unparsed["exc"]
    assert not [e for e in entries if e["logger"] not in ("syndicate.access", "aiohttp.server")
                and e.get("request_id") is None and "request" in e["message"]]


async def test_text_format_is_for_humans_and_redacts_too(aiohttp_client, ops_settings, log_lines):
    read = log_lines("text")
    client = await aiohttp_client(create_app(ops_settings))
    key = await make_partner(client, "acme")
    response = await client.get(f"/feeds/world/json?key={key}", headers={"X-Request-Id": "human-1"})
    assert response.status == 200
    await client.close()
    lines = read()
    assert key not in "\n".join(lines)
    [line] = [line for line in lines if "[human-1" in line]
    assert " INFO syndicate.access [human-1 partner=acme]: GET /feeds/world/json?key=[redacted] 200 " in line
    with pytest.raises(ValueError):
        orjson.loads(line)


def test_redaction_of_keys_in_urls():
    # Secrets quoted in aiohttp's 400 for a malformed request: the whole header value goes.
    assert logs.redact("b'Authorization: BEARER tok.en-1/2+3=\\nX'") == "b'Authorization: [redacted]\\nX'"
    assert logs.redact("b'X-API-Key: test-admin-token-0123456789abcdef\\nX: y'") == "b'X-API-Key: [redacted]\\nX: y'"
    assert logs.redact("b'Cookie: syndicate_ops=abc.123.sig; other=1\\n'") == "b'Cookie: [redacted]\\n'"
    assert logs.redact("token was Bearer s3cr3t!tail-of-it, then") == "token was Bearer [redacted], then"
    assert logs.redact('WWW-Authenticate: Bearer realm="syndicate feeds"') == 'WWW-Authenticate: Bearer realm="syndicate feeds"'
    assert logs.redact("GET /feeds/a/rss?key=sk_1_abc&since=3") == "GET /feeds/a/rss?key=[redacted]&since=3"
    assert logs.redact("/x?since=1&KEY=abc def") == "/x?since=1&KEY=[redacted] def"
    assert logs.redact("/x?api_key=abc") == "/x?api_key=[redacted]"
    assert (logs.redact("hub.topic=http%3A%2F%2Fh%2Ffeeds%2Fw%2Fatom%3Fkey%3Dsk_1_a%2Bb%26x%3D1")
            == "hub.topic=http%3A%2F%2Fh%2Ffeeds%2Fw%2Fatom%3Fkey%3D[redacted]%26x%3D1")
    assert logs.redact("monkey=1 turkey=2") == "monkey=1 turkey=2"
    assert (logs.redact("Bearer syn_0123abcd_SpzldiEObQn6k0fBgKgK6rZknezq5-df2Sg-ZYtq2rA.")
            == "Bearer syn_0123abcd_[redacted].")
    assert logs.request_id_for("ok-1") == "ok-1" and logs.request_id_for("a b") != "a b"
    assert logs.request_id_for(None) != logs.request_id_for(None)


@pytest.mark.parametrize(("text", "expected"), [
    ("/feeds/w/rss?k%65y=syn%5F0123abcd%5FAAAAAAAAAAAAAAAAAAAAAAAA", "/feeds/w/rss?k%65y=[redacted]"),
    ("/feeds/w/rss?%6B%65%79=anything&since=1", "/feeds/w/rss?%6B%65%79=[redacted]&since=1"),
    ("/feeds/w/rss?since=4&K%45Y=secretvalue", "/feeds/w/rss?since=4&K%45Y=[redacted]"),
    ("/no/such/syn%5F0123abcd%5FAAAAAAAAAAAAAAAAAAAA", "/no/such/syn_0123abcd_[redacted]"),
    ("/x?a=%41&b=50%25", "/x?a=%41&b=50%25"),
])
def test_redaction_of_percent_encoded_keys(text, expected):
    assert logs.redact(text) == expected


async def test_a_percent_encoded_key_never_reaches_the_access_log(aiohttp_client, ops_settings, log_lines):
    read = log_lines("json")
    client = await aiohttp_client(create_app(ops_settings))
    key = await make_partner(client, "acme")
    encoded = key.replace("_", "%5F")
    response = await client.get(f"/feeds/world/json?k%65y={encoded}")
    assert response.status == 200  # the server decodes the query: it is the partner's key
    await client.close()
    text = "\n".join(read())
    assert key.split("_", 2)[2] not in text and encoded.split("%5F", 2)[2] not in text
