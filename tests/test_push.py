"""Push (issue 5): the WebSub hub and partners' signed webhooks on the durable Redis queue.

Real HTTP both ways: the server is the app under ``aiohttp_client`` (its in-process worker pushes), or a
``syndicate serve`` process for crash-and-resume; the receiver is :class:`push_helpers.Subscriber`, an
aiohttp app on 127.0.0.1. Redis is the tests' own. Waits poll every 20 ms with generous slack; the
only timing assertions are lower bounds (an embargo is not pushed before it passes, Retry-After is
honoured).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

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
    make_partner,
    room_in_rate_window,
    run_cli,
)
from lxml import etree
from push_helpers import (
    ATOM,
    Behaviour,
    Subscriber,
    atom_entries,
    atom_entry,
    entry_c14n,
    entry_fields,
    entry_version,
    parse_link_header,
    stays_false,
    wait_for,
    webhook_signature,
    websub_signature,
)
from render_helpers import newsml_errors

from server.core import keys
from server.core.values import iso, utc_now
from server.domain.articles import article_id_for_uri
from server.http.app import create_app
from server.http.state import HUB_TASKS
from server.push import dispatcher as push_dispatcher
from server.push import retry as push_retry

JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
ADMIN_JSON = {**ADMIN, "Content-Type": "application/json"}
SECRET = "s3cret-for-the-tests-0123456789"


# ----- fixtures and small helpers -------------------------------------------------------------------



@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(push_retry, "BACKOFF_BASE_SECONDS", 0.05)


def topic_url(settings, path: str) -> str:
    return settings.base_url + path


async def hub_request(client, callback: str, topic: str, *, mode: str = "subscribe", secret: str | None = None,
                      lease: str | None = None, headers: dict | None = None, **extra: str):
    form = {"hub.mode": mode, "hub.callback": callback, "hub.topic": topic, **extra}
    if secret is not None:
        form["hub.secret"] = secret
    if lease is not None:
        form["hub.lease_seconds"] = lease
    return await client.post("/hub", data=form, headers=headers or {})


def destinations(redis) -> dict[str, dict]:
    """Every push destination's record, by id."""
    found = {}
    for destination_id in redis.smembers(keys.destination_ids()):
        raw = redis.get(keys.destination(destination_id))
        if raw:
            found[destination_id] = orjson.loads(raw)
    return found


def subscriptions_to(redis, callback: str) -> list[dict]:
    return [d for d in destinations(redis).values() if d["kind"] == "websub" and d["url"] == callback]


async def hub_idle(client) -> None:
    """Wait until every verification of intent the hub started has finished."""
    await wait_for(lambda: not client.server.app[HUB_TASKS], message="the hub's verifications to finish")


async def subscribe_verified(client, redis, receiver: Subscriber, topic: str, path: str = "/callback",
                             **options) -> dict:
    callback = receiver.url(path)
    response = await hub_request(client, callback, topic, **options)
    assert response.status == 202, await response.text()
    [record] = await wait_for(lambda: subscriptions_to(redis, callback), message="the subscription")
    return record


async def publish(client, doc: dict, query: str = "") -> dict:
    response = await client.post(f"/api/articles{query}", data=orjson.dumps(doc), headers=JSON_HEADERS)
    assert response.status in (200, 201), await response.text()
    return await response.json()


async def kill(client, article_id: str) -> None:
    response = await client.delete(f"/api/articles/{article_id}", headers=AUTH)
    assert response.status == 200, await response.text()


async def create_partner(client, **body) -> dict:
    response = await client.post("/api/partners", data=orjson.dumps(body), headers=ADMIN_JSON)
    assert response.status == 201, await response.text()
    return await response.json()


async def add_endpoint(client, partner: str, url: str, fmt: str, secret: str = SECRET) -> dict:
    response = await client.post(f"/api/partners/{partner}/endpoints",
                                 data=orjson.dumps({"url": url, "format": fmt, "secret": secret}), headers=ADMIN_JSON)
    assert response.status == 201, await response.text()
    return await response.json()


def fanned_out(redis) -> bool:
    """Every change in the log has been fanned out and nothing is waiting to be delivered."""
    stream = redis.xinfo_stream(keys.changelog())
    [group] = [g for g in redis.xinfo_groups(keys.changelog()) if g["name"] == keys.DISPATCH_GROUP]
    return (group["last-delivered-id"] == stream["last-generated-id"] and group["pending"] == 0
            and redis.zcard(keys.push_due()) == 0 and redis.zcard(keys.push_leased()) == 0)


def delivery_versions(receiver: Subscriber, only_ok: bool = False) -> list[int]:
    """The syndicate:version of each Atom POST (entry or one-entry feed document), in arrival order."""
    posts = receiver.delivered if only_ok else receiver.posts
    return [entry_version(atom_entries(p.body)[0]) for p in posts]


def assert_webhook_signed(post, secret: str = SECRET) -> None:
    timestamp = post.headers["X-Syndicate-Timestamp"]
    assert timestamp.isdigit() and abs(int(timestamp) - time.time()) < 300
    assert post.headers["X-Syndicate-Signature"] == webhook_signature(secret, timestamp, post.body)
    assert len(post.headers["X-Syndicate-Delivery"]) >= 16


# ----- 1. subscribing -------------------------------------------------------------------------------

async def test_subscribe_to_a_public_feed_is_verified_by_echoing_the_challenge(push, push_settings, sync_redis,
                                                                               receivers):
    receiver = await receivers()
    topic = topic_url(push_settings, "/feeds/headlines/atom")
    response = await hub_request(push, receiver.url(), topic, **{"hub.unknown": "x", "utm_source": "y"})
    assert response.status == 202  # unknown parameters are ignored

    [verification] = await wait_for(lambda: receiver.verifications_of("subscribe"), message="verification")
    query = verification.query
    assert query["hub.mode"] == "subscribe" and query["hub.topic"] == topic
    assert len(query["hub.challenge"]) >= 16
    assert query["hub.lease_seconds"] == str(push_settings.websub_lease_default)  # 10 days, never perpetual
    [record] = await wait_for(lambda: subscriptions_to(sync_redis, receiver.url()), message="the subscription")
    assert record["topic"] == topic and record["feed"] == "headlines" and record["format"] == "atom"
    assert record["partner"] is None and record["expiresAt"] is not None

    # The challenge is single-use: a second subscription gets a new one.
    again = await hub_request(push, receiver.url(), topic)
    assert again.status == 202
    await wait_for(lambda: len(receiver.verifications_of("subscribe")) == 2, message="second verification")
    first, second = receiver.verifications_of("subscribe")
    assert first.query["hub.challenge"] != second.query["hub.challenge"]
    await hub_idle(push)
    assert len(subscriptions_to(sync_redis, receiver.url())) == 1  # replaced, not doubled


@pytest.mark.parametrize("verify", ["wrong", "refuse"])
async def test_a_verification_not_echoing_the_challenge_makes_no_subscription(push, push_settings, sync_redis,
                                                                              receivers, verify):
    receiver = await receivers(Behaviour(verify=verify))
    response = await hub_request(push, receiver.url(), topic_url(push_settings, "/feeds/headlines/atom"))
    assert response.status == 202
    await wait_for(lambda: receiver.verifications_of("subscribe"), message="verification")
    await hub_idle(push)
    assert destinations(sync_redis) == {}


async def test_resubscription_replaces_only_once_verified_and_unsubscribe_is_verified(push, push_settings,
                                                                                      sync_redis, receivers):
    receiver = await receivers()
    topic = topic_url(push_settings, "/feeds/headlines/atom")
    record = await subscribe_verified(push, sync_redis, receiver, topic, secret="first-secret-0123456789")
    receiver.behaviour.verify = "refuse"
    assert (await hub_request(push, receiver.url(), topic, secret="second-secret-0123456789")).status == 202
    await wait_for(lambda: len(receiver.verifications_of("subscribe")) == 2, message="re-verification")
    await hub_idle(push)
    [kept] = subscriptions_to(sync_redis, receiver.url())
    assert kept["secret"] == "first-secret-0123456789" and kept["id"] == record["id"]

    # Unsubscribing is verified too; refused, the subscription stays; echoed, it goes.
    assert (await hub_request(push, receiver.url(), topic, mode="unsubscribe")).status == 202
    await wait_for(lambda: receiver.verifications_of("unsubscribe"), message="unsubscribe verification")
    await hub_idle(push)
    assert subscriptions_to(sync_redis, receiver.url())
    receiver.behaviour.verify = "echo"
    assert (await hub_request(push, receiver.url(), topic, mode="unsubscribe")).status == 202
    await wait_for(lambda: not subscriptions_to(sync_redis, receiver.url()), message="unsubscribed")
    last = receiver.verifications_of("unsubscribe")[-1]
    assert last.query["hub.topic"] == topic and "hub.lease_seconds" not in last.query


