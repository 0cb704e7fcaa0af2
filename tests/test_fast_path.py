"""The fast path (server.http.fast_path): cached feed polls on a kept-alive connection are answered beneath
aiohttp's request handling, and must be answered exactly as the route answers them: the same status,
body and headers, the same quota charge, ledger line, metrics and access line. Everything the fast path
does not take (misses, refusals, pipelined requests behind a slow one) still gets the route's answer,
in order. Requests go over raw sockets, so which connection carries what is under the test's control.

With ``SYNDICATE_FAST_PATH=off`` (``make test`` runs this file both ways) every request takes the route:
the same answers are expected, no fast answers (:func:`by_fast_path`), and the tests that are about the fast path
itself are skipped."""

from __future__ import annotations

import asyncio
import gc
import gzip

import orjson
import pytest
from conftest import ADMIN, AUTH, FAST_PATH, room_in_rate_window
from prometheus_client.parser import text_string_to_metric_families

from server.http.state import METRICS

JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
ADMIN_JSON = {**ADMIN, "Content-Type": "application/json"}
PER_REQUEST = {"date", "x-request-id", "ratelimit"}  # differ between any two answers
needs_fast_path = pytest.mark.skipif(not FAST_PATH, reason="about the fast path itself (SYNDICATE_FAST_PATH=off)")


def by_fast_path(count: int) -> int:
    """How many of ``count`` answers the fast path gives: all of them, or none when it is off."""
    return count if FAST_PATH else 0


class Connection:
    """One kept-alive HTTP/1.1 connection, written and read by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, client) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", client.server.port))

    async def send(self, *requests: bytes) -> None:
        self.writer.write(b"".join(requests))
        await self.writer.drain()

    async def response(self, head_request: bool = False) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *lines = head.decode().split("\r\n")[:-2]
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"{name} sent twice"
            headers[name.lower()] = value.strip()
        status = int(status_line.split(" ")[1])
        length = 0 if head_request or status == 304 else int(headers.get("content-length", 0))
        body = await asyncio.wait_for(self.reader.readexactly(length), 10)
        return status, headers, body

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        await self.send(request(path, headers))
        return await self.response()

    def close(self) -> None:
        self.writer.close()


def request(path: str, headers: dict[str, str] | None = None, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def fast_answers(client) -> int:
    return client.server.app[METRICS].http.fast_answers


def replayed(client) -> int:
    return client.server.runner.server.fast_path.replayed if FAST_PATH else 0


def fixed(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in PER_REQUEST}


async def publish(client, doc) -> None:
    response = await client.post("/api/articles", data=orjson.dumps(doc), headers=JSON_HEADERS)
    assert response.status in (200, 201), await response.text()


async def partner_key(client, name="acme", **body) -> str:
    body = {"name": name, "feeds": ["latest"], "formats": ["atom", "rss", "json", "newsml"], **body}
    response = await client.post("/api/partners", data=orjson.dumps(body), headers=ADMIN_JSON)
    assert response.status == 201, await response.text()
    return (await response.json())["key"]


@pytest.fixture
async def polling(client, seed_v1):
    """The seed published, a partner's key, and a connection whose first poll has rendered the feed."""
    await publish(client, seed_v1)
    key = await partner_key(client)
    connection = await Connection.open(client)
    status, _headers, _body = await connection.get("/feeds/latest/atom", {"X-API-Key": key})
    assert status == 200
    yield client, key, connection
    connection.close()


@pytest.mark.parametrize("coding", ["identity", "gzip", "br"])
async def test_a_kept_alive_poll_is_answered_on_the_fast_path_as_the_route_answers_it(polling, coding):
    client, key, connection = polling
    headers = {"X-API-Key": key, "Accept-Encoding": coding}
    before = fast_answers(client)
    fast = await connection.get("/feeds/latest/atom", headers)
    assert fast_answers(client) == before + by_fast_path(1)
    # Connection: close is never taken by the fast path: the route answers it.
    route = await connection.get("/feeds/latest/atom", {**headers, "Connection": "close"})
    assert fast_answers(client) == before + by_fast_path(1)
    assert fast[0] == route[0] == 200 and fast[2] == route[2]
    assert fixed(fast[1]) == {k: v for k, v in fixed(route[1]).items() if k != "connection"}
    assert fast[1]["ratelimit-policy"] == route[1]["ratelimit-policy"]
    assert fast[1]["x-request-id"] != route[1]["x-request-id"] and len(fast[1]["x-request-id"]) == 32
    if coding == "gzip":
        assert gzip.decompress(fast[2]).rstrip().endswith(b"</feed>")


