"""Push's pure parts without Redis or HTTP: which destinations get an article
(``server.push.dispatcher``), and what they are sent and how it is signed (``server.push.payloads``)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from push_helpers import webhook_signature, websub_signature

from server.domain.articles import Article, Revision
from server.domain.feeds import FeedDefinition, FeedFilters
from server.domain.partners import AccessKey, KeyTable, Partner
from server.push.destinations import WEBHOOK, WEBSUB, Destination
from server.push.dispatcher import may_still_push, push_refusal, wants
from server.push.payloads import (
    Payload,
    delivery_id,
    ninjs_document,
    photos_allowed,
    push_headers,
    sign_webhook,
    sign_websub,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FEEDS = {
    "open": FeedDefinition("open", "Open", "Everything", public=True),
    "sport": FeedDefinition("sport", "Sport", "Sport only", filters=FeedFilters(slugline_prefix="sport-")),
    "news": FeedDefinition("news", "News", "Everything"),
}
KEY = AccessKey("k1", "0" * 64, NOW - timedelta(days=1))


def partner(name="acme", feeds=("*",), formats=("*",), **options) -> Partner:
    return Partner(name, tuple(feeds), tuple(formats), keys=options.pop("keys", (KEY,)), **options)


def table(*partners: Partner) -> KeyTable:
    return KeyTable(partners)


def subscription(feed="news", fmt="atom", partner_name: str | None = "acme", key_id="k1") -> Destination:
    return Destination("ws-1", WEBSUB, "https://example.com/cb", fmt, None, partner_name, key_id, feed,
                       f"https://syndicate.test/feeds/{feed}/{fmt}")


def webhook(fmt="ninjs", partner_name="acme") -> Destination:
    return Destination("wh-1", WEBHOOK, "https://example.com/hook", fmt, "s" * 16, partner_name)


def article(slugline="sport-football", document: dict | None = None) -> Article:
    document = document if document is not None else {"uri": "urn:x", "type": "text", "slugline": slugline,
                                                       "associations": {"pic": {"type": "picture"}}}
    revision = Revision("a1", "urn:x", 2, "update", "update", NOW, NOW, NOW, "usable", None, None, "cms", "h",
                        document)
    return Article("a1", "urn:x", revision, NOW, 7)


# ----- may_still_push -------------------------------------------------------------------------------

@pytest.mark.parametrize(("destination", "partners", "allowed"), [
    (subscription("open", partner_name=None, key_id=None), (), True),  # a public subscriber
    (subscription(), (partner(),), True),
    (subscription(), (), False),  # the partner is gone
    (subscription(), (partner(active=False),), False),  # disabled
    (subscription(feed="nowhere"), (partner(),), False),  # the topic's feed is gone
    (subscription(), (partner(feeds=("sport",)),), False),  # the feed was taken away
    (subscription(), (partner(formats=("rss",)),), False),  # the format was taken away
    (subscription("open"), (partner(feeds=("sport",), formats=("rss",)),), True),  # public: entitlements aside
    (subscription(), (partner(keys=(AccessKey("k1", "0" * 64, NOW, revoked_at=NOW),)),), False),  # revoked
    (subscription(), (partner(keys=(AccessKey("k1", "0" * 64, NOW, expires_at=NOW),)),), False),  # expired
    (subscription(key_id="k2"), (partner(),), False),  # another key
    (subscription("open"), (partner(keys=()),), False),  # a key on a public feed still counts
    (webhook(), (partner(),), True),
    (webhook(), (partner(active=False),), False),
    (webhook(), (partner(feeds=("sport",), formats=("rss",)),), True),  # a webhook's wants decide that
])
def test_may_still_push(destination, partners, allowed):
    assert may_still_push(destination, table(*partners), FEEDS, NOW) is allowed


@pytest.mark.parametrize(("destination", "partners", "reason"), [
    (subscription(), (), "the partner no longer exists"),
    (subscription(), (partner(active=False),), "the partner was disabled"),
    (subscription(feed="nowhere"), (partner(),), "this hub no longer serves the topic's feed"),
    (subscription(), (partner(feeds=("sport",)),), "the partner is no longer entitled to this topic's feed"),
    (subscription(), (partner(formats=("rss",)),), "the partner is no longer entitled to this topic's format"),
    (subscription(), (partner(keys=(AccessKey("k1", "0" * 64, NOW, revoked_at=NOW),)),),
     "the partner key it subscribed with was revoked or has expired"),
    (subscription(key_id="k2"), (partner(),), "the partner key it subscribed with was revoked or has expired"),
    (subscription(), (partner(),), None),
])
def test_the_reason_a_subscriber_is_denied_is_the_one_that_applies(destination, partners, reason):
    assert push_refusal(destination, table(*partners), FEEDS, NOW) == reason


def test_a_keyed_subscription_echoes_its_topic_as_sent():
    keyed = dataclasses.replace(subscription(), topic_as_sent="https://syndicate.test/feeds/news/atom?key=syn_k1_x")
    headers = push_headers(keyed, "a1", 2, Payload(b"<feed/>", "application/atom+xml"),
                           hub_url="https://syndicate.test/hub", timestamp="1")
    assert '<https://syndicate.test/feeds/news/atom?key=syn_k1_x>; rel="self"' in headers["Link"]
    assert "topic_as_sent" not in keyed.to_record() and "syn_k1_x" not in orjson.dumps(keyed.public_view()).decode()
    assert subscription().echo_topic == "https://syndicate.test/feeds/news/atom"


# ----- wants ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("destination", "partners", "slugline", "wanted"), [
    (subscription("sport"), (partner(),), "sport-football", True),
    (subscription("sport"), (partner(),), "politics", False),  # its feed does not hold it
    (subscription("nowhere"), (partner(),), "sport-football", False),
    (webhook("ninjs"), (partner(formats=("json",)),), "politics", True),
    (webhook("ninjs"), (partner(formats=("atom",)),), "politics", False),  # ninjs needs json
    (webhook("atom"), (partner(formats=("atom",)),), "politics", True),
    (webhook("newsml"), (partner(formats=("atom",)),), "politics", False),
    (webhook(), (partner(feeds=("sport",)),), "sport-football", True),
    (webhook(), (partner(feeds=("sport",)),), "politics", False),  # no feed it may read holds it
    (webhook(), (), "politics", False),  # no partner
])
def test_wants(destination, partners, slugline, wanted):
    private = {name: feed for name, feed in FEEDS.items() if not feed.public}
    assert wants(destination, article(slugline), table(*partners), private) is wanted


@pytest.mark.parametrize(("destination", "partners"), [
    (webhook("ninjs"), (partner(formats=("atom",)),)),
    (webhook("newsml"), (partner(formats=("atom",)),)),
    (webhook(), (partner(feeds=("sport",)),)),
])
def test_a_webhook_gets_what_a_public_feed_holds_whatever_the_grants(destination, partners):
    """The access policy's public-feed rule: 'open' is public and holds everything, in every format."""
    assert wants(destination, article("politics"), table(*partners), FEEDS)