async def test_bad_hub_requests_are_plain_text_4xx(push, push_settings, sync_redis, receivers):
    receiver = await receivers()
    callback = receiver.url()
    topic = topic_url(push_settings, "/feeds/headlines/atom")
    cases = [
        ({"secret": "x" * 200}, 400),  # hub.secret must be less than 200 bytes
        ({"secret": "é" * 100}, 400),  # 200 bytes in UTF-8
        ({"mode": "publish"}, 400),
        ({"mode": ""}, 400),
        ({"lease": "-5"}, 400),
        ({"lease": "ten"}, 400),
    ]
    for options, status in cases:
        response = await hub_request(push, callback, topic, **options)
        assert response.status == status, options
        assert response.content_type == "text/plain", options
    for bad_topic in ("http://elsewhere.example/feeds/headlines/atom", f"{push_settings.base_url}/feeds/nope/atom",
                      f"{push_settings.base_url}/feeds/headlines/pdf", f"{push_settings.base_url}/items/abc",
                      "not a url", "http://[x/feeds/headlines/atom"):  # (urlsplit raises on the last)
        response = await hub_request(push, callback, bad_topic)
        assert response.status == 400 and response.content_type == "text/plain", bad_topic
    missing = await push.post("/hub", data={"hub.mode": "subscribe", "hub.topic": topic})
    assert missing.status == 400 and missing.content_type == "text/plain"
    as_json = await push.post("/hub", data=orjson.dumps({"hub.mode": "subscribe", "hub.callback": callback,
                                                         "hub.topic": topic}),
                              headers={"Content-Type": "application/json"})
    assert as_json.status == 415 and as_json.content_type == "text/plain"
    for content_type, body in (("application/x-www-form-urlencoded; charset=no-such-charset", b"hub.mode=subscribe"),
                               ("application/x-www-form-urlencoded", b"hub.mode=\xff\xfe")):  # not UTF-8
        unreadable = await push.post("/hub", data=body, headers={"Content-Type": content_type})
        assert unreadable.status == 400 and unreadable.content_type == "text/plain", await unreadable.text()
        assert (await unreadable.text()).startswith("The form could not be read")
    ok = await hub_request(push, callback, topic, secret="y" * 199)  # 199 bytes is fine
    assert ok.status == 202
    await wait_for(lambda: subscriptions_to(sync_redis, callback), message="the subscription")
    assert len(receiver.verifications) == 1  # no refused request ever reached the subscriber


# ----- 2. non-public topics -------------------------------------------------------------------------

async def test_non_public_topic_needs_an_entitled_key(push, push_settings, sync_redis, receivers):
    acme = await create_partner(push, name="acme", feeds=["latest"], formats=["atom"])
    await create_partner(push, name="worldly", feeds=["world"], formats=["atom"])
    narrow = await create_partner(push, name="rss-only", feeds=["latest"], formats=["rss"])
    worldly_key = (await (await push.post("/api/partners/worldly/keys", headers=ADMIN)).json())["key"]
    receiver = await receivers()
    topic = topic_url(push_settings, "/feeds/latest/atom")

    for headers, why in (({}, "no key"), ({"Authorization": "Bearer syn_nonsense"}, "unknown key"),
                         ({"Authorization": f"Bearer {worldly_key}"}, "feed not granted"),
                         ({"Authorization": f"Bearer {narrow['key']}"}, "format not granted")):
        response = await hub_request(push, receiver.url(), topic, headers=headers)
        assert response.status == 403, why
        assert response.content_type == "text/plain", why
        assert (await response.text()).strip(), why
    assert (await hub_request(push, receiver.url(), f"{topic}?key={worldly_key}")).status == 403

    by_header = await subscribe_verified(push, sync_redis, receiver, topic, path="/bearer",
                                         headers={"Authorization": f"Bearer {acme['key']}"})
    by_query = await subscribe_verified(push, sync_redis, receiver, f"{topic}?key={acme['key']}", path="/query")
    for record in (by_header, by_query):
        assert record["topic"] == topic  # stored without the key
        assert record["partner"] == "acme" and record["keyId"] == acme["key_id"]
    assert "sealedTopic" not in by_header and by_query["sealedTopic"].startswith("v1.")
    raw = orjson.dumps(destinations(sync_redis))
    assert acme["key"].encode() not in raw  # only the key id is stored, and the topic as sent sealed
    # WebSub 5.3: the verification carries hub.topic exactly as each subscriber sent it.
    echoed = {v.path: v.query["hub.topic"] for v in receiver.verifications}
    assert echoed == {"/bearer": topic, "/query": f"{topic}?key={acme['key']}"}
    listed = await (await push.get("/api/partners/acme/endpoints", headers=ADMIN)).json()
    assert sorted(s["url"] for s in listed["subscriptions"]) == [receiver.url("/bearer"), receiver.url("/query")]


# ----- 3 and 4. content distribution over WebSub -----------------------------------------------------

async def test_websub_delivery_is_the_topic_document_signed_with_hub_secret(push, push_settings, sync_redis,
                                                                            receivers, seed_v1):
    receiver = await receivers()
    topic = topic_url(push_settings, "/feeds/headlines/atom")
    await subscribe_verified(push, sync_redis, receiver, topic, secret=SECRET)
    await publish(push, seed_v1)

    [post] = await wait_for(lambda: receiver.delivered, message="the delivery")
    assert post.headers["Content-Type"].split(";")[0].strip() == "application/atom+xml"
    links = parse_link_header(post.headers["Link"])
    assert links["hub"] == f"{push_settings.base_url}/hub" and links["self"] == topic
    assert post.headers["X-Hub-Signature"] == websub_signature(SECRET, post.body)
    entry = atom_entry(post.body, seed_v1["uri"])
    assert entry is not None and entry_version(entry) == 1
    assert "convicts" in entry.findtext(f"{ATOM}title")
    assert len(atom_entries(post.body)) == 1  # the entries that changed, not the whole feed

    # Without a secret there is no signature.
    plain = await receivers()
    await subscribe_verified(push, sync_redis, plain, topic)
    await publish(push, {**seed_v1, "uri": seed_v1["uri"] + "-2"})
    [unsigned] = await wait_for(lambda: plain.delivered, message="the unsigned delivery")
    assert "X-Hub-Signature" not in unsigned.headers


async def test_seed_scenario_over_websub_v1_correction_kill_in_order_as_the_feed_shows_them(
        push, push_settings, sync_redis, receivers, seed_v1, seed_v2):
    receiver = await receivers()
    await subscribe_verified(push, sync_redis, receiver, topic_url(push_settings, "/feeds/headlines/atom"),
                             secret=SECRET)
    article_id = article_id_for_uri(seed_v1["uri"])
    steps = [
        ("v1", lambda: publish(push, seed_v1)),
        ("v2 correction", lambda: publish(push, seed_v2, "?signal=correction")),
        ("kill", lambda: kill(push, article_id)),
    ]
    for number, (name, step) in enumerate(steps, start=1):
        await step()
        await wait_for(lambda n=number: len(receiver.delivered) >= n, message=f"the {name} delivery")
        post = receiver.delivered[number - 1]
        assert post.headers["X-Hub-Signature"] == websub_signature(SECRET, post.body)
        pushed = atom_entry(post.body, seed_v1["uri"])
        feed = await push.get("/feeds/headlines/atom")
        assert feed.status == 200
        shown = atom_entry(await feed.read(), seed_v1["uri"])
        assert pushed is not None and shown is not None, name
        assert entry_version(pushed) == number, name
        assert entry_fields(pushed) == entry_fields(shown), name
        assert entry_c14n(pushed) == entry_c14n(shown), name  # exactly as the feed shows it

    v1, v2, killed = (atom_entry(p.body, seed_v1["uri"]) for p in receiver.delivered)
    assert v2.findtext("{urn:x-syndicate:feed-extension:1}signal") == "correction"
    assert killed.findtext("{urn:x-syndicate:feed-extension:1}pubStatus") == "canceled"
    assert killed.findtext(f"{ATOM}title").startswith("Withdrawn")
    assert killed.find(f"{ATOM}content") is None
    assert delivery_versions(receiver) == [1, 2, 3]  # in order, nothing twice


# ----- 5. partner webhooks --------------------------------------------------------------------------