async def test_a_304_and_the_ledger_the_quota_and_the_metrics_behind_it(polling):
    client, key, connection = polling
    status, headers, _body = await connection.get("/feeds/latest/atom", {"X-API-Key": key})
    before = fast_answers(client)
    remaining = int(headers["ratelimit"].split("r=")[1].split(";")[0])
    etag = headers["etag"]
    fast = await connection.get("/feeds/latest/atom", {"X-API-Key": key, "If-None-Match": etag})
    assert fast[0] == 304 and fast[2] == b"" and fast_answers(client) == before + by_fast_path(1)
    assert "content-length" not in fast[1] and "content-type" not in fast[1]
    route = await connection.get("/feeds/latest/atom", {"X-API-Key": key, "If-None-Match": etag,
                                                        "Connection": "close"})
    assert route[0] == 304 and fixed(fast[1]) == {k: v for k, v in fixed(route[1]).items() if k != "connection"}
    # A 304 costs a tenth of a request: the one after a full request shows one fewer remaining.
    assert int(fast[1]["ratelimit"].split("r=")[1].split(";")[0]) == remaining - 1

    response = await client.get("/api/partners/acme/status", headers=ADMIN)
    status_report = await response.json()
    assert status_report["lastHour"]["polls"] == 4 and status_report["lastHour"]["notModified"] == 2
    assert all(article["received"] for article in status_report["articles"])

    text = await (await client.get("/metrics", headers=ADMIN)).text()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    not_modified = [s.value for s in samples if s.name == "syndicate_http_requests_total"
                    and s.labels["route"] == "/feeds/{name}/{format}" and s.labels["status"] == "304"]
    assert sum(not_modified) == 2
    assert [s.value for s in samples if s.name == "syndicate_http_fast_path_answers_total"] == [fast_answers(client)]


async def test_a_revision_is_served_on_the_next_poll_and_then_from_the_fast_path_again(polling, seed_v2):
    client, key, connection = polling
    await publish(client, seed_v2)
    before = fast_answers(client)
    status, _headers, body = await connection.get("/feeds/latest/json", {"X-API-Key": key})
    assert status == 200 and fast_answers(client) == before  # a miss: the route renders it
    assert orjson.loads(body)["items"][0]["_syndicate"]["version"] == 2
    status, _headers, again = await connection.get("/feeds/latest/json", {"X-API-Key": key})
    assert status == 200 and again == body and fast_answers(client) == before + by_fast_path(1)


async def test_refusals_come_from_the_route(polling):
    client, key, connection = polling
    before = fast_answers(client)
    assert (await connection.get("/feeds/latest/atom"))[0] == 401
    status, headers, body = await connection.get("/feeds/latest/atom", {"X-API-Key": key + "x"})
    assert status == 401 and headers["content-type"] == "application/problem+json"
    assert (await connection.get("/feeds/nope/atom", {"X-API-Key": key}))[0] == 404
    assert (await connection.get("/feeds/latest/xml", {"X-API-Key": key}))[0] == 404
    assert (await connection.get("/feeds/latest/atom?since=abc", {"X-API-Key": key}))[0] == 400
    limited = await partner_key(client, "limited", formats=["atom"])
    assert (await connection.get("/feeds/latest/rss", {"X-API-Key": limited}))[0] == 403
    assert fast_answers(client) == before


async def test_a_revoked_key_fails_on_the_next_poll_of_a_kept_alive_connection(polling):
    client, key, connection = polling
    assert (await connection.get("/feeds/latest/atom", {"X-API-Key": key}))[0] == 200
    key_id = key.split("_")[1]  # syn_<key id>_<secret>
    assert (await client.delete(f"/api/partners/acme/keys/{key_id}", headers=ADMIN)).status in (200, 204)
    status, headers, _body = await connection.get("/feeds/latest/atom", {"X-API-Key": key})
    assert status == 401 and "www-authenticate" in headers