# ----- payloads -------------------------------------------------------------------------------------

def test_the_ninjs_document_leaves_photos_out_without_photo_rights():
    with_photos = ninjs_document(article(), include_photos=True)
    assert "associations" in with_photos
    assert ninjs_document(article(), include_photos=False) == {k: v for k, v in with_photos.items()
                                                               if k != "associations"}


def test_a_killed_article_is_its_tombstone():
    tombstone = ninjs_document(article(document={}), include_photos=True)
    assert tombstone == {"uri": "urn:x", "type": "text", "pubStatus": "canceled"}


def test_photo_rights_come_from_the_partner():
    assert photos_allowed(webhook(), table(partner(media=False))) is False
    assert photos_allowed(webhook(), table(partner())) is True
    assert photos_allowed(webhook(), table()) is True  # a partner no longer known
    assert photos_allowed(subscription("open", partner_name=None), table()) is True


def test_signatures_are_hmac_sha256_as_receivers_check_them():
    body = b'{"a": 1}'
    assert sign_webhook("secret", "1700000000", body) == webhook_signature("secret", "1700000000", body)
    assert sign_websub("secret", body) == websub_signature("secret", body)
    assert sign_websub("secret", body) == "sha256=" + hmac.new(b"secret", body, hashlib.sha256).hexdigest()


def test_the_delivery_id_is_stable_per_destination_article_and_version():
    assert delivery_id("wh-1", "a1", 2) == delivery_id("wh-1", "a1", 2)
    assert len({delivery_id("wh-1", "a1", 2), delivery_id("wh-1", "a1", 3), delivery_id("wh-2", "a1", 2)}) == 3
    assert delivery_id("wh-1", "a1", 2) == hashlib.sha256(b"wh-1|a1|2").hexdigest()[:32]


def test_push_headers():
    payload = Payload(orjson.dumps({"a": 1}), "application/json")
    hook = push_headers(webhook(), "a1", 2, payload, hub_url="https://syndicate.test/hub", timestamp="1700000000")
    assert hook == {"Content-Type": "application/json", "User-Agent": "syndicate-push/1",
                    "X-Syndicate-Delivery": delivery_id("wh-1", "a1", 2), "X-Syndicate-Timestamp": "1700000000",
                    "X-Syndicate-Signature": sign_webhook("s" * 16, "1700000000", payload.body)}
    sub = push_headers(subscription(), "a1", 2, payload, hub_url="https://syndicate.test/hub", timestamp="0")
    assert sub["Link"] == '<https://syndicate.test/hub>; rel="hub", <https://syndicate.test/feeds/news/atom>; rel="self"'
    assert sub["X-Syndicate-Delivery"] == delivery_id("ws-1", "a1", 2)
    assert "X-Hub-Signature" not in sub and "X-Syndicate-Signature" not in sub  # no secret given
    signed = dataclasses.replace(subscription(), secret="x")
    assert push_headers(signed, "a1", 2, payload, hub_url="h", timestamp="0")["X-Hub-Signature"] == \
        sign_websub("x", payload.body)