async def test_partner_webhooks_in_three_formats_signed_listed_and_removed(push, sync_redis, receivers,
                                                                          seed_v1, seed_v2):
    await create_partner(push, name="acme", feeds=["*"], formats=["*"])
    receiver = await receivers()
    secrets = {"ninjs": "ninjs-secret-0123456789", "newsml": "newsml-secret-0123456789",
               "atom": "atom-secret-0123456789abc"}
    endpoints = {}
    for fmt, secret in secrets.items():
        endpoint = await add_endpoint(push, "acme", receiver.url(f"/{fmt}"), fmt, secret)
        assert endpoint["format"] == fmt and endpoint["url"] == receiver.url(f"/{fmt}")
        assert endpoint["secret"] == "set"
        endpoints[fmt] = endpoint
    listing = await push.get("/api/partners/acme/endpoints", headers=ADMIN)
    assert listing.status == 200
    listed = await listing.json()
    assert sorted(e["id"] for e in listed["items"]) == sorted(e["id"] for e in endpoints.values())
    text = await listing.text()
    assert not any(secret in text for secret in secrets.values())  # the secrets are never shown

    await publish(push, seed_v1)
    await wait_for(lambda: len(receiver.delivered) == 3, message="three deliveries")
    by_path = {p.path.strip("/"): p for p in receiver.delivered}
    assert set(by_path) == set(secrets)
    for fmt, post in by_path.items():
        assert_webhook_signed(post, secrets[fmt])
    assert len({p.headers["X-Syndicate-Delivery"] for p in by_path.values()}) == 3  # one per endpoint

    ninjs = by_path["ninjs"]
    assert ninjs.headers["Content-Type"].startswith("application/json")
    assert orjson.loads(ninjs.body)["uri"] == seed_v1["uri"]
    newsml = by_path["newsml"]
    assert "xml" in newsml.headers["Content-Type"]
    assert newsml_errors(newsml.body) == []
    assert b"newsItem" in newsml.body
    atom = by_path["atom"]
    assert atom.headers["Content-Type"].startswith("application/atom+xml")
    assert entry_version(atom_entries(atom.body)[0]) == 1

    # A signature made with another secret, or over another timestamp, does not verify.
    assert ninjs.headers["X-Syndicate-Signature"] != webhook_signature(secrets["atom"],
                                                                      ninjs.headers["X-Syndicate-Timestamp"],
                                                                      ninjs.body)
    assert ninjs.headers["X-Syndicate-Signature"] != webhook_signature(
        secrets["ninjs"], str(int(ninjs.headers["X-Syndicate-Timestamp"]) + 1), ninjs.body)

    removed = await push.delete(f"/api/partners/acme/endpoints/{endpoints['ninjs']['id']}", headers=ADMIN)
    assert removed.status == 204
    again = await push.delete(f"/api/partners/acme/endpoints/{endpoints['ninjs']['id']}", headers=ADMIN)
    assert again.status == 404 and again.content_type == "application/problem+json"
    listed = await (await push.get("/api/partners/acme/endpoints", headers=ADMIN)).json()
    assert sorted(e["format"] for e in listed["items"]) == ["atom", "newsml"]

    await publish(push, seed_v2, "?signal=correction")
    await wait_for(lambda: len(receiver.delivered) == 5, message="the correction to the two endpoints left")
    await wait_for(lambda: fanned_out(sync_redis), message="nothing left to deliver")
    assert sorted(p.path for p in receiver.delivered[3:]) == ["/atom", "/newsml"]
    assert newsml_errors(next(p for p in receiver.delivered[3:] if p.path == "/newsml").body) == []


@pytest.mark.parametrize(("body", "pointer"), [
    ({"url": "http://10.1.2.3/hook", "format": "ninjs", "secret": SECRET}, "/url"),
    ({"url": "http://169.254.169.254/latest/meta-data", "format": "ninjs", "secret": SECRET}, "/url"),
    ({"url": "ftp://127.0.0.1/hook", "format": "ninjs", "secret": SECRET}, "/url"),
    ({"url": "http://user:pw@127.0.0.1/hook", "format": "ninjs", "secret": SECRET}, "/url"),
    ({"url": "/relative/hook", "format": "ninjs", "secret": SECRET}, "/url"),
    ({"format": "ninjs", "secret": SECRET}, "/url"),
    ({"url": "http://127.0.0.1/hook", "format": "ninjs", "secret": "short"}, "/secret"),
    ({"url": "http://127.0.0.1/hook", "format": "ninjs", "secret": "x" * 200}, "/secret"),
    ({"url": "http://127.0.0.1/hook", "format": "ninjs"}, "/secret"),
    ({"url": "http://127.0.0.1/hook", "format": "pdf", "secret": SECRET}, "/format"),
    ({"url": "http://127.0.0.1/hook", "secret": SECRET}, "/format"),
    ({"url": "http://127.0.0.1/hook", "format": "ninjs", "secret": SECRET, "colour": "red"}, "/colour"),
])
async def test_bad_endpoint_input_is_422_and_stores_nothing(push, sync_redis, body, pointer):
    await create_partner(push, name="acme", feeds=["*"], formats=["*"])
    response = await push.post("/api/partners/acme/endpoints", data=orjson.dumps(body), headers=ADMIN_JSON)
    assert response.status == 422, await response.text()
    assert response.content_type == "application/problem+json"
    assert pointer in [e["pointer"] for e in (await response.json())["errors"]]
    assert destinations(sync_redis) == {}


async def test_endpoint_api_needs_admin_and_a_known_partner(push, sync_redis):
    body = orjson.dumps({"url": "http://127.0.0.1:9/hook", "format": "ninjs", "secret": SECRET})
    assert (await push.post("/api/partners/ghost/endpoints", data=body, headers=ADMIN_JSON)).status == 404
    await create_partner(push, name="acme", feeds=["*"], formats=["*"])
    assert (await push.post("/api/partners/acme/endpoints", data=body)).status == 401
    assert (await push.post("/api/partners/acme/endpoints", data=body, headers=JSON_HEADERS)).status == 403
    assert (await push.get("/api/partners/acme/endpoints", headers=AUTH)).status == 403
    not_json = await push.post("/api/partners/acme/endpoints", data=b"url=x", headers=ADMIN_JSON)
    assert 400 <= not_json.status < 500 and not_json.content_type == "application/problem+json"
    assert destinations(sync_redis) == {}


# ----- 6. retries -----------------------------------------------------------------------------------

async def test_a_failing_endpoint_is_retried_with_the_same_delivery_id_until_it_recovers(
        push, sync_redis, receivers, seed_v1, fast_backoff):
    await create_partner(push, name="acme", feeds=["*"], formats=["*"])
    receiver = await receivers(Behaviour(fail_status=503, fail_times=2))
    endpoint = await add_endpoint(push, "acme", receiver.url(), "ninjs")
    await publish(push, seed_v1)

    await wait_for(lambda: receiver.delivered, message="the delivery after two failures")
    assert [p.answered for p in receiver.posts] == [503, 503, 200]
    ids = {p.headers["X-Syndicate-Delivery"] for p in receiver.posts}
    assert len(ids) == 1  # the same delivery id on every attempt
    for post in receiver.posts:
        assert_webhook_signed(post)
        assert post.body == receiver.posts[0].body

    article_id = article_id_for_uri(seed_v1["uri"])

    def attempts():
        return [f for _id, f in sync_redis.xrange(keys.push_attempts()) if f["destination"] == endpoint["id"]]

    await wait_for(lambda: len(attempts()) == 3, message="three recorded attempts")
    recorded = attempts()
    assert [a["attempt"] for a in recorded] == ["1", "2", "3"]
    assert [a["status"] for a in recorded] == ["503", "503", "200"]
    assert [a["ok"] for a in recorded] == ["0", "0", "1"]
    assert {a["article"] for a in recorded} == {article_id} and {a["version"] for a in recorded} == {"1"}
    assert {a["delivery"] for a in recorded} == ids
    assert all(float(a["latencyMs"]) >= 0 for a in recorded) and recorded[0]["error"]
    await wait_for(lambda: fanned_out(sync_redis), message="the queue to empty")
    assert sync_redis.hlen(keys.push_failed()) == 0


async def test_retry_after_is_honoured(push, sync_redis, receivers, seed_v1, fast_backoff):
    await create_partner(push, name="acme", feeds=["*"], formats=["*"])
    receiver = await receivers(Behaviour(fail_status=429, fail_times=1, retry_after="1"))
    await add_endpoint(push, "acme", receiver.url(), "ninjs")
    await publish(push, seed_v1)
    await wait_for(lambda: receiver.delivered, message="the delivery after a 429")
    first, second = receiver.posts
    assert first.answered == 429 and second.answered == 200
    assert second.at - first.at >= 0.9  # not the 50 ms backoff: the receiver asked for a second


