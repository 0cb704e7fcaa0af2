"""Partners and keys: the admin API, the 401/403/429 matrix, photo rights, rate limits, brute force,
the poll ledger and a partner's status (the seed correction scenario), and the CLI."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import feedparser
import orjson
import pytest
import redis as redis_sync
from conftest import ADMIN, AUTH, app_server, cli_env, make_partner, room_in_rate_window, run_cli, snapshot

from server.domain.articles import article_id_for_uri
from server.http.app import create_app

JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
ADMIN_JSON = {**ADMIN, "Content-Type": "application/json"}


async def create_partner(client, **body):
    response = await client.post("/api/partners", data=orjson.dumps(body), headers=ADMIN_JSON)
    assert response.status == 201, await response.text()
    return await response.json()


async def publish(client, doc, query=""):
    response = await client.post(f"/api/articles{query}", data=orjson.dumps(doc), headers=JSON_HEADERS)
    assert response.status in (200, 201), await response.text()


async def test_admin_api_creates_lists_changes_and_revokes(client, redis_url):
    created = await create_partner(client, name="acme", feeds=["latest", "world"], formats=["atom", "newsml"],
                                   contact="desk@acme.example", rate_limit=120)
    key = created["key"]
    assert key.startswith(f"syn_{created['key_id']}_") and len(key) == 4 + 8 + 1 + 43
    assert created["feeds"] == ["latest", "world"] and created["media"] is True
    assert all("digest" not in k for k in created["keys"])

    listing = await (await client.get("/api/partners", headers=ADMIN)).json()
    assert [p["name"] for p in listing["items"]] == ["acme"]
    changed = await client.patch("/api/partners/acme", data=orjson.dumps({"formats": ["rss"], "media": False}),
                                 headers=ADMIN_JSON)
    assert changed.status == 200 and (await changed.json())["formats"] == ["rss"]

    second = await client.post("/api/partners/acme/keys", headers=ADMIN)
    assert second.status == 201
    second_key = (await second.json())["key"]
    assert (await client.get("/feeds/latest/rss", headers={"X-API-Key": second_key})).status == 200
    revoked = await client.delete(f"/api/partners/acme/keys/{created['key_id']}", headers=ADMIN)
    assert revoked.status == 200
    assert (await client.get("/feeds/latest/rss", headers={"X-API-Key": key})).status == 401  # at once
    shown = await (await client.get("/api/partners/acme", headers=ADMIN)).json()
    assert [k["revokedAt"] is not None for k in shown["keys"]] == [True, False]
    assert shown["keys"][1]["lastUsed"] is None or shown["keys"][1]["lastUsed"]

    # The keys themselves are nowhere in Redis, in a key of any type: only their digests.
    assert not clear_text_in_redis(redis_url, [key, second_key, *(secret_of(k) for k in (key, second_key))])


def secret_of(key: str) -> str:
    """The secret part of ``syn_<key id>_<secret>``."""
    prefix, key_id, secret = key.split("_", 2)
    assert prefix == "syn" and len(key_id) == 8 and len(secret) == 43
    return secret


def redis_contents(url: str) -> dict[bytes, tuple[bytes, list[bytes]]]:
    """Every key of every type with every byte string it holds: its name, a string's value, a hash's field
    names and values, a list's, set's or sorted set's members (and scores), a stream's entry ids, field
    names and values."""
    def stream(raw, name):
        return [part for entry_id, fields in raw.xrange(name) for part in (entry_id, *fields, *fields.values())]

    readers = {
        b"string": lambda raw, name: [raw.get(name)],
        b"hash": lambda raw, name: [part for item in raw.hgetall(name).items() for part in item],
        b"list": lambda raw, name: raw.lrange(name, 0, -1),
        b"set": lambda raw, name: list(raw.smembers(name)),
        b"zset": lambda raw, name: [part for member, score in raw.zrange(name, 0, -1, withscores=True)
                                    for part in (member, repr(score).encode())],
        b"stream": stream,
    }
    with redis_sync.Redis.from_url(url) as raw:
        found = {}
        for name in raw.scan_iter(count=1000):
            kind = raw.type(name)
            assert kind in readers, f"{name!r} is a {kind!r}, which this scan cannot read"
            found[name] = (kind, [name, *readers[kind](raw, name)])
        return found


def clear_text_in_redis(url: str, needles: list[str]) -> list[tuple[bytes, str]]:
    """(Redis key, needle) for each needle found anywhere in Redis."""
    return [(name, needle) for name, (_kind, parts) in redis_contents(url).items() for needle in needles
            if any(needle.encode() in part for part in parts)]


async def test_a_key_is_never_stored_in_clear_after_polls_subscriptions_and_pushes(
        aiohttp_client, push_settings, redis_url, receivers, seed_v1, seed_v2):
    """After ?key= polls, X-API-Key polls, a failed key of the same key id, a WebSub subscription by
    ?key= topic and one by bearer key, a webhook and the pushes of a correction to all three, no Redis
    key of any type holds the whole key or its secret part (its key id may be stored)."""
    from push_helpers import wait_for

    from server.core import keys

    app = await aiohttp_client(app_server(push_settings))
    await publish(app, seed_v1)
    acme = await create_partner(app, name="acme", feeds=["latest", "world"], formats=["atom", "json"])
    key, key_id = acme["key"], acme["key_id"]
    wrong = f"syn_{key_id}_{'A' * 43}"  # a failed key for the same key id: counted by key id, never stored
    article_id = article_id_for_uri(seed_v1["uri"])
    for path in ("/feeds/latest/atom", "/feeds/latest/atom", "/feeds/world/atom", f"/items/{article_id}"):
        assert (await app.get(path, params={"key": key})).status == 200, path
    for path in ("/feeds/latest/json", "/api/me/status"):
        assert (await app.get(path, headers={"X-API-Key": key})).status == 200, path
    assert (await app.get("/feeds/latest/atom", params={"key": wrong})).status == 401
    assert (await app.get("/feeds/latest/json", headers={"X-API-Key": wrong})).status == 401

    receiver = await receivers()
    topic = push_settings.base_url + "/feeds/latest/atom"
    for callback, form_topic, headers in ((receiver.url("/by-query"), f"{topic}?key={key}", {}),
                                          (receiver.url("/by-bearer"), topic, {"Authorization": f"Bearer {key}"})):
        response = await app.post("/hub", data={"hub.mode": "subscribe", "hub.callback": callback,
                                                "hub.topic": form_topic, "hub.secret": "a-websub-secret"},
                                  headers=headers)
        assert response.status == 202, await response.text()
    await wait_for(lambda: len(receiver.verifications) == 2 and all(v.ok for v in receiver.verifications),
                   message="both verifications answered")
    assert any(v.query["hub.topic"] == f"{topic}?key={key}" for v in receiver.verifications)  # the key was sent
    endpoint = await app.post("/api/partners/acme/endpoints", headers=ADMIN_JSON, data=orjson.dumps(
        {"url": receiver.url("/webhook"), "format": "ninjs", "secret": "a-long-shared-secret-0123"}))
    assert endpoint.status == 201, await endpoint.text()
    with redis_sync.Redis.from_url(redis_url) as raw:
        await wait_for(lambda: raw.scard(keys.destination_ids()) == 3, message="the three destinations")

    await publish(app, seed_v2, "?signal=correction")
    await wait_for(lambda: {p.path for p in receiver.posts if p.ok} == {"/by-query", "/by-bearer", "/webhook"},
                   message="the correction pushed to the two subscriptions and the webhook")
    assert (await app.get("/feeds/latest/atom", params={"key": key})).status == 200
    status = await (await app.get("/api/partners/acme/status", headers=ADMIN)).json()  # flushes the ledger
    assert [(a["version"], a["received"]) for a in status["articles"]] == [(2, True)]

    contents = redis_contents(redis_url)
    assert {kind for kind, _parts in contents.values()} >= {b"string", b"hash", b"set", b"zset", b"stream"}
    assert any(key_id.encode() in part for _kind, parts in contents.values() for part in parts)  # the scan reads
    assert not clear_text_in_redis(redis_url, [key, secret_of(key), wrong, secret_of(wrong)])


@pytest.mark.parametrize(("body", "pointer"), [
    ({"name": "Bad Name", "feeds": ["latest"], "formats": ["atom"]}, "/name"),
    ({"name": "x" * 65, "feeds": ["latest"], "formats": ["atom"]}, "/name"),
    ({"name": "ok", "feeds": ["nope"], "formats": ["atom"]}, "/feeds"),
    ({"name": "ok", "feeds": [], "formats": ["atom"]}, "/feeds"),
    ({"name": "ok", "feeds": ["latest"], "formats": ["pdf"]}, "/formats"),
    ({"name": "ok", "feeds": ["latest"], "formats": "atom"}, "/formats"),
    ({"name": "ok", "feeds": ["latest"], "formats": ["atom"], "colour": "red"}, "/colour"),
    ({"name": "ok", "feeds": ["latest"], "formats": ["atom"], "rate_limit": 0}, "/rate_limit"),
    ({"name": "ok", "feeds": ["latest"], "formats": ["atom"], "media": "yes"}, "/media"),
    ({"name": "ok", "feeds": ["latest"], "formats": ["atom"], "expires_at": "2001-01-01T00:00:00Z"}, "/expires_at"),
    ({"name": "ok", "feeds": ["latest"], "formats": ["atom"], "expires_at": "tomorrow"}, "/expires_at"),
    # Extreme years: outside the years 1 to 9999 once in UTC, or in the past (year 1 in UTC)
    ({"name": "ok", "feeds": ["latest"], "formats": ["atom"], "expires_at": "0001-01-01T00:00:00+01:00"}, "/expires_at"),
    ({"name": "ok", "feeds": ["latest"], "formats": ["atom"], "expires_at": "9999-12-31T23:59:59-01:00"}, "/expires_at"),
    ({"name": "ok", "feeds": ["latest"], "formats": ["atom"], "expires_at": "0001-01-01T00:00:00Z"}, "/expires_at"),
    ({"name": "ok", "feeds": ["latest"], "formats": ["atom"], "expires_at": "0001-01-01T00:00:00-01:00"}, "/expires_at"),
    ({"name": "ok", "feeds": ["latest"], "formats": ["atom"], "expires_at": "+10000-01-01T00:00:00Z"}, "/expires_at"),
    ({"name": "ok", "feeds": ["latest"], "formats": ["atom"], "expires_at": 99999999999}, "/expires_at"),
    ({"feeds": ["latest"], "formats": ["atom"]}, "/name"),
])
async def test_bad_partner_input_is_422_and_changes_nothing(client, redis_url, body, pointer):
    before = snapshot(redis_url)
    response = await client.post("/api/partners", data=orjson.dumps(body), headers=ADMIN_JSON)
    assert response.status == 422
    assert response.content_type == "application/problem+json"
    assert pointer in [e["pointer"] for e in (await response.json())["errors"]]
    assert snapshot(redis_url) == before


@pytest.mark.parametrize("expires_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                                        "0001-01-01T00:00:00Z", "2001-01-01T00:00:00Z", "tomorrow"])
async def test_a_new_key_with_an_extreme_or_past_expiry_is_422_and_changes_nothing(client, redis_url, expires_at):
    await create_partner(client, name="acme", feeds=["latest"], formats=["atom"])
    before = snapshot(redis_url)
    response = await client.post("/api/partners/acme/keys", data=orjson.dumps({"expires_at": expires_at}),
                                 headers=ADMIN_JSON)
    assert response.status == 422 and response.content_type == "application/problem+json"
    assert [e["pointer"] for e in (await response.json())["errors"]] == ["/expires_at"]
    assert snapshot(redis_url) == before


async def test_a_key_expiring_at_the_last_second_of_year_9999_works_and_is_shown(client):
    """The latest expiry there is: stored, shown as it was given (in UTC), and the key reads feeds."""
    created = await create_partner(client, name="acme", feeds=["latest"], formats=["atom"],
                                   expires_at="9999-12-31T23:59:59Z")
    issued = await client.post("/api/partners/acme/keys", data=orjson.dumps({"expires_at": "9999-12-31T23:59:59+00:00"}),
                               headers=ADMIN_JSON)
    assert issued.status == 201
    for key in (created["key"], (await issued.json())["key"]):
        assert (await client.get("/feeds/latest/atom", headers={"X-API-Key": key})).status == 200
    shown = await (await client.get("/api/partners/acme", headers=ADMIN)).json()
    assert [k["expiresAt"][:19] for k in shown["keys"]] == ["9999-12-31T23:59:59"] * 2


async def test_admin_api_needs_the_admin_token_and_odd_names_are_clean_4xx(client, redis_url):
    await create_partner(client, name="acme", feeds=["latest"], formats=["atom"])
    before = snapshot(redis_url)
    assert (await client.get("/api/partners")).status == 401
    assert (await client.get("/api/partners", headers=AUTH)).status == 403  # a publisher is not an admin
    for path in ("/api/partners/%2e%2e", "/api/partners/ACME", "/api/partners/a%00b", "/api/partners/" + "x" * 300,
                 "/api/partners/%E2%98%83/status"):
        response = await client.get(path, headers=ADMIN)
        assert response.status in (404, 422), path
        assert response.content_type == "application/problem+json"
    missing = await client.delete("/api/partners/acme/keys/deadbeef", headers=ADMIN)
    assert missing.status == 404
    dup = await client.post("/api/partners", data=orjson.dumps({"name": "acme", "feeds": ["latest"],
                                                                "formats": ["atom"]}), headers=ADMIN_JSON)
    assert dup.status == 409
    assert snapshot(redis_url) == before


async def test_the_401_403_matrix(client, seed_v1):
    await publish(client, seed_v1)
    french = {**seed_v1, "uri": seed_v1["uri"] + "-fr", "language": "fr"}  # in world, not in public headlines
    await publish(client, french)
    acme = await create_partner(client, name="acme", feeds=["world"], formats=["atom"])
    key = acme["key"]
    ok = {"X-API-Key": key}
    assert (await client.get("/feeds/world/atom", headers=ok)).status == 200
    assert (await client.get("/feeds/world/atom", headers={"Authorization": f"Bearer {key}"})).status == 200
    assert (await client.get(f"/feeds/world/atom?key={key}")).status == 200

    no_key = await client.get("/feeds/world/atom")
    assert no_key.status == 401 and no_key.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await client.get("/feeds/headlines/atom")).status == 200  # public: no key needed
    for bad in ("nonsense", "syn_00000000_" + "A" * 43, key[:-1] + ("B" if key[-1] != "B" else "C"),
                key + "x", "syn_" + key[4:].upper(), " " * 10, "é" * 40):
        response = await client.get("/feeds/world/atom", headers={"X-API-Key": bad.strip() or "x"})
        assert response.status == 401, bad
        assert key not in await response.text()
    assert (await client.get("/feeds/world/atom", headers={"Authorization": "Basic YTpi"})).status == 401
    assert (await client.get("/feeds/latest/atom", headers=ok)).status == 403  # feed not granted
    assert (await client.get("/feeds/world/rss", headers=ok)).status == 403  # format not granted
    french_id = article_id_for_uri(french["uri"])
    assert (await client.get(f"/items/{french_id}/newsml", headers=ok)).status == 403  # no newsml
    assert (await client.get(f"/items/{french_id}", headers=ok)).status == 403  # ninjs needs json
    assert (await client.get(f"/items/{french_id}")).status == 401
    english_id = article_id_for_uri(seed_v1["uri"])
    assert (await client.get(f"/items/{english_id}")).status == 200  # in a public feed (headlines)

    await client.patch("/api/partners/acme", data=orjson.dumps({"active": False}), headers=ADMIN_JSON)
    assert (await client.get("/feeds/world/atom", headers=ok)).status == 401  # disabled, at once
    await client.patch("/api/partners/acme", data=orjson.dumps({"active": True}), headers=ADMIN_JSON)
    assert (await client.get("/feeds/world/atom", headers=ok)).status == 200


async def test_expired_key_stops_working(client):
    from datetime import timedelta

    from server.core.values import iso, utc_now

    acme = await create_partner(client, name="acme", feeds=["latest"], formats=["atom"],
                                expires_at=iso(utc_now() + timedelta(seconds=1)))
    assert (await client.get("/feeds/latest/atom", headers={"X-API-Key": acme["key"]})).status == 200
    await asyncio.sleep(1.2)
    assert (await client.get("/feeds/latest/atom", headers={"X-API-Key": acme["key"]})).status == 401


async def test_partner_without_photo_rights_gets_feeds_without_photos(client, seed_v1):
    await publish(client, seed_v1)
    with_photos = (await create_partner(client, name="photos", feeds=["*"], formats=["*"]))["key"]
    without = (await create_partner(client, name="text-only", feeds=["*"], formats=["*"], media=False))["key"]
    full = await (await client.get("/feeds/latest/rss", headers={"X-API-Key": with_photos})).read()
    text = await (await client.get("/feeds/latest/rss", headers={"X-API-Key": without})).read()
    assert b"media:content" in full and b"kherson-rally.jpg" in full
    assert b"media:content" not in text and b"Kherson" in text  # the story stays, the photos go
    article_id = article_id_for_uri(seed_v1["uri"])
    item = await (await client.get(f"/items/{article_id}", headers={"X-API-Key": without})).json()
    assert "associations" not in item
    newsml = await (await client.get(f"/items/{article_id}/newsml", headers={"X-API-Key": without})).read()
    assert b"ninat:picture" not in newsml


async def test_rate_limit_with_headers_and_cheaper_304s(client, seed_v1):
    await publish(client, seed_v1)
    await room_in_rate_window()
    key = (await create_partner(client, name="slow", feeds=["latest"], formats=["atom"], rate_limit=2))["key"]
    headers = {"X-API-Key": key}
    first = await client.get("/feeds/latest/atom", headers=headers)
    assert first.status == 200
    assert first.headers["RateLimit-Policy"] == '"partner";q=2;w=60'
    assert first.headers["RateLimit"].startswith('"partner";r=1;')
    etag = first.headers["ETag"]
    not_modified = 0
    while not_modified < 50:
        response = await client.get("/feeds/latest/atom", headers={**headers, "If-None-Match": etag})
        if response.status != 304:
            break
        not_modified += 1
    assert 5 <= not_modified <= 11  # a 304 costs a tenth of a request
    assert response.status == 429
    assert int(response.headers["Retry-After"]) > 0 and "RateLimit" in response.headers
    assert response.content_type == "application/problem+json"

    fresh = (await create_partner(client, name="greedy", feeds=["latest"], formats=["atom"], rate_limit=2))["key"]
    statuses = [(await client.get("/feeds/latest/atom", headers={"X-API-Key": fresh})).status for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_rate_limit_is_shared_by_processes(aiohttp_client, settings, redis_url):
    key = await make_partner(redis_url, "shared", rate_limit=4)
    await room_in_rate_window()
    a = await aiohttp_client(create_app(settings))
    b = await aiohttp_client(create_app(settings))
    headers = {"X-API-Key": key}
    assert (await a.get("/feeds/latest/json", headers=headers)).status == 200
    assert (await a.get("/feeds/latest/json", headers=headers)).status == 200
    await asyncio.sleep(0.5)  # several flush intervals
    assert (await b.get("/feeds/latest/json", headers=headers)).status == 200
    assert (await b.get("/feeds/latest/json", headers=headers)).status == 200
    await asyncio.sleep(0.5)
    assert (await a.get("/feeds/latest/json", headers=headers)).status == 429
    assert (await b.get("/feeds/latest/json", headers=headers)).status == 429


async def test_failed_attempts_are_throttled_per_address_but_a_valid_key_still_works(client, settings):
    """The failed-key throttle (server.partners.throttle): past the failures a minute allowed from one
    address, a failed key is 429, not 401; a valid key from that address is never refused."""
    await room_in_rate_window()
    good = (await create_partner(client, name="acme", feeds=["latest"], formats=["atom"]))["key"]
    other = (await create_partner(client, name="other", feeds=["latest"], formats=["atom"]))["key"]
    assert (await client.get("/feeds/latest/atom", headers={"X-API-Key": good})).status == 200
    limit = settings.failed_keys_per_address
    statuses = [(await client.get("/feeds/latest/atom", headers={"X-API-Key": f"syn_{n:08x}_{'x' * 43}"})).status
                for n in range(limit + 5)]
    assert statuses[:limit] == [401] * limit and set(statuses[limit:]) == {429}
    refused = await client.get("/feeds/latest/atom", headers={"X-API-Key": "syn_0000ffff_" + "y" * 43})
    assert refused.status == 429 and refused.content_type == "application/problem+json"
    assert (await refused.json())["type"].endswith("/too-many-failures") and refused.headers["Retry-After"].isdigit()
    # Valid keys from the throttled address: the one already used, and one never seen before.
    assert (await client.get("/feeds/latest/atom", headers={"X-API-Key": good})).status == 200
    assert (await client.get("/feeds/latest/atom", headers={"Authorization": f"Bearer {other}"})).status == 200


async def test_seed_correction_outstanding_then_received(client, seed_v1, seed_v2):
    await publish(client, seed_v1)
    key = (await create_partner(client, name="partner-a", feeds=["latest"], formats=["atom"]))["key"]
    headers = {"X-API-Key": key}
    first = await client.get("/feeds/latest/atom", headers=headers)
    assert first.status == 200
    etag = first.headers["ETag"]

    await publish(client, seed_v2, "?signal=correction")
    status = await (await client.get("/api/partners/partner-a/status", headers=ADMIN)).json()
    assert status["lastPoll"] is not None and status["lastHour"]["polls"] == 1
    [entry] = status["articles"]
    assert entry["id"] == article_id_for_uri(seed_v1["uri"]) and entry["version"] == 2
    assert entry["kind"] == "correction" and entry["received"] is False
    assert entry["receivedVersion"] == 1 and entry["outstandingSeconds"] >= 0
    assert status["outstanding"] == 1

    again = await client.get("/feeds/latest/atom", headers={**headers, "If-None-Match": etag})
    assert again.status == 200  # the correction changed the feed
    assert feedparser.parse(await again.read()).entries[0].syndicate_version == "2"
    not_modified = await client.get("/feeds/latest/atom", headers={**headers, "If-None-Match": again.headers["ETag"]})
    assert not_modified.status == 304
    status = await (await client.get("/api/partners/partner-a/status", headers=ADMIN)).json()
    [entry] = status["articles"]
    assert entry["received"] is True and entry["receivedVersion"] == 2 and entry["outstandingSince"] is None
    assert status["lastHour"] == {"polls": 3, "notModified": 1, "notModifiedRatio": 0.333}

    # A partner not entitled to a feed that holds the article does not see it in its status.
    await create_partner(client, name="partner-b", feeds=["headlines"], formats=["atom"])
    await client.patch("/api/partners/partner-b", data=orjson.dumps({"feeds": ["world"]}), headers=ADMIN_JSON)
    status_b = await (await client.get("/api/partners/partner-b/status", headers=ADMIN)).json()
    # Who must receive a revision is decided when it is dispatched (issue 11): b was granted world after
    # the correction, so it owes world's later revisions, not that one.
    assert status_b["articles"] == []
    later = {**seed_v2, "versionCreated": "2030-01-01T00:00:00Z",
             "headlines": [{"role": "main", "value": "A later correction"}]}
    await publish(client, later, "?signal=correction")
    status_b = await (await client.get("/api/partners/partner-b/status", headers=ADMIN)).json()
    assert [(a["version"], a["received"]) for a in status_b["articles"]] == [(3, False)]  # world holds it


async def test_item_fetch_counts_as_received(client, seed_v1, seed_v2):
    # The partner exists before the correction: who must receive a revision is decided when it is
    # dispatched (issue 11), so a partner made later owes only later revisions.
    key = (await create_partner(client, name="items", feeds=["*"], formats=["newsml"]))["key"]
    await publish(client, seed_v1)
    await publish(client, seed_v2, "?signal=correction")
    article_id = article_id_for_uri(seed_v1["uri"])
    assert (await client.get(f"/items/{article_id}/newsml", headers={"X-API-Key": key})).status == 200
    status = await (await client.get("/api/partners/items/status", headers=ADMIN)).json()
    assert status["articles"][0]["received"] is True


def test_partner_cli(redis_url, tmp_path):
    env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(tmp_path / "var"))
    added = run_cli("partner", "add", "acme", "--feeds", "latest,world", "--formats", "atom,newsml", env=env)
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip().splitlines()[-1]
    assert key.startswith("syn_")
    listed = run_cli("partner", "list", env=env)
    assert "acme\tactive\tfeeds=latest,world\tformats=atom,newsml" in listed.stdout
    another = run_cli("partner", "key", "acme", env=env)
    key_id = another.stdout.split("key ")[1].split(" ")[0]
    assert run_cli("partner", "revoke", "acme", key_id, env=env).returncode == 0
    shown = orjson.loads(run_cli("partner", "show", "acme", env=env).stdout)
    assert [k["revokedAt"] is not None for k in shown["keys"]] == [False, True]
    assert run_cli("partner", "disable", "acme", env=env).returncode == 0
    assert orjson.loads(run_cli("partner", "show", "acme", env=env).stdout)["active"] is False
    for args, needle in ((["partner", "add", "acme", "--feeds", "latest", "--formats", "atom"], "exists"),
                         (["partner", "add", "x", "--feeds", "nope", "--formats", "atom"], "No feed"),
                         (["partner", "show", "ghost"], "No partner"),
                         (["partner", "revoke", "acme", "nokey"], "no key"),
                         (["partner", "add", "y", "--feeds", "latest", "--formats", "atom",
                           "--expires", "0001-01-01T00:00:00+01:00"], "years 1 to 9999"),
                         (["partner", "key", "acme", "--expires", "9999-12-31T23:59:59-01:00"], "years 1 to 9999"),
                         (["partner", "key", "acme", "--expires", "0001-01-01T00:00:00Z"], "in the future")):
        result = run_cli(*args, env=env)
        assert result.returncode != 0 and needle in result.stderr and result.stderr.count("\n") == 1, result.stderr


async def test_a_flush_waits_for_one_already_writing(redis_url):
    """The status endpoints flush before they read: a flush that finds the background flush holding
    the lines must wait until they are in Redis, not return at once with nothing to do."""
    from server.core.redis_connection import connect
    from server.core.values import utc_now
    from server.partners.ledger import PollLedger

    redis = await connect(redis_url)
    writing_pipeline = redis.pipeline

    def slow_pipeline(*args, **kwargs):  # the background flush's writes take a while to reach Redis
        pipe = writing_pipeline(*args, **kwargs)
        execute = pipe.execute

        async def slow_execute(*a, **k):
            await asyncio.sleep(0.3)
            return await execute(*a, **k)

        pipe.execute = slow_execute
        return pipe

    try:
        ledger = PollLedger(redis)
        redis.pipeline = slow_pipeline
        for n in range(50):
            ledger.record("acme", None, "latest", "atom", 200, 100, f"render-{n}")
        background = asyncio.create_task(ledger.flush())
        await asyncio.sleep(0.05)  # it has taken the lines and is writing them
        await ledger.flush()
        lines = await ledger.read("acme", utc_now() - timedelta(minutes=1))
        assert len(lines) == 50
        assert await background == 50
    finally:
        await redis.aclose()


async def test_an_older_version_is_served_only_when_the_partner_may_read_that_version(client, seed_v1):
    """``/items/{id}/newsml?version=N`` is judged at version N: never a withheld revision, never one
    that only feeds the partner cannot read held (here v1 was outside world, v3 was withheld)."""
    acme = await create_partner(client, name="acme", feeds=["world"], formats=["newsml"])
    ok = {"X-API-Key": acme["key"]}
    french = {**seed_v1, "uri": seed_v1["uri"] + "-refiled", "language": "fr"}  # not in public headlines
    sport = {**french, "subjects": [{"name": "sport", "literal": "sport"}]}  # in latest only
    await publish(client, sport)
    await publish(client, {**french, "versionCreated": "2030-01-01T00:00:00Z"}, "?signal=update")  # to world
    article_id = article_id_for_uri(french["uri"])
    assert (await client.get(f"/items/{article_id}/newsml", headers=ok)).status == 200
    assert (await client.get(f"/items/{article_id}/newsml?version=2", headers=ok)).status == 200
    assert (await client.get(f"/items/{article_id}/newsml?version=1", headers=ok)).status == 403
    await publish(client, {**french, "versionCreated": "2030-01-02T00:00:00Z", "pubStatus": "withheld"},
                  "?signal=update")
    await publish(client, {**french, "versionCreated": "2030-01-03T00:00:00Z"}, "?signal=update")
    assert (await client.get(f"/items/{article_id}/newsml?version=4", headers=ok)).status == 200
    withheld = await client.get(f"/items/{article_id}/newsml?version=3", headers=ok)
    assert withheld.status == 404 and withheld.content_type == "application/problem+json"
    # Ops (the admin token) read everything, the withheld revision included.
    assert (await client.get(f"/items/{article_id}/newsml?version=3", headers=ADMIN)).status == 200



async def test_without_photo_rights_no_picture_reaches_the_partner_in_any_form(client, seed_v1):
    """Not as a media element, not as an inline <img> in the body, not as its caption ("... AP")."""
    await publish(client, seed_v1)
    caption = "rally against the Russian occupation in Kherson, Ukraine. AP"
    with_photos = (await create_partner(client, name="photos", feeds=["*"], formats=["*"]))["key"]
    without = (await create_partner(client, name="text-only", feeds=["*"], formats=["*"], media=False))["key"]
    article_id = article_id_for_uri(seed_v1["uri"])
    paths = [f"/feeds/latest/{fmt}" for fmt in ("rss", "atom", "newsml", "json")]
    paths += [f"/items/{article_id}", f"/items/{article_id}/newsml"]
    for path in paths:
        full = await (await client.get(path, headers={"X-API-Key": with_photos})).text()
        assert "kherson-rally.jpg" in full and caption in full, path
        text = await (await client.get(path, headers={"X-API-Key": without})).text()
        assert "kherson-rally.jpg" not in text and caption not in text and "<img" not in text, path
        assert "Kherson" in text, path  # the story stays


async def test_a_revision_under_its_own_embargo_is_not_served_by_version(client, seed_v1):
    """v2 was embargoed to 2099; v3 lifted nothing about v2: ?version=2 stays unreadable."""
    acme = await create_partner(client, name="acme", feeds=["latest"], formats=["newsml"])
    ok = {"X-API-Key": acme["key"]}
    french = {**seed_v1, "uri": seed_v1["uri"] + "-embargo", "language": "fr"}
    await publish(client, french)
    await publish(client, {**french, "versionCreated": "2030-01-01T00:00:00Z", "embargoedUntil": "2099-01-01T00:00:00Z",
                           "headlines": [{"role": "main", "value": "SECRET v2"}]}, "?signal=update")
    await publish(client, {**french, "versionCreated": "2030-01-02T00:00:00Z"}, "?signal=update")
    article_id = article_id_for_uri(french["uri"])
    assert (await client.get(f"/items/{article_id}/newsml?version=3", headers=ok)).status == 200
    embargoed = await client.get(f"/items/{article_id}/newsml?version=2", headers=ok)
    assert embargoed.status == 404 and "SECRET" not in await embargoed.text()


async def test_without_a_key_nothing_is_learnt_of_items_outside_the_public_feeds(client, seed_v1):
    """An unknown id, a private item and a version out of range all answer 401 to a caller without a
    key; only items of public feeds are 200 (or their own errors)."""
    french = {**seed_v1, "uri": seed_v1["uri"] + "-private", "language": "fr"}  # in no public feed
    await publish(client, french)
    await publish(client, seed_v1)  # English: in the public headlines
    private, public = article_id_for_uri(french["uri"]), article_id_for_uri(seed_v1["uri"])
    for path in ("/items/aaaaaaaaaaaaaaaa", "/items/aaaaaaaaaaaaaaaa/newsml", f"/items/{private}",
                 f"/items/{private}/newsml", f"/items/{private}/newsml?version=99"):
        response = await client.get(path)
        assert response.status == 401, (path, response.status)
    assert (await client.get(f"/items/{public}")).status == 200
    assert (await client.get(f"/items/{public}/newsml?version=99")).status == 400