async def rate_limited_poller(client, seed_v1, rate_limit: int) -> tuple[str, Connection]:
    """The seed published, a partner with ``rate_limit`` requests a minute, room left in the window, and
    a fresh connection."""
    await publish(client, seed_v1)
    key = await partner_key(client, "slow", rate_limit=rate_limit)
    await room_in_rate_window()
    return key, await Connection.open(client)


async def test_the_rate_limit_holds_on_the_fast_path(client, seed_v1):
    key, connection = await rate_limited_poller(client, seed_v1, rate_limit=3)
    try:
        before = fast_answers(client)
        statuses = [(await connection.get("/feeds/latest/atom", {"X-API-Key": key}))[0] for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        assert fast_answers(client) == before + by_fast_path(2)  # the first renders; the 429 is the route's
    finally:
        connection.close()


async def test_pipelined_requests_are_answered_in_order(polling):
    client, key, connection = polling
    feed = request("/feeds/latest/atom", {"X-API-Key": key})
    before = fast_answers(client)
    await connection.send(feed, request("/healthz"), feed, feed, request("/nowhere"), feed,
                          request("/feeds/latest/atom", {"X-API-Key": key}, method="HEAD"), feed)
    answers = [await connection.response() for _ in range(6)]
    answers.append(await connection.response(head_request=True))
    answers.append(await connection.response())
    assert [a[0] for a in answers] == [200, 200, 200, 200, 404, 200, 200, 200]
    assert fast_answers(client) == before + by_fast_path(1)  # the first: the rest came behind a request of aiohttp's
    feeds = [a for a in answers if a[1].get("content-type", "").startswith("application/atom+xml")]
    assert len(feeds) == 6 and len({a[2] for a in feeds if a[2]}) == 1
    assert answers[6][2] == b"" and answers[6][1]["content-length"] == answers[0][1]["content-length"]
    assert answers[1][2].startswith(b"{") and answers[4][1]["content-type"] == "application/problem+json"


async def test_a_request_split_across_writes_is_answered_whole(polling):
    client, key, connection = polling
    raw = request("/feeds/latest/atom", {"X-API-Key": key, "Accept-Encoding": "gzip"})
    for cut in (5, len(raw) // 2, len(raw) - 2):
        await connection.send(raw[:cut])
        await asyncio.sleep(0.01)
        await connection.send(raw[cut:])
        status, headers, body = await connection.response()
        assert status == 200 and headers["content-encoding"] == "gzip"
        assert gzip.decompress(body).rstrip().endswith(b"</feed>")


async def test_a_key_in_the_query_a_since_page_and_the_public_feed(polling):
    client, key, connection = polling
    status, headers, body = await connection.get(f"/feeds/latest/atom?key={key}")
    assert status == 200
    cursor, _, link_key = headers["link"].split("since=")[1].split(">")[0].partition("&key=")
    assert link_key == key  # a reader by ?key= follows links that carry it (issue 12)
    before = fast_answers(client)
    for _ in range(2):  # the first renders the page, the second is served from memory
        status, headers, page = await connection.get(f"/feeds/latest/json?since={int(cursor) - 1}&key={key}")
        assert status == 200 and len(orjson.loads(page)["items"]) == 1
    status, headers, _body = await connection.get(f"/feeds/latest/atom?key={key}")
    assert status == 200 and fast_answers(client) == before + by_fast_path(2)
    # A request asking to switch protocols is aiohttp's, and the connection goes on working after it.
    status, _headers, _body = await connection.get(f"/feeds/latest/atom?key={key}",
                                                   {"Connection": "Upgrade", "Upgrade": "h2c"})
    assert status == 200 and fast_answers(client) == before + by_fast_path(2)
    assert (await connection.get(f"/feeds/latest/atom?key={key}"))[0] == 200
    assert fast_answers(client) == before + by_fast_path(3)
    # An unknown query parameter is the route's to judge (it ignores it).
    before = fast_answers(client)
    assert (await connection.get(f"/feeds/latest/atom?key={key}&utm_source=x"))[0] == 200
    assert fast_answers(client) == before

    for _ in range(2):
        status, headers, _body = await connection.get("/feeds/headlines/rss")
        assert status == 200 and headers["cache-control"].startswith("public")
        assert "ratelimit" not in headers
    assert fast_answers(client) == before + by_fast_path(1)  # the first renders the public page


async def test_a_repeated_poll_is_answered_unparsed_and_still_checked_afresh(polling, seed_v2):
    client, key, connection = polling
    raw = request("/feeds/latest/json", {"X-API-Key": key, "Accept-Encoding": "gzip"})
    answers = []
    for _ in range(4):
        await connection.send(raw)
        answers.append(await connection.response())
    assert replayed(client) >= by_fast_path(2) and len({a[2] for a in answers}) == 1
    assert len({a[1]["x-request-id"] for a in answers}) == 4

    await publish(client, seed_v2)  # the page in memory is now stale: a replay must not serve it
    before = replayed(client)
    await connection.send(raw)
    status, _headers, body = await connection.response()
    assert status == 200 and orjson.loads(gzip.decompress(body))["items"][0]["_syndicate"]["version"] == 2
    await connection.send(raw)
    assert (await connection.response())[2] == body
    await connection.send(raw)
    assert (await connection.response())[2] == body and replayed(client) >= before + by_fast_path(1)

    # The same bytes behind a partial request are not the same request: the parser judges them.
    before = replayed(client)
    await connection.send(b"GET /feeds/latest/json HTTP/1.1\r\nX-Partial: yes")
    await asyncio.sleep(0.01)
    await connection.send(raw)
    status, headers, _body = await connection.response()
    assert replayed(client) == before
    assert status == 400 or (status == 200 and "x-partial" not in headers)


async def test_a_repeated_poll_after_revocation_and_with_a_spent_quota_gets_the_routes_refusal(client, seed_v1):
    key, connection = await rate_limited_poller(client, seed_v1, rate_limit=4)
    try:
        raw = request("/feeds/latest/atom", {"X-API-Key": key})
        statuses = []
        for _ in range(5):
            await connection.send(raw)
            statuses.append((await connection.response())[0])
        assert statuses == [200, 200, 200, 200, 429] and replayed(client) >= by_fast_path(2)
        other = await partner_key(client, "other")
        raw = request("/feeds/latest/atom", {"X-API-Key": other})
        for _ in range(3):
            await connection.send(raw)
            assert (await connection.response())[0] == 200
        key_id = other.split("_")[1]
        assert (await client.delete(f"/api/partners/other/keys/{key_id}", headers=ADMIN)).status in (200, 204)
        await connection.send(raw)
        assert (await connection.response())[0] == 401
    finally:
        connection.close()


async def test_a_long_pipelined_batch_is_answered_whole(polling):
    """Past aiohttp's queue size its parser pauses on the rest of a read, and only aiohttp resumes it."""
    client, key, connection = polling
    status, headers, _body = await connection.get("/feeds/latest/atom", {"X-API-Key": key})
    poll = request("/feeds/latest/atom", {"X-API-Key": key, "If-None-Match": headers["etag"]})
    for count in (5, 40, 100):
        await connection.send(poll * count)
        statuses = [(await connection.response())[0] for _ in range(count)]
        assert statuses == [304] * count
    assert (await connection.get("/feeds/latest/atom", {"X-API-Key": key}))[0] == 200


async def test_expect_is_answered_by_the_route(polling):
    client, key, connection = polling
    before = fast_answers(client)
    status, headers, _body = await connection.get("/feeds/latest/atom", {"X-API-Key": key, "Expect": "bogus"})
    assert status == 417 and fast_answers(client) == before
    await connection.send(request("/feeds/latest/atom", {"X-API-Key": key, "Expect": "100-continue"}))
    interim = await asyncio.wait_for(connection.reader.readuntil(b"\r\n\r\n"), 10)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    assert (await connection.response())[0] == 200 and fast_answers(client) == before


async def test_an_empty_page_is_a_204_from_either_path_counted_once(polling):
    client, key, connection = polling
    status, headers, _body = await connection.get("/feeds/latest/newsml", {"X-API-Key": key})
    cursor = headers["link"].split("since=")[1].split(">")[0]
    target = f"/feeds/latest/newsml?since={cursor}"  # nothing after the head: no valid NewsML-G2 page
    assert (await connection.get(target, {"X-API-Key": key}))[0] == 204
    counts = client.server.app[METRICS].http
    hits, before = counts.cache_results["memory_hit"], fast_answers(client)
    fast = await connection.get(target, {"X-API-Key": key})
    assert fast[0] == 204 and fast[2] == b"" and fast_answers(client) == before + by_fast_path(1)
    assert counts.cache_results["memory_hit"] == hits + 1
    route = await connection.get(target, {"X-API-Key": key, "Connection": "close"})
    assert route[0] == 204 and fixed(fast[1]) == {k: v for k, v in fixed(route[1]).items() if k != "connection"}


@needs_fast_path
async def test_a_failure_after_the_answer_is_written_does_not_answer_twice(polling, monkeypatch):
    client, key, connection = polling
    import server.http.middleware

    def broken_access_line(*_args):
        raise RuntimeError("the access line failed")

    monkeypatch.setattr(server.http.middleware, "access_line", broken_access_line)
    status, _headers, body = await connection.get("/feeds/latest/atom", {"X-API-Key": key})
    assert status == 200 and body.rstrip().endswith(b"</feed>")
    monkeypatch.undo()
    # Nothing else was sent on the connection: the next answer is the next request's.
    status, headers, _body = await connection.get("/feeds/headlines/rss")
    assert status == 200 and headers["content-type"].startswith("application/rss+xml")


async def test_failed_key_attempts_below_the_throttle_leave_the_fast_path_on(polling):
    """Only an address being throttled is refused (by the route: 429); a stray bad key elsewhere, or a
    few here, must not send every partner's polls the slow way."""
    client, key, connection = polling
    for _ in range(3):
        assert (await connection.get("/feeds/latest/atom", {"X-API-Key": "syn_00000000_" + "x" * 43}))[0] == 401
    before = fast_answers(client)
    assert (await connection.get("/feeds/latest/atom", {"X-API-Key": key}))[0] == 200
    assert (await connection.get("/feeds/latest/atom", {"X-API-Key": key}))[0] == 200
    assert fast_answers(client) >= before + by_fast_path(1)


@needs_fast_path
async def test_a_failure_before_the_write_closes_the_connection_cleanly(polling, monkeypatch):
    """A poll that fails after its charge but before its answer is written is not handed to aiohttp
    (it would be charged twice): the connection is closed, and the requests pipelined behind it die with
    it, without leaving aiohttp's request loop to crash on a protocol already torn down."""
    client, key, connection = polling
    server = client.server.runner.server
    server.handler_cancellation = False  # as `syndicate serve` runs (aiohttp's test server sets True)
    crashes = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: crashes.append(context))
    access = server.fast_path.polls.access
    settle, calls = access.settle, []

    def failing_second_settle(*args, **kwargs):
        calls.append(args)
        quota = settle(*args, **kwargs)
        if len(calls) == 2:
            raise RuntimeError("failed after the charge")
        return quota

    try:
        connection.close()
        connection = await Connection.open(client)
        for _ in range(2):  # the second one is answered on the fast path
            assert (await connection.get("/feeds/latest/atom", {"X-API-Key": key}))[0] == 200
        monkeypatch.setattr(access, "settle", failing_second_settle)
        await connection.send(request("/feeds/latest/atom", {"X-API-Key": key}) * 3)
        assert (await connection.response())[0] == 200
        assert await asyncio.wait_for(connection.reader.read(), 10) == b""  # then closed
        await asyncio.sleep(0.2)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
        connection.close()
    assert len(calls) == 2 and not crashes, crashes


async def test_if_modified_since_alone_gets_the_routes_answer_from_either_path(polling):
    client, key, connection = polling
    status, headers, _body = await connection.get("/feeds/latest/atom", {"X-API-Key": key})
    last_modified = headers["last-modified"]
    before = fast_answers(client)
    unchanged = {"X-API-Key": key, "If-Modified-Since": last_modified}
    fast = await connection.get("/feeds/latest/atom", unchanged)
    assert fast[0] == 304 and fast[2] == b"" and fast_answers(client) == before + by_fast_path(1)
    route = await connection.get("/feeds/latest/atom", {**unchanged, "Connection": "close"})
    assert route[0] == 304 and fixed(fast[1]) == {k: v for k, v in fixed(route[1]).items() if k != "connection"}
    connection.close()
    connection = await Connection.open(client)
    try:
        stale = {"X-API-Key": key, "If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}
        assert (await connection.get("/feeds/latest/atom", stale))[0] == 200
        assert (await connection.get("/feeds/latest/atom", {**stale, "If-Modified-Since": "not a date"}))[0] == 200
    finally:
        connection.close()


@needs_fast_path
async def test_kept_alive_cached_polls_are_answered_on_the_fast_path(polling):
    """make test fails here if the fast path is on but not working: aiohttp's internals it needs are
    there, and kept-alive polls of a cached page (200 and 304, first sent and replayed) are its answers."""
    from server.http.fast_path import _Parser, missing_internals

    client, key, connection = polling
    fast_path = client.server.runner.server.fast_path
    assert fast_path.unavailable is None
    protocols = list(client.server.runner.server.connections)
    assert protocols and all(missing_internals(p) == [] and type(p._parser) is _Parser for p in protocols)
    before, replays = fast_answers(client), replayed(client)
    raw = request("/feeds/latest/atom", {"X-API-Key": key})
    for _ in range(3):
        await connection.send(raw)
        status, headers, _body = await connection.response()
        assert status == 200
    assert (await connection.get("/feeds/latest/atom", {"X-API-Key": key, "If-None-Match": headers["etag"]}))[0] == 304
    assert fast_answers(client) == before + 4 and replayed(client) >= replays + 2


def test_what_the_fast_path_needs_of_aiohttp_is_named_when_missing():
    """An aiohttp without an internal the fast path uses is not a silent fallback: the missing names are
    said (in FastPath.unavailable and a warning), and the tests' client fixture fails on it."""
    from server.http.fast_path import PROTOCOL_ATTRIBUTES, missing_internals

    class Parser:
        def feed_data(self, data):
            return [], False, b""

    class Protocol:
        pass

    protocol = Protocol()
    for name in PROTOCOL_ATTRIBUTES:
        setattr(protocol, name, None)
    protocol._parser = Parser()
    assert missing_internals(protocol) == ["_parser.message_consumed"]
    del protocol._max_msg_queue_size
    assert missing_internals(protocol) == ["_max_msg_queue_size", "_parser.message_consumed"]


@needs_fast_path
async def test_a_connection_only_the_fast_path_answered_is_closed_when_idle(aiohttp_client, settings, seed_v1):
    """The keep-alive timeout holds for a connection whose every request the fast path answered: aiohttp
    (3.14.4 on) arms the timer when the connection opens, and each answer here moves it on."""
    from conftest import FastPathTestServer

    from server.http.app import create_app

    class ShortKeepAlive(FastPathTestServer):
        async def _make_runner(self, **kwargs):
            return await super()._make_runner(keepalive_timeout=0.5, **kwargs)

    client = await aiohttp_client(ShortKeepAlive(create_app(settings)))
    await publish(client, seed_v1)
    key = await partner_key(client)
    assert (await client.get("/feeds/latest/atom", headers={"X-API-Key": key})).status == 200  # rendered
    connection = await Connection.open(client)
    try:
        before = fast_answers(client)
        for _ in range(2):
            assert (await connection.get("/feeds/latest/atom", {"X-API-Key": key}))[0] == 200
            await asyncio.sleep(0.3)  # each answer keeps the connection open past the first timeout
        assert fast_answers(client) == before + 2
        assert await asyncio.wait_for(connection.reader.read(), 5) == b""  # then closed by the server
    finally:
        connection.close()