@pytest.mark.parametrize("status", [400, 404, 302])
async def test_a_4xx_is_not_retried_and_the_delivery_is_kept_as_failed(push, sync_redis, receivers, seed_v1,
                                                                      fast_backoff, status):
    behaviour = Behaviour(fail_status=status, fail_times=100)
    receiver = await receivers(behaviour)
    if status == 302:  # redirects are not followed
        behaviour.fail_times = 0
        behaviour.redirect_to = receiver.url("/elsewhere")
    await create_partner(push, name="acme", feeds=["*"], formats=["*"])
    endpoint = await add_endpoint(push, "acme", receiver.url(), "ninjs")
    await publish(push, seed_v1)
    article_id = article_id_for_uri(seed_v1["uri"])
    member = f"{endpoint['id']}|{article_id}"
    raw = await wait_for(lambda: sync_redis.hget(keys.push_failed(), member), message="the delivery given up")
    failure = orjson.loads(raw)
    assert failure["lastStatus"] == status and failure["attempts"] == 1
    assert failure["article"] == article_id and failure["version"] == 1 and failure["url"] == receiver.url()
    await wait_for(lambda: fanned_out(sync_redis), message="the queue to empty")
    assert await stays_false(lambda: len(receiver.posts) > 1, 0.5)  # no retry
    assert receiver.others == []  # the redirect was not followed


# ----- 7. supersede ---------------------------------------------------------------------------------

async def test_v2_and_the_kill_supersede_a_failing_v1_and_v1_never_arrives_after_v2(
        push, sync_redis, receivers, seed_v1, seed_v2, monkeypatch):
    monkeypatch.setattr(push_retry, "BACKOFF_BASE_SECONDS", 0.1)
    await create_partner(push, name="acme", feeds=["*"], formats=["*"])
    receiver = await receivers(Behaviour(fail_status=503, fail_times=10**6))
    endpoint = await add_endpoint(push, "acme", receiver.url(), "atom")
    article_id = article_id_for_uri(seed_v1["uri"])

    await publish(push, seed_v1)
    await wait_for(lambda: len(receiver.posts) >= 2, message="v1 failing twice")
    await publish(push, seed_v2, "?signal=correction")
    await wait_for(lambda: 2 in delivery_versions(receiver), message="v2 attempted")
    await kill(push, article_id)
    await wait_for(lambda: 3 in delivery_versions(receiver), message="the kill attempted (not waiting behind v1)")
    receiver.behaviour.fail_times = 0  # the endpoint recovers
    await wait_for(lambda: receiver.delivered, message="a successful delivery")
    await wait_for(lambda: fanned_out(sync_redis), message="the queue to empty")

    versions = delivery_versions(receiver)
    assert versions == sorted(versions)  # never an older version after a newer one
    assert delivery_versions(receiver, only_ok=True) == [3]  # the endpoint ends with the kill, once
    last = receiver.delivered[-1]
    assert atom_entries(last.body)[0].findtext("{urn:x-syndicate:feed-extension:1}pubStatus") == "canceled"
    assert_webhook_signed(last)
    # Each revision has its own delivery id; every attempt of one revision carries the same one.
    by_version: dict[int, set[str]] = {}
    for version, post in zip(versions, receiver.posts, strict=True):
        by_version.setdefault(version, set()).add(post.headers["X-Syndicate-Delivery"])
    assert all(len(ids) == 1 for ids in by_version.values())
    assert len(set().union(*by_version.values())) == len(by_version)
    assert sync_redis.hlen(keys.push_failed()) == 0
    assert sync_redis.exists(keys.push_latest(endpoint["id"])) == 0


# ----- 8 and 9. a subscription ends: 410, lease expiry ------------------------------------------------

async def test_410_from_a_websub_callback_ends_the_subscription(push, push_settings, sync_redis, receivers,
                                                                seed_v1, seed_v2):
    receiver = await receivers(Behaviour(gone=True))
    record = await subscribe_verified(push, sync_redis, receiver, topic_url(push_settings, "/feeds/headlines/atom"))
    await publish(push, seed_v1)
    await wait_for(lambda: receiver.posts, message="the delivery answered 410")
    await wait_for(lambda: record["id"] not in destinations(sync_redis), message="the subscription to end")
    await publish(push, seed_v2, "?signal=correction")
    await wait_for(lambda: fanned_out(sync_redis), message="the correction fanned out")
    assert len(receiver.posts) == 1  # nothing more is sent
    assert sync_redis.hlen(keys.push_failed()) == 0  # ended, not a failure kept for ops


async def test_lease_is_clamped_and_an_expired_subscription_gets_nothing_and_is_dropped(
        aiohttp_client, push_settings, sync_redis, receivers, seed_v1):
    settings = dataclasses.replace(push_settings, websub_lease_min=1, websub_lease_max=3600)
    client = await aiohttp_client(create_app(settings))
    receiver = await receivers()
    topic = topic_url(settings, "/feeds/headlines/atom")

    long = await subscribe_verified(client, sync_redis, receiver, topic, path="/long", lease="999999999")
    assert receiver.verifications_of("subscribe")[0].query["hub.lease_seconds"] == "3600"  # clamped down
    short = await subscribe_verified(client, sync_redis, receiver, topic, path="/short", lease="0")
    assert receiver.verifications_of("subscribe")[1].query["hub.lease_seconds"] == "1"  # clamped up
    assert long["expiresAt"] > short["expiresAt"]

    await asyncio.sleep(1.3)  # the short lease runs out
    await publish(client, seed_v1)
    await wait_for(lambda: [p for p in receiver.delivered if p.path == "/long"], message="the long lease's delivery")
    await wait_for(lambda: short["id"] not in destinations(sync_redis), message="the expired subscription dropped")
    await wait_for(lambda: fanned_out(sync_redis), message="the queue to empty")
    assert [p.path for p in receiver.posts] == ["/long"]


# ----- 10. embargo release --------------------------------------------------------------------------

async def test_an_embargoed_article_is_pushed_when_the_embargo_passes_not_before(push, push_settings, sync_redis,
                                                                                 receivers, seed_v1):
    receiver = await receivers()
    await subscribe_verified(push, sync_redis, receiver, topic_url(push_settings, "/feeds/headlines/atom"))
    await create_partner(push, name="acme", feeds=["*"], formats=["*"])
    await add_endpoint(push, "acme", receiver.url("/hook"), "ninjs")
    embargo = utc_now() + timedelta(seconds=1.5)
    await publish(push, {**seed_v1, "embargoedUntil": iso(embargo)})

    assert await stays_false(lambda: receiver.posts, max(0.0, (embargo - utc_now()).total_seconds() - 0.1))
    await wait_for(lambda: len(receiver.delivered) == 2, message="the release pushed to both destinations")
    for post in receiver.posts:
        assert post.wall >= embargo.timestamp() - 0.05  # never before the embargo
    websub = next(p for p in receiver.delivered if p.path == "/callback")
    assert entry_version(atom_entry(websub.body, seed_v1["uri"])) == 1
    hook = next(p for p in receiver.delivered if p.path == "/hook")
    assert orjson.loads(hook.body)["uri"] == seed_v1["uri"]
    assert_webhook_signed(hook)


# ----- 11. SSRF -------------------------------------------------------------------------------------

async def test_without_the_allow_list_internal_callbacks_are_refused(client, sync_redis, settings, receivers):
    receiver = await receivers()
    await create_partner(client, name="acme", feeds=["*"], formats=["*"])
    topic = topic_url(settings, "/feeds/headlines/atom")
    internal = [receiver.url(), f"http://localhost:{receiver.port}/callback", f"http://[::1]:{receiver.port}/cb",
                "http://10.0.0.1/cb", "http://192.168.1.1/cb", "http://169.254.169.254/latest", "http://0.0.0.0/cb",
                "http://[::ffff:127.0.0.1]/cb", "ftp://example.com/cb", "file:///etc/passwd"]
    for callback in internal:
        response = await hub_request(client, callback, topic)
        assert response.status == 400, callback
        assert response.content_type == "text/plain", callback
        endpoint = await client.post("/api/partners/acme/endpoints", headers=ADMIN_JSON, data=orjson.dumps(
            {"url": callback, "format": "ninjs", "secret": SECRET}))
        assert endpoint.status == 422, callback
        assert endpoint.content_type == "application/problem+json", callback
    await asyncio.sleep(0.2)
    assert receiver.verifications == [] and receiver.posts == []
    assert destinations(sync_redis) == {}


# ----- 12. revoking the key or disabling the partner ---------------------------------------------------

@pytest.mark.parametrize("how", ["revoke", "disable"])
async def test_revoking_the_key_or_disabling_the_partner_ends_its_subscriptions(push, push_settings, sync_redis,
                                                                                receivers, seed_v1, how):
    acme = await create_partner(push, name="acme", feeds=["latest"], formats=["atom"])
    receiver = await receivers()
    topic = topic_url(push_settings, "/feeds/latest/atom")
    record = await subscribe_verified(push, sync_redis, receiver, topic,
                                      headers={"Authorization": f"Bearer {acme['key']}"})
    if how == "revoke":
        response = await push.delete(f"/api/partners/acme/keys/{acme['key_id']}", headers=ADMIN)
    else:
        response = await push.patch("/api/partners/acme", data=orjson.dumps({"active": False}), headers=ADMIN_JSON)
    assert response.status == 200
    await publish(push, seed_v1)
    await wait_for(lambda: record["id"] not in destinations(sync_redis), message="the subscription to end")
    await wait_for(lambda: fanned_out(sync_redis), message="the queue to empty")
    assert receiver.posts == []
    [denied] = await wait_for(lambda: receiver.verifications_of("denied"), message="hub.mode=denied")
    assert denied.query["hub.topic"] == topic and denied.query.get("hub.reason")


