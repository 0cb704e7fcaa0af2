"""Keyed WebSub topics (issue 12) with a standard subscriber: Flask-WebSub's, for real.

Flask-WebSub's subscriber runs in a werkzeug server on a thread of its own, on a free port of 127.0.0.1;
our hub is the app (its in-process push worker included) on a TestServer whose base URL is its real
address, so the topics and the hub URL the feed advertises are the ones the subscriber talks to. The
subscriber discovers the hub and the topic from a feed read by ``?key=`` (the Link header carries the
key), subscribes, is verified (it refuses a verification whose ``hub.topic`` is not the topic it sent),
receives a push, unsubscribes (verified the same way) and subscribes again, and is told
``hub.mode=denied`` with the reason when its partner loses the feed.

Also here, without a network: the sealing of topics (:mod:`server.core.sealing`), the hub's topic
parser, and a record sealed under another secret.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import orjson
import pytest
import redis as redis_sync
from aiohttp.test_utils import TestServer
from conftest import ADMIN, AUTH, free_port, make_partner

from server.core import keys
from server.core.redis_connection import connect
from server.core.sealing import Sealer, sealing_key
from server.domain.feeds import FORMATS
from server.http.api.hub import Topic, parse_topic
from server.http.app import create_app
from server.push.destinations import WEBSUB, Destination, DestinationStore

flask_websub = pytest.importorskip("flask_websub.subscriber")
flask = pytest.importorskip("flask")
werkzeug_serving = pytest.importorskip("werkzeug.serving")

JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
ADMIN_JSON = {**ADMIN, "Content-Type": "application/json"}
BASE = "https://feeds.example.com"


# ----- sealing and the topic parser (pure) -----------------------------------------------------------

def test_a_sealed_topic_opens_only_with_its_key_and_for_its_record():
    sealer = Sealer(sealing_key(None, None, "admin-token-0123456789abcdef") or b"")
    topic = f"{BASE}/feeds/latest/atom?key=syn_0123abcd_secret"
    sealed = sealer.seal(topic, "ws-1")
    assert sealed.startswith("v1.") and "syn_0123abcd_secret" not in sealed
    assert sealer.open(sealed, "ws-1") == topic
    assert sealer.open(sealed, "ws-2") is None  # bound to its record
    other = Sealer(sealing_key("another-topic-secret-0123", None, "admin-token-0123456789abcdef") or b"")
    assert other.open(sealed, "ws-1") is None  # another secret
    for junk in ("", "v1.", "v1.!!!", "v2." + sealed[3:], sealed[:-4]):
        assert sealer.open(junk, "ws-1") is None
    assert sealer.seal(topic, "ws-1") != sealed  # a fresh nonce each time
    assert sealing_key(None, None, None) is None


@pytest.mark.parametrize("raw", [
    f"{BASE}/feeds/latest/atom", f"{BASE}/feeds/latest/atom?key=syn_0123abcd_x", f"{BASE}/feeds/world/json",
])
def test_the_hub_serves_exactly_its_feed_urls(raw):
    topic = parse_topic(raw, BASE, ["latest", "world"])
    assert isinstance(topic, Topic) and topic.as_sent == raw and topic.url == raw.split("?")[0]
    assert topic.fmt in FORMATS and topic.key == (raw.split("key=")[1] if "key=" in raw else None)


@pytest.mark.parametrize("raw", [
    f"{BASE}/feeds/latest/atom/", f"{BASE}/feeds/latest/atom?since=1", f"{BASE}/feeds/latest/atom?key=a&key=b",
    f"{BASE}/feeds/latest/atom?", f"{BASE}/feeds/latest/atom#x", f"{BASE}/feeds/nope/atom",
    f"{BASE}/feeds/latest/pdf", f"{BASE}/items/abc", "http://feeds.example.com/feeds/latest/atom",
    f"{BASE}:443/feeds/latest/atom", "not a url", f"{BASE}/feeds/latest/atom?key",
])
def test_the_hub_refuses_what_it_does_not_serve(raw):
    assert isinstance(parse_topic(raw, BASE, ["latest", "world"]), str)


async def test_a_record_sealed_under_another_secret_falls_back_to_the_topic_without_its_key(redis_url):
    redis = await connect(redis_url)
    try:
        topic = f"{BASE}/feeds/latest/atom"
        record = Destination(id="ws-test", kind=WEBSUB, url="https://subscriber.example/cb", format="atom",
                             secret=None, partner="acme", key_id="0123abcd", feed="latest", topic=topic,
                             topic_as_sent=f"{topic}?key=syn_0123abcd_secret")
        first = DestinationStore(redis, sealer=Sealer(b"k" * 32))
        await first.save(record)
        raw = redis_sync.Redis.from_url(redis_url).get(keys.destination("ws-test"))
        assert raw is not None and b"syn_0123abcd_secret" not in raw
        assert (await first.get("ws-test")).echo_topic == record.topic_as_sent
        moved = await DestinationStore(redis, sealer=Sealer(b"x" * 32)).get("ws-test")
        assert moved.topic_as_sent is None and moved.echo_topic == topic
        assert (await DestinationStore(redis).get("ws-test")).echo_topic == topic  # no secret at all
        assert "topic_as_sent" not in orjson.dumps(moved.public_view()).decode()
    finally:
        await redis.aclose()


# ----- Flask-WebSub's subscriber against our hub ------------------------------------------------------

class FlaskSubscriber:
    """Flask-WebSub's subscriber in a werkzeug server on a thread; what it hears is recorded."""

    def __init__(self, directory) -> None:
        self.port = free_port()
        self.app = flask.Flask("websub-subscriber")
        self.app.config["SERVER_NAME"] = f"127.0.0.1:{self.port}"
        database = str(directory / "subscriber.sqlite3")
        self.subscriber = flask_websub.Subscriber(flask_websub.SQLite3SubscriberStorage(database),
                                                  flask_websub.SQLite3TempSubscriberStorage(database))
        self.app.register_blueprint(self.subscriber.build_blueprint(url_prefix="/callbacks"))
        self.notifications: list[tuple[str, str, bytes]] = []
        self.successes: list[tuple[str, str, str]] = []
        self.errors: list[tuple[str, str, str]] = []
        self.subscriber.add_listener(lambda topic, callback_id, body: self.notifications.append((topic, callback_id, body)))
        self.subscriber.add_success_handler(lambda topic, callback_id, mode: self.successes.append((topic, callback_id, mode)))
        self.subscriber.add_error_handler(lambda topic, callback_id, reason: self.errors.append((topic, callback_id, reason)))
        self.server = werkzeug_serving.make_server("127.0.0.1", self.port, self.app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlaskSubscriber:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(10)

    def discover(self, url: str) -> dict[str, str]:
        return flask_websub.discover(url, timeout=5)

    def subscribe(self, **request: object) -> str:
        with self.app.app_context():
            return self.subscriber.subscribe(**request)

    def unsubscribe(self, callback_id: str) -> None:
        with self.app.app_context():
            self.subscriber.unsubscribe(callback_id)


async def until(check, seconds: float = 15.0, message: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {message}"
        await asyncio.sleep(0.05)


async def test_flask_websub_subscribes_to_a_keyed_topic_gets_pushes_and_hears_the_denial(
        aiohttp_client, push_settings, redis_url, tmp_path, seed_v1):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = dataclasses.replace(push_settings, base_url_setting=base)
    key = await make_partner(redis_url, "acme", feeds=["latest"], formats=["atom"])
    client = await aiohttp_client(TestServer(create_app(settings), host="127.0.0.1", port=port))
    topic = f"{base}/feeds/latest/atom?key={key}"

    with FlaskSubscriber(tmp_path) as subscriber:
        # Discovery from the feed read by ?key=: its Link header names the hub and the keyed topic.
        found = await asyncio.to_thread(subscriber.discover, topic)
        assert found == {"hub_url": f"{base}/hub", "topic_url": topic}
        callback_id = await asyncio.to_thread(subscriber.subscribe, **found, lease_seconds=3600)
        # Flask-WebSub confirms only a verification whose hub.topic is the topic it sent, key and all.
        await until(lambda: subscriber.successes, message="the verification")
        assert subscriber.successes == [(topic, callback_id, "subscribe")]
        redis = redis_sync.Redis.from_url(redis_url, decode_responses=True)
        await until(lambda: redis.scard(keys.destination_ids()) == 1, message="the subscription saved")
        stored = [orjson.loads(r) for r in redis.mget([keys.destination(d) for d in redis.smembers(keys.destination_ids())])]
        assert [s["topic"] for s in stored] == [f"{base}/feeds/latest/atom"] and key not in orjson.dumps(stored).decode()

        response = await client.post("/api/articles", data=orjson.dumps(seed_v1), headers=JSON_HEADERS)
        assert response.status == 201
        await until(lambda: subscriber.notifications, message="the push")
        [(heard_topic, heard_id, body)] = subscriber.notifications
        assert (heard_topic, heard_id) == (topic, callback_id) and seed_v1["uri"].encode() in body

        # Unsubscribing is verified with the topic as sent too, and ends the subscription at the hub.
        await asyncio.to_thread(subscriber.unsubscribe, callback_id)
        await until(lambda: len(subscriber.successes) == 2, message="the unsubscription")
        assert subscriber.successes[1] == (topic, callback_id, "unsubscribe")
        await until(lambda: redis.scard(keys.destination_ids()) == 0, message="the subscription removed")
        callback_id = await asyncio.to_thread(subscriber.subscribe, **found, lease_seconds=3600)
        await until(lambda: redis.scard(keys.destination_ids()) == 1, message="the subscription again")

        # The partner loses the feed: the hub ends the subscription and the subscriber hears why.
        response = await client.patch("/api/partners/acme", data=orjson.dumps({"feeds": ["world"]}),
                                      headers=ADMIN_JSON)
        assert response.status == 200
        response = await client.post("/api/articles", data=orjson.dumps({**seed_v1, "uri": seed_v1["uri"] + "-2"}),
                                     headers=JSON_HEADERS)
        assert response.status == 201
        await until(lambda: subscriber.errors, message="the denial")
        assert subscriber.errors == [(topic, callback_id, "the partner is no longer entitled to this topic's feed")]