# ----- 14. an acknowledged push counts as received ----------------------------------------------------

async def test_an_acknowledged_push_counts_as_received_in_the_partner_status(push, sync_redis, receivers,
                                                                            seed_v1, seed_v2):
    await create_partner(push, name="acme", feeds=["latest"], formats=["atom"])
    receiver = await receivers()
    await add_endpoint(push, "acme", receiver.url(), "atom")
    await publish(push, seed_v1)
    await wait_for(lambda: receiver.delivered, message="v1 delivered")
    await publish(push, seed_v2, "?signal=correction")
    await wait_for(lambda: len(receiver.delivered) == 2, message="v2 delivered")

    async def entry():
        status = await (await push.get("/api/partners/acme/status", headers=ADMIN)).json()
        [article] = status["articles"]
        return article if article["received"] else None

    article = await wait_for(entry, message="the push recorded as received")
    assert article["version"] == 2 and article["receivedVersion"] == 2 and article["outstandingSince"] is None
    status = await (await push.get("/api/partners/acme/status", headers=ADMIN)).json()
    assert status["lastPoll"] is None and status["lastHour"]["polls"] == 0  # pushes are not polls
    assert status["lastPush"] is not None


async def test_a_failing_push_does_not_count_as_received(push, sync_redis, receivers, seed_v1, seed_v2,
                                                         fast_backoff):
    await create_partner(push, name="acme", feeds=["latest"], formats=["atom"])
    receiver = await receivers(Behaviour(fail_status=500, fail_times=10**6))
    await add_endpoint(push, "acme", receiver.url(), "atom")
    await publish(push, seed_v1)
    await publish(push, seed_v2, "?signal=correction")
    await wait_for(lambda: 2 in delivery_versions(receiver), message="v2 attempted")
    status = await (await push.get("/api/partners/acme/status", headers=ADMIN)).json()
    [article] = status["articles"]
    assert article["received"] is False and article["receivedVersion"] is None


# ----- 13. crash and resume (a real `syndicate serve` process, SIGKILLed mid-delivery) ----------------

def start_serve(redis_url: str, data_dir, port: int, **extra: str) -> subprocess.Popen:
    env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(data_dir), SYNDICATE_PORT=str(port),
                  SYNDICATE_PUBLISHER_TOKENS=f"newsroom:{PUBLISHER_TOKEN}", SYNDICATE_ADMIN_TOKEN=ADMIN_TOKEN,
                  SYNDICATE_PUSH_ALLOW_NETWORKS="127.0.0.0/8", **extra)
    return subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def ready(session: aiohttp.ClientSession, process: subprocess.Popen, port: int) -> None:
    async def up() -> bool:
        assert process.poll() is None, "the server exited"
        try:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    await wait_for(up, timeout=30, interval=0.05, message="the server to be ready")


async def test_slow_a_delivery_interrupted_by_sigkill_is_made_after_restart_with_the_same_id(
        redis_url, tmp_path, receivers, seed_v1):
    """SLOW (about 10 s): two server start-ups and one lease running out."""
    await make_partner(redis_url, "acme")
    receiver = await receivers(Behaviour(delay_first=3.0))
    # The lease is max(SYNDICATE_PUSH_LEASE_SECONDS, push timeout + 5 s): 7 s here.
    extra = {"SYNDICATE_PUSH_LEASE_SECONDS": "1", "SYNDICATE_PUSH_TIMEOUT": "2"}
    port = free_port()
    processes = []
    try:
        async with aiohttp.ClientSession() as session:
            first = start_serve(redis_url, tmp_path / "a", port, **extra)
            processes.append(first)
            await ready(session, first, port)
            async with session.post(f"http://127.0.0.1:{port}/api/partners/acme/endpoints", headers=ADMIN_JSON,
                                    data=orjson.dumps({"url": receiver.url(), "format": "ninjs",
                                                       "secret": SECRET})) as response:
                assert response.status == 201, await response.text()
            async with session.post(f"http://127.0.0.1:{port}/api/articles", headers=JSON_HEADERS,
                                    data=orjson.dumps(seed_v1)) as response:
                assert response.status == 201, await response.text()
            await wait_for(lambda: receiver.posts, message="the first attempt to arrive")
            os.kill(first.pid, signal.SIGKILL)  # mid-delivery: the receiver has not answered yet
            first.wait(10)

            second = start_serve(redis_url, tmp_path / "b", port, **extra)
            processes.append(second)
            await ready(session, second, port)
            await wait_for(lambda: len(receiver.posts) >= 2 and receiver.posts[1].ok, timeout=40,
                           message="the delivery after the restart")
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(20)
    first_try, retried = receiver.posts[0], receiver.posts[1]
    assert retried.headers["X-Syndicate-Delivery"] == first_try.headers["X-Syndicate-Delivery"]
    assert retried.body == first_try.body
    assert_webhook_signed(retried)
    assert orjson.loads(retried.body)["uri"] == seed_v1["uri"]


# ----- more: callbacks, photo rights, isolation, give-up time -----------------------------------------

async def test_the_callbacks_query_is_kept_in_verification_and_delivery(push, push_settings, sync_redis,
                                                                       receivers, seed_v1):
    receiver = await receivers()
    callback = receiver.url("/callback") + "?subscriber=42&token=abc"
    response = await hub_request(push, callback, topic_url(push_settings, "/feeds/headlines/atom"))
    assert response.status == 202
    await wait_for(lambda: subscriptions_to(sync_redis, callback), message="the subscription")
    [verification] = receiver.verifications_of("subscribe")
    assert verification.query["subscriber"] == "42" and verification.query["token"] == "abc"
    await publish(push, seed_v1)
    [post] = await wait_for(lambda: receiver.delivered, message="the delivery")
    assert post.query == {"subscriber": "42", "token": "abc"}


@pytest.mark.parametrize(("fmt", "media_type"), [("rss", "application/rss+xml"), ("json", "application/feed+json"),
                                                 ("newsml", "application/vnd.iptc.g2.newsmessage+xml")])
async def test_a_websub_delivery_comes_in_the_topics_format(push, push_settings, sync_redis, receivers, seed_v1,
                                                            fmt, media_type):
    receiver = await receivers()
    topic = topic_url(push_settings, f"/feeds/headlines/{fmt}")
    await subscribe_verified(push, sync_redis, receiver, topic, secret=SECRET)
    await publish(push, seed_v1)
    [post] = await wait_for(lambda: receiver.delivered, message="the delivery")
    feed = await push.get(f"/feeds/headlines/{fmt}")
    assert post.headers["Content-Type"].split(";")[0] == feed.headers["Content-Type"].split(";")[0] == media_type
    assert post.headers["X-Hub-Signature"] == websub_signature(SECRET, post.body)
    assert parse_link_header(post.headers["Link"])["self"] == topic
    if fmt == "newsml":
        assert newsml_errors(post.body) == []
    if fmt == "json":
        [item] = orjson.loads(post.body)["items"]
        assert item["_syndicate"]["version"] == 1


async def test_a_partner_without_photo_rights_gets_pushes_without_photos(push, sync_redis, receivers, seed_v1):
    keys_by_partner = {
        "text-only": (await create_partner(push, name="text-only", feeds=["*"], formats=["*"], media=False))["key"],
        "photos": (await create_partner(push, name="photos", feeds=["*"], formats=["*"]))["key"],
    }
    receiver = await receivers()
    for partner in keys_by_partner:
        for fmt in ("ninjs", "atom", "newsml"):
            await add_endpoint(push, partner, receiver.url(f"/{partner}/{fmt}"), fmt)
    await publish(push, seed_v1)
    await wait_for(lambda: len(receiver.delivered) == 6, message="six deliveries")
    bodies = {p.path: p.body for p in receiver.delivered}
    assert "associations" in orjson.loads(bodies["/photos/ninjs"])
    assert "associations" not in orjson.loads(bodies["/text-only/ninjs"])
    assert b"media:content" in bodies["/photos/atom"] and b"media:content" not in bodies["/text-only/atom"]
    # A NewsML-G2 webhook is a bare newsItem: it links its pictures by guid (no picture items travel).
    photo_guid = b"https://media.news.example.com/2022/11/04/rostov-recruits"
    assert photo_guid in bodies["/photos/newsml"] and photo_guid not in bodies["/text-only/newsml"]
    assert newsml_errors(bodies["/text-only/newsml"]) == []
    article_id = article_id_for_uri(seed_v1["uri"])
    for partner, key in keys_by_partner.items():
        # What is pushed is what the partner would get by polling.
        item = await (await push.get(f"/items/{article_id}", headers={"X-API-Key": key})).json()
        assert orjson.loads(bodies[f"/{partner}/ninjs"]) == item, partner
        feed = await (await push.get("/feeds/latest/atom", headers={"X-API-Key": key})).read()
        pushed = atom_entries(bodies[f"/{partner}/atom"])[0]
        assert entry_fields(pushed) == entry_fields(atom_entry(feed, seed_v1["uri"])), partner


async def test_a_slow_endpoint_does_not_delay_another(push, sync_redis, receivers, seed_v1):
    await create_partner(push, name="acme", feeds=["*"], formats=["*"])
    slow = await receivers(Behaviour(delay_first=1.5))
    fast = await receivers()
    await add_endpoint(push, "acme", slow.url(), "ninjs")
    await add_endpoint(push, "acme", fast.url(), "ninjs")
    await publish(push, seed_v1)
    await wait_for(lambda: slow.posts and fast.delivered, message="both deliveries to start")
    assert slow.posts[0].answered is None  # the fast one got through while the slow one was still answering
    await wait_for(lambda: slow.delivered, message="the slow delivery")


async def test_a_delivery_failing_past_the_give_up_time_is_kept_as_failed(aiohttp_client, push_settings,
                                                                          sync_redis, receivers, seed_v1,
                                                                          fast_backoff):
    client = await aiohttp_client(create_app(dataclasses.replace(push_settings, push_give_up_seconds=0.5)))
    await create_partner(client, name="acme", feeds=["*"], formats=["*"])
    receiver = await receivers(Behaviour(fail_status=503, fail_times=10**6))
    endpoint = await add_endpoint(client, "acme", receiver.url(), "ninjs")
    await publish(client, seed_v1)
    member = f"{endpoint['id']}|{article_id_for_uri(seed_v1['uri'])}"
    failure = orjson.loads(await wait_for(lambda: sync_redis.hget(keys.push_failed(), member),
                                          message="the delivery given up"))
    assert failure["attempts"] > 1 and failure["lastStatus"] == 503
    assert failure["attempts"] == len(receiver.posts)
    await wait_for(lambda: fanned_out(sync_redis), message="the queue to empty")
    count = len(receiver.posts)
    assert await stays_false(lambda: len(receiver.posts) > count, 0.5)


async def test_two_workers_share_the_queue_and_deliver_each_revision_once(aiohttp_client, push_settings,
                                                                         sync_redis, receivers, seed_v1):
    a = await aiohttp_client(create_app(push_settings))
    b = await aiohttp_client(create_app(push_settings))
    await create_partner(a, name="acme", feeds=["*"], formats=["*"])
    receiver = await receivers()
    await add_endpoint(a, "acme", receiver.url(), "ninjs")
    count = 10
    for n in range(count):
        await publish(a if n % 2 else b, {**seed_v1, "uri": f"{seed_v1['uri']}-{n}"})
    await wait_for(lambda: len(receiver.delivered) >= count, message="every article delivered")
    await wait_for(lambda: fanned_out(sync_redis), message="the queue to empty")
    ids = [p.headers["X-Syndicate-Delivery"] for p in receiver.posts]
    assert len(ids) == len(set(ids)) == count  # fanned out once, delivered once, by whichever worker


async def test_slow_partner_endpoint_cli(redis_url, tmp_path, sync_redis):
    """SLOW (about 10 s): CLI runs, each a new Python process."""
    env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(tmp_path / "var"),
                  SYNDICATE_PUSH_ALLOW_NETWORKS="127.0.0.0/8")
    await make_partner(redis_url, "acme")
    added, refused = await asyncio.gather(  # two independent runs at once: each takes seconds to start
        asyncio.to_thread(run_cli, "partner", "endpoint", "add", "acme", "http://127.0.0.1:9/hook",
                          "--format", "newsml", "--secret", SECRET, env=env),
        asyncio.to_thread(run_cli, "partner", "endpoint", "add", "acme", "http://10.0.0.1/hook",
                          "--format", "ninjs", "--secret", SECRET, env=env))
    assert added.returncode == 0, added.stderr
    endpoint_id = added.stdout.split()[1]
    assert list(destinations(sync_redis)) == [endpoint_id]
    assert destinations(sync_redis)[endpoint_id]["format"] == "newsml"
    assert refused.returncode != 0 and "10.0.0.1" in refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr  # one line, no traceback
    listed = await asyncio.to_thread(run_cli, "partner", "endpoint", "list", "acme", env=env)
    assert f"{endpoint_id}\twebhook\tnewsml\thttp://127.0.0.1:9/hook" in listed.stdout
    assert SECRET not in listed.stdout
    removed = await asyncio.to_thread(run_cli, "partner", "endpoint", "remove", "acme", endpoint_id, env=env)
    assert removed.returncode == 0, removed.stderr
    assert destinations(sync_redis) == {}


async def test_feeds_advertise_the_hub(push, push_settings):
    response = await push.get("/feeds/headlines/atom")
    links = parse_link_header(response.headers["Link"])
    assert links["hub"] == f"{push_settings.base_url}/hub"
    assert links["self"] == topic_url(push_settings, "/feeds/headlines/atom")
    root = etree.fromstring(await response.read())
    hubs = [link.get("href") for link in root.findall(f"{ATOM}link") if link.get("rel") == "hub"]
    assert hubs == [f"{push_settings.base_url}/hub"]


async def test_an_expired_subscription_is_swept_without_any_publish(aiohttp_client, push_settings, sync_redis,
                                                                    receivers, monkeypatch):
    monkeypatch.setattr(push_dispatcher, "SWEEP_SECONDS", 0.2)
    client = await aiohttp_client(create_app(dataclasses.replace(push_settings, websub_lease_min=1)))
    receiver = await receivers()
    record = await subscribe_verified(client, sync_redis, receiver, topic_url(push_settings, "/feeds/headlines/atom"),
                                      lease="1")
    await wait_for(lambda: record["id"] not in destinations(sync_redis), message="the expired subscription swept")
    assert receiver.posts == []


async def test_a_timed_out_attempt_is_retried_with_the_same_delivery_id(aiohttp_client, push_settings, sync_redis,
                                                                        receivers, seed_v1, fast_backoff):
    client = await aiohttp_client(create_app(dataclasses.replace(push_settings, push_timeout_seconds=0.5)))
    await create_partner(client, name="acme", feeds=["*"], formats=["*"])
    receiver = await receivers(Behaviour(delay_first=3.0))  # the first answer comes far too late
    endpoint = await add_endpoint(client, "acme", receiver.url(), "ninjs")
    await publish(client, seed_v1)
    await wait_for(lambda: len(receiver.posts) >= 2 and receiver.posts[1].ok, message="the retry")
    assert receiver.posts[0].headers["X-Syndicate-Delivery"] == receiver.posts[1].headers["X-Syndicate-Delivery"]
    attempts = [f for _id, f in sync_redis.xrange(keys.push_attempts()) if f["destination"] == endpoint["id"]]
    assert attempts[0]["ok"] == "0" and attempts[0]["status"] == "0" and "Timeout" in attempts[0]["error"]


async def test_an_endpoint_that_is_down_gets_the_delivery_when_it_comes_up(push, sync_redis, receivers, seed_v1,
                                                                           fast_backoff):
    await create_partner(push, name="acme", feeds=["*"], formats=["*"])
    port = free_port()  # nothing listens there yet
    endpoint = await add_endpoint(push, "acme", f"http://127.0.0.1:{port}/hook", "ninjs")

    def attempts():
        return [f for _id, f in sync_redis.xrange(keys.push_attempts()) if f["destination"] == endpoint["id"]]

    await publish(push, seed_v1)
    await wait_for(lambda: len(attempts()) >= 2, message="two refused connections")
    assert all(a["ok"] == "0" and a["error"] for a in attempts())
    up = Subscriber(Behaviour(), fixed_port=port)
    await up.start()
    try:
        await wait_for(lambda: up.delivered, message="the delivery once the endpoint is up")
        assert_webhook_signed(up.delivered[0])
    finally:
        await up.close()
    assert sync_redis.hlen(keys.push_failed()) == 0


async def test_an_endless_answer_does_not_hold_the_delivery(push, sync_redis, receivers, seed_v1):
    await create_partner(push, name="acme", feeds=["*"], formats=["*"])
    receiver = await receivers(Behaviour(endless_body=True))
    endpoint = await add_endpoint(push, "acme", receiver.url(), "ninjs")
    await publish(push, seed_v1)

    def acknowledged():
        return [f for _id, f in sync_redis.xrange(keys.push_attempts())
                if f["destination"] == endpoint["id"] and f["ok"] == "1"]

    await wait_for(acknowledged, message="the attempt recorded as acknowledged")
    await wait_for(lambda: fanned_out(sync_redis), message="the queue to empty")
    assert len(receiver.posts) == 1


async def test_a_disabled_partners_endpoints_get_nothing_until_it_is_enabled(push, sync_redis, receivers, seed_v1,
                                                                            seed_v2):
    await create_partner(push, name="acme", feeds=["*"], formats=["*"])
    receiver = await receivers()
    endpoint = await add_endpoint(push, "acme", receiver.url(), "atom")
    await push.patch("/api/partners/acme", data=orjson.dumps({"active": False}), headers=ADMIN_JSON)
    await publish(push, seed_v1)
    await wait_for(lambda: fanned_out(sync_redis), message="v1 fanned out")
    assert receiver.posts == []
    assert endpoint["id"] in destinations(sync_redis)  # kept
    await push.patch("/api/partners/acme", data=orjson.dumps({"active": True}), headers=ADMIN_JSON)
    await publish(push, seed_v2, "?signal=correction")
    await wait_for(lambda: receiver.delivered, message="v2 once enabled")
    await wait_for(lambda: fanned_out(sync_redis), message="the queue to empty")
    assert delivery_versions(receiver) == [2]


async def test_a_webhook_gets_only_articles_in_the_partners_feeds(push, sync_redis, receivers, seed_v1):
    await create_partner(push, name="acme", feeds=["world"], formats=["*"])
    receiver = await receivers()
    await add_endpoint(push, "acme", receiver.url(), "ninjs")
    # not in world, and (French) not in the public headlines either, which every partner may read
    local = {**seed_v1, "uri": seed_v1["uri"] + "-local", "subjects": [], "language": "fr"}
    await publish(push, local)
    await publish(push, seed_v1)  # in world
    await wait_for(lambda: receiver.delivered, message="the world article")
    await wait_for(lambda: fanned_out(sync_redis), message="the queue to empty")
    assert [orjson.loads(p.body)["uri"] for p in receiver.posts] == [seed_v1["uri"]]





async def test_slow_a_backlog_for_one_endpoint_is_delivered_once_per_revision(aiohttp_client, push_settings,
                                                                              sync_redis, receivers, seed_v1):
    """SLOW (about 9 s): a backlog for one endpoint longer than the lease (timeout 1 s + 5 s) must not make
    deliveries waiting their turn be claimed again and sent twice (regression test)."""
    settings = dataclasses.replace(push_settings, push_concurrency_per_destination=1, push_timeout_seconds=1.0,
                                   push_lease_seconds=1.0)
    client = await aiohttp_client(create_app(settings))
    await create_partner(client, name="acme", feeds=["*"], formats=["*"])
    receiver = await receivers(Behaviour(delay_every=0.45))  # well within the 1 s timeout
    await add_endpoint(client, "acme", receiver.url(), "ninjs")
    count = 16  # 16 x 0.45 s = 7.2 s of backlog > the 6 s lease
    for n in range(count):
        await publish(client, {**seed_v1, "uri": f"{seed_v1['uri']}-{n}"})
    await wait_for(lambda: len(receiver.delivered) >= count, timeout=30, message="every article delivered")
    await wait_for(lambda: fanned_out(sync_redis), timeout=15, message="the queue to empty")
    ids = [p.headers["X-Syndicate-Delivery"] for p in receiver.posts]
    assert len(ids) == len(set(ids)) == count


async def test_slow_a_syndicate_worker_process_delivers_for_a_server_without_workers(redis_url, tmp_path,
                                                                                    receivers, seed_v1):
    """SLOW (about 4 s): a server with SYNDICATE_WORKERS=OFF and a `syndicate worker` process."""
    await make_partner(redis_url, "acme")
    receiver = await receivers()
    port = free_port()
    server = start_serve(redis_url, tmp_path / "s", port, SYNDICATE_WORKERS="OFF")
    worker_env = cli_env(REDIS_URL=redis_url, SYNDICATE_DATA_DIR=str(tmp_path / "w"),
                         SYNDICATE_PUSH_ALLOW_NETWORKS="127.0.0.0/8")
    worker = None
    try:
        async with aiohttp.ClientSession() as session:
            await ready(session, server, port)
            async with session.post(f"http://127.0.0.1:{port}/api/partners/acme/endpoints", headers=ADMIN_JSON,
                                    data=orjson.dumps({"url": receiver.url(), "format": "ninjs",
                                                       "secret": SECRET})) as response:
                assert response.status == 201, await response.text()
            worker = subprocess.Popen([sys.executable, "-m", "server.cli", "worker"], cwd=ROOT, env=worker_env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with redis_sync.Redis.from_url(redis_url, decode_responses=True) as redis:
                def dispatching() -> bool:
                    assert worker.poll() is None, "the worker exited"
                    return redis.exists(keys.changelog()) and any(
                        g["name"] == keys.DISPATCH_GROUP for g in redis.xinfo_groups(keys.changelog()))

                await wait_for(dispatching, timeout=30, message="the worker to start")  # its group exists
            async with session.post(f"http://127.0.0.1:{port}/api/articles", headers=JSON_HEADERS,
                                    data=orjson.dumps(seed_v1)) as response:
                assert response.status == 201, await response.text()
            await wait_for(lambda: receiver.delivered, timeout=30, message="the worker's delivery")
            assert_webhook_signed(receiver.delivered[0])
            worker.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(worker.wait, 20) == 0
    finally:
        for process in (server, worker):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(20)


# ----- regressions of bugs these tests found -------------------------------------------------------------

async def test_a_change_stored_before_any_worker_started_is_still_pushed(aiohttp_client, push_settings,
                                                                         sync_redis, receivers, seed_v1):
    api = await aiohttp_client(create_app(dataclasses.replace(push_settings, run_workers=False)))
    await create_partner(api, name="acme", feeds=["*"], formats=["*"])
    receiver = await receivers()
    await add_endpoint(api, "acme", receiver.url(), "ninjs")
    await publish(api, seed_v1)  # stored and acknowledged: at-least-once starts here
    await aiohttp_client(create_app(push_settings))  # now a worker starts
    await wait_for(lambda: receiver.delivered, timeout=3, message="the delivery")


async def test_a_kill_arriving_while_v1_is_refused_with_4xx_is_still_delivered(push, sync_redis, receivers,
                                                                              seed_v1, fast_backoff):
    await create_partner(push, name="acme", feeds=["*"], formats=["*"])
    receiver = await receivers(Behaviour(fail_status=400, fail_times=1, delay_first=1.0))
    await add_endpoint(push, "acme", receiver.url(), "atom")
    await publish(push, seed_v1)
    await wait_for(lambda: receiver.posts, message="v1 in flight")
    await kill(push, article_id_for_uri(seed_v1["uri"]))  # while the endpoint is still answering v1
    await wait_for(lambda: fanned_out(sync_redis), timeout=5, message="the queue to empty")
    # v1 was refused (not retried); the kill is a newer revision and must still go out.
    assert delivery_versions(receiver, only_ok=True) == [2]


async def test_a_partner_that_loses_the_topics_feed_gets_no_more_pushes(push, push_settings, sync_redis,
                                                                        receivers, seed_v1):
    acme = await create_partner(push, name="acme", feeds=["latest"], formats=["atom"])
    receiver = await receivers()
    await subscribe_verified(push, sync_redis, receiver, topic_url(push_settings, "/feeds/latest/atom"),
                             headers={"Authorization": f"Bearer {acme['key']}"})
    response = await push.patch("/api/partners/acme", data=orjson.dumps({"feeds": ["world"]}), headers=ADMIN_JSON)
    assert response.status == 200
    assert (await push.get("/feeds/latest/atom", headers={"X-API-Key": acme["key"]})).status == 403
    await publish(push, {**seed_v1, "subjects": [], "uri": seed_v1["uri"] + "-local"})  # in latest, not world
    await wait_for(lambda: fanned_out(sync_redis), message="the queue to empty")
    assert receiver.posts == []


async def test_a_webhook_format_needs_the_partners_format_entitlement(push, sync_redis, receivers, seed_v1):
    acme = await create_partner(push, name="acme", feeds=["*"], formats=["atom"])
    receiver = await receivers()
    french = {**seed_v1, "uri": seed_v1["uri"] + "-fr", "language": "fr"}  # in world and latest, not public
    await publish(push, french)
    article_id = article_id_for_uri(french["uri"])
    assert (await push.get(f"/items/{article_id}/newsml", headers={"X-API-Key": acme["key"]})).status == 403
    response = await push.post("/api/partners/acme/endpoints", headers=ADMIN_JSON, data=orjson.dumps(
        {"url": receiver.url(), "format": "newsml", "secret": SECRET}))
    if response.status == 201:  # accepted: then nothing may be delivered in that format
        await publish(push, {**french, "uri": french["uri"] + "-2"})
        await wait_for(lambda: fanned_out(sync_redis), message="the queue to empty")
        assert receiver.posts == []
    else:
        assert response.status == 422


async def test_a_revision_put_under_embargo_is_not_pushed_by_an_older_ones_retry(push, sync_redis, receivers,
                                                                                   seed_v1, fast_backoff):
    await create_partner(push, name="acme", feeds=["*"], formats=["*"])
    receiver = await receivers(Behaviour(fail_status=503, fail_times=1, delay_first=1.0))
    await add_endpoint(push, "acme", receiver.url(), "ninjs")
    await publish(push, seed_v1)
    await wait_for(lambda: receiver.posts, message="v1 in flight")
    embargoed = {**seed_v1, "versionCreated": "2030-01-01T00:00:00Z", "embargoedUntil": "2099-01-01T00:00:00Z",
                 "headlines": [{"role": "main", "value": "Embargoed rewrite"}]}
    await publish(push, embargoed)  # v2, under embargo, while v1's first attempt is failing
    await wait_for(lambda: fanned_out(sync_redis), timeout=10, message="the queue to empty")
    await asyncio.sleep(0.5)
    assert all(b"Embargoed rewrite" not in post.body for post in receiver.posts)
    assert receiver.delivered == []  # v1 was superseded by a revision nobody may see yet


async def test_a_kill_during_a_failing_attempt_does_not_wait_for_its_retry_after(push, sync_redis, receivers,
                                                                                 seed_v1):
    await create_partner(push, name="acme", feeds=["*"], formats=["*"])
    receiver = await receivers(Behaviour(fail_status=503, fail_times=1, delay_first=1.0, retry_after="600"))
    await add_endpoint(push, "acme", receiver.url(), "atom")
    await publish(push, seed_v1)
    await wait_for(lambda: receiver.posts, message="v1 in flight")
    await kill(push, article_id_for_uri(seed_v1["uri"]))  # arrives while v1 is being refused with Retry-After
    await wait_for(lambda: receiver.delivered, timeout=8, message="the kill, long before v1's 600 s retry")
    assert delivery_versions(receiver, only_ok=True) == [2]


async def test_the_hub_takes_keys_through_the_failed_key_throttle(push, push_settings):
    """A guessed key at the hub counts against the same throttle as one at a feed (one throttle), and a
    valid key still works from the throttled address."""
    await room_in_rate_window()
    good = (await create_partner(push, name="acme", feeds=["world"], formats=["atom"]))["key"]
    topic = topic_url(push_settings, "/feeds/world/atom")
    limit = push_settings.failed_keys_per_address
    statuses = []
    for n in range(limit + 2):
        response = await hub_request(push, f"http://127.0.0.1:9/cb-{n}", topic,
                                     headers={"Authorization": f"Bearer syn_{n:08x}_{'x' * 43}"})
        statuses.append(response.status)
    assert statuses[:limit] == [403] * limit and set(statuses[limit:]) == {429}
    assert response.headers["Retry-After"].isdigit()
    guess = await push.get("/feeds/world/atom", headers={"X-API-Key": "syn_0000ffff_" + "y" * 43})
    assert guess.status == 429  # one throttle: the hub's failures count at the feeds too
    assert (await push.get("/feeds/world/atom", headers={"X-API-Key": good})).status == 200
    await hub_idle(push)


async def test_a_webhook_may_take_a_format_the_partner_reads_only_in_a_public_feed(push):
    """The public-feed rule is the same for webhooks as for polls: headlines is public, so a partner
    granted only rss may still have an atom webhook (it gets what the public feeds hold)."""
    await create_partner(push, name="acme", feeds=["world"], formats=["rss"])
    await add_endpoint(push, "acme", "http://127.0.0.1:9/hook", "atom")


async def test_the_hub_limits_requests_per_address_and_per_subscription(push, push_settings):
    """Each hub request may start an outbound verification: one address, or one callback and topic,
    cannot make the hub start them without bound."""
    topic = topic_url(push_settings, "/feeds/headlines/atom")
    statuses = [(await hub_request(push, "http://127.0.0.1:9/same", topic)).status for _ in range(8)]
    assert statuses[:6] == [202] * 6 and set(statuses[6:]) == {429}
    many = [await hub_request(push, f"http://127.0.0.1:9/cb-{n}", topic) for n in range(60)]
    assert many[-1].status == 429 and many[-1].headers["Retry-After"].isdigit()
    await hub_idle(push)


@pytest.mark.parametrize(("path", "says"), [
    ("/feeds/latest/atom/", "trailing slash"), ("//feeds/latest/atom", "not a feed URL"),
    ("/feeds//latest/atom", "not a feed URL"), ("/feeds/latest", "not a feed URL"),
    ("/feeds/nope/atom", "names no feed"), ("/feeds/latest/pdf", "names no format"),
    ("/feeds/latest/atom?since=3", "no query but one key"), ("/feeds/latest/atom?key=a&key=b", "no query but"),
    ("/feeds/latest/atom?key=a&utm=x", "no query but"), ("/feeds/latest/atom#top", "fragment"),
])
async def test_the_hub_refuses_a_topic_the_server_does_not_serve(push, push_settings, path, says):
    response = await hub_request(push, "http://127.0.0.1:9/cb", topic_url(push_settings, path))
    assert response.status == 400 and response.content_type == "text/plain"
    assert says in await response.text()


# ----- keyed topics (issue 12): the topic as sent, echoed everywhere, never stored in clear ------------

async def test_a_keyed_topic_is_echoed_in_every_push_and_denial_and_never_stored_in_clear(
        push, push_settings, sync_redis, redis_url, receivers, seed_v1):
    from conftest import snapshot

    acme = await create_partner(push, name="acme", feeds=["latest"], formats=["atom"])
    receiver = await receivers()
    keyed = topic_url(push_settings, "/feeds/latest/atom") + f"?key={acme['key']}"
    record = await subscribe_verified(push, sync_redis, receiver, keyed)
    assert record["topic"] == topic_url(push_settings, "/feeds/latest/atom")
    await publish(push, seed_v1)
    [post] = await wait_for(lambda: receiver.delivered, message="the push")
    assert parse_link_header(post.headers["Link"])["self"] == keyed  # WebSub 8: rel=self is the topic
    assert acme["key"] not in repr(snapshot(redis_url))  # nowhere in Redis, in any key or value

    # The partner loses the feed: the subscription ends, and the subscriber is told why, for its topic.
    response = await push.patch("/api/partners/acme", data=orjson.dumps({"feeds": ["world"]}), headers=ADMIN_JSON)
    assert response.status == 200
    await publish(push, {**seed_v1, "uri": seed_v1["uri"] + "-2"})
    [denied] = await wait_for(lambda: receiver.verifications_of("denied"), message="hub.mode=denied")
    assert denied.query["hub.topic"] == keyed
    assert denied.query["hub.reason"] == "the partner is no longer entitled to this topic's feed"
    assert record["id"] not in destinations(sync_redis)


@pytest.mark.parametrize(("change", "reason"), [
    ({"formats": ["rss"]}, "the partner is no longer entitled to this topic's format"),
    ({"active": False}, "the partner was disabled"),
    (None, "the partner key it subscribed with was revoked or has expired"),
])
async def test_the_denial_says_why_the_subscription_ended(push, push_settings, sync_redis, receivers, seed_v1,
                                                         change, reason):
    acme = await create_partner(push, name="acme", feeds=["latest"], formats=["atom"])
    receiver = await receivers()
    await subscribe_verified(push, sync_redis, receiver, topic_url(push_settings, "/feeds/latest/atom"),
                             headers={"Authorization": f"Bearer {acme['key']}"})
    if change is None:
        response = await push.delete(f"/api/partners/acme/keys/{acme['key_id']}", headers=ADMIN)
    else:
        response = await push.patch("/api/partners/acme", data=orjson.dumps(change), headers=ADMIN_JSON)
    assert response.status == 200
    await publish(push, seed_v1)
    [denied] = await wait_for(lambda: receiver.verifications_of("denied"), message="hub.mode=denied")
    assert denied.query["hub.reason"] == reason


async def test_two_different_keys_in_one_hub_request_are_refused(push, push_settings):
    acme = await create_partner(push, name="acme", feeds=["latest"], formats=["atom"])
    other = (await (await push.post("/api/partners/acme/keys", headers=ADMIN)).json())["key"]
    topic = topic_url(push_settings, "/feeds/latest/atom") + f"?key={acme['key']}"
    response = await hub_request(push, "http://127.0.0.1:9/cb", topic, headers={"Authorization": f"Bearer {other}"})
    assert response.status == 400 and "different keys" in await response.text()
