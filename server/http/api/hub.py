"""The W3C WebSub hub at ``POST /hub``, and partners' webhook endpoints under ``/api/partners``.

Subscribing: a form-encoded request is checked (topic is one of our feed URLs, :func:`parse_topic`:
a known feed and format, no trailing slash, no query but ``?key=``; callback is a safe http(s) URL, the key entitles the subscriber to the topic unless the feed is public) and answered 202;
the hub then verifies intent with a GET carrying a random single-use ``hub.challenge`` and only a 2xx
echoing it makes (or replaces) the subscription (:func:`server.push.websub.verify_intent`: a save that
Redis fails is retried for a bounded time, and a subscription never saved is denied). Hub errors
are plain text, as WebSub subscribers expect. Content distribution is :mod:`server.push`'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import orjson
from aiohttp import web

from server.core.errors import Problem
from server.core.networks import address_bucket
from server.core.values import whole_number
from server.domain.access import feed_refusal
from server.domain.feeds import FORMATS
from server.domain.ninjs import DocumentError, parse_json_object
from server.domain.partners import check_name
from server.http.auth import require_caller
from server.http.client_address import request_address
from server.http.forms import read_form
from server.http.state import ACCESS, DESTINATIONS, FEEDS, HUB_TASKS, PARTNERS, SETTINGS
from server.partners.ratelimit import SharedCounts, seconds_left
from server.push.destinations import (
    WEBHOOK,
    WEBSUB,
    Destination,
    subscription_id,
)
from server.push.endpoints import checked_webhook
from server.push.safety import UnsafeDestination, check_destination
from server.push.websub import HubMode, verify_intent

log = logging.getLogger(__name__)
MAX_SECRET_BYTES = 199  # WebSub: hub.secret MUST be less than 200 bytes


HUB_REQUESTS_PER_SUBSCRIPTION = 6
VERIFICATIONS_RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True, slots=True)
class HubLimits:
    """What the hub takes: requests a minute per client address bucket (``SYNDICATE_HUB_REQUESTS_PER_ADDRESS``,
    before the body is read), per topic (``SYNDICATE_HUB_REQUESTS_PER_TOPIC``) and per (callback, topic),
    each counted by every process together (:class:`~server.partners.ratelimit.SharedCounts`), and
    verifications of intent running at once in this process (``SYNDICATE_HUB_MAX_VERIFICATIONS``; each
    holds an outbound connection): past them, 429, or 503 for verifications, with ``Retry-After``."""

    counts: SharedCounts
    per_address: int
    per_topic: int
    max_verifications: int
    per_subscription: int = HUB_REQUESTS_PER_SUBSCRIPTION

    def over(self, what: str, name: str, limit: int) -> int | None:
        """Count one hub request for ``what`` ``name``; the Retry-After seconds once past ``limit``."""
        return seconds_left() if self.counts.count(f"hub:{what}:{name}") > limit else None


HUB_LIMITS: web.AppKey[HubLimits] = web.AppKey("hub_limits", HubLimits)


def _too_many(text: str, retry_after: int) -> web.Response:
    return web.Response(status=429, text=text + "\n", content_type="text/plain",
                        headers={"Retry-After": str(retry_after)})


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type="text/plain")


async def hub(request: web.Request) -> web.Response:
    limits = request.app[HUB_LIMITS]
    address = request_address(request)
    wait = limits.over("address", address_bucket(address), limits.per_address)
    if wait is not None:
        return _too_many(f"Too many hub requests from this address; try again in {wait} s.", wait)
    if request.content_type != "application/x-www-form-urlencoded":
        return _plain(415, "Send the request form-encoded (application/x-www-form-urlencoded).")
    try:
        form = await read_form(request)
    except Problem as unreadable:
        return _plain(400, unreadable.detail)
    mode = form.get("hub.mode")
    if mode not in (HubMode.SUBSCRIBE, HubMode.UNSUBSCRIBE):
        return _plain(400, "hub.mode must be subscribe or unsubscribe.")
    callback, raw_topic = form.get("hub.callback"), form.get("hub.topic")
    if not isinstance(callback, str) or not isinstance(raw_topic, str) or not callback or not raw_topic:
        return _plain(400, "hub.callback and hub.topic are required.")
    settings = request.app[SETTINGS]
    topic = parse_topic(raw_topic, settings.base_url, request.app[FEEDS])
    if isinstance(topic, str):
        return _plain(400, topic)
    feed, fmt = request.app[FEEDS][topic.feed], topic.fmt
    bearer = _bearer(request)
    if bearer and topic.key and bearer != topic.key:
        return _plain(400, "The Authorization header and the topic's ?key= name different keys; send one.")
    try:
        await check_destination(callback, settings.push_allow_networks, field="hub.callback")
    except UnsafeDestination as exc:
        return _plain(400, exc.detail)
    secret = form.get("hub.secret")
    if secret is not None and (not isinstance(secret, str) or len(secret.encode()) > MAX_SECRET_BYTES):
        return _plain(400, "hub.secret must be less than 200 bytes.")
    lease = _lease(form.get("hub.lease_seconds"), settings)
    if lease is None:
        return _plain(400, "hub.lease_seconds must be a whole number of seconds.")

    partner_name, key_id = None, None
    presented = bearer or topic.key
    if not feed.public or presented:
        try:  # the same key check and failed-key throttle as a feed poll
            reader = request.app[ACCESS].check_key(presented or "", address)
        except Problem as exc:
            if exc.status == 429:
                return web.Response(status=429, text=exc.detail + "\n", content_type="text/plain",
                                    headers={"Retry-After": exc.headers.get("Retry-After", "60")})
            reader = None
        if not isinstance(reader, tuple) or reader[0] is None or reader[1] is None:
            return _plain(403, "This topic needs a valid partner key (Authorization: Bearer, or ?key= on the topic).")
        partner, key = reader
        if feed_refusal(partner, feed, fmt) is not None:
            return _plain(403, f"Partner {partner.name} is not entitled to {feed.name} in {fmt}.")
        partner_name, key_id = partner.name, key.key_id
    # Counted only once the request may subscribe: bad keys cannot use up a private topic's budget.
    wait = limits.over("topic", topic.url, limits.per_topic)
    if wait is not None:
        return _too_many("Too many hub requests for this topic; try again later.", wait)

    # The id and the record's topic are the feed URL without the key; the topic as sent is echoed in the
    # verification (WebSub 5.3) and kept, sealed, for denials and content distribution.
    subscription = Destination(
        id=subscription_id(callback, topic.url), kind=WEBSUB, url=callback, format=fmt, secret=secret or None,
        partner=partner_name, key_id=key_id, feed=feed.name, topic=topic.url,
        topic_as_sent=topic.as_sent if topic.as_sent != topic.url else None)
    wait = limits.over("subscription", subscription.id, limits.per_subscription)
    if wait is not None:
        return _too_many("Too many requests for this callback and topic; try again later.", wait)
    if len(request.app[HUB_TASKS]) >= limits.max_verifications:
        return web.Response(status=503, text="The hub is verifying too many subscriptions; try again shortly.\n",
                            content_type="text/plain",
                            headers={"Retry-After": str(VERIFICATIONS_RETRY_AFTER_SECONDS)})
    task = asyncio.get_running_loop().create_task(_verify(request.app, mode, subscription, lease))
    request.app[HUB_TASKS].add(task)
    task.add_done_callback(request.app[HUB_TASKS].discard)
    return web.Response(status=202)


async def _verify(app: web.Application, mode: str, subscription: Destination, lease: int) -> bool:
    """Verification of intent (:func:`server.push.websub.verify_intent`), run as a task after the 202."""
    settings = app[SETTINGS]
    return await verify_intent(app[DESTINATIONS], HubMode(mode), subscription, lease,
                               allow_networks=settings.push_allow_networks,
                               timeout_seconds=settings.push_timeout_seconds)


# ----- partner webhook endpoints (admin API) --------------------------------------------------------


async def add_endpoint(request: web.Request) -> web.Response:
    require_caller(request, admin=True)
    partner = await request.app[PARTNERS].get(check_name(request.match_info["name"]))
    try:
        body = parse_json_object(await request.read())
    except DocumentError as exc:
        raise Problem(exc.detail, errors=exc.errors) from None
    unknown = sorted(set(body) - {"url", "format", "secret"})
    if unknown:
        raise Problem(f"Unknown field {unknown[0]!r}; an endpoint takes url, format and secret.", status=422,
                      errors=[{"pointer": f"/{unknown[0]}", "detail": "unknown field"}])
    webhook = await checked_webhook(partner, body.get("url"), body.get("format"), body.get("secret"),
                                    request.app[FEEDS].values(), request.app[SETTINGS].push_allow_networks)
    endpoint = await request.app[DESTINATIONS].save(webhook)
    return web.Response(body=orjson.dumps(endpoint.public_view()), status=201, content_type="application/json",
                        headers={"Location": f"/api/partners/{partner.name}/endpoints/{endpoint.id}"})


async def list_endpoints(request: web.Request) -> web.Response:
    require_caller(request, admin=True)
    partner = await request.app[PARTNERS].get(check_name(request.match_info["name"]))
    endpoints = await request.app[DESTINATIONS].for_partner(partner.name, WEBHOOK)
    subscriptions = await request.app[DESTINATIONS].for_partner(partner.name, WEBSUB)
    return web.Response(body=orjson.dumps({"items": [e.public_view() for e in endpoints],
                                           "subscriptions": [s.public_view() for s in subscriptions]}),
                        content_type="application/json")


async def remove_endpoint(request: web.Request) -> web.Response:
    require_caller(request, admin=True)
    name = check_name(request.match_info["name"])
    endpoint = await request.app[DESTINATIONS].require(request.match_info["endpoint_id"], partner=name)
    await request.app[DESTINATIONS].remove(endpoint.id)
    return web.Response(status=204)


@dataclass(frozen=True, slots=True)
class Topic:
    """A ``hub.topic`` this hub serves: the feed URL without its key, the feed and format, the key it
    carries (``?key=``), and the string exactly as the subscriber sent it (echoed back: WebSub 5.3)."""

    url: str
    feed: str
    fmt: str
    key: str | None
    as_sent: str


def parse_topic(raw: str, base_url: str, feeds: Iterable[str]) -> Topic | str:
    """The topic ``raw`` names, or why this hub does not serve it (a sentence for the 400): only
    ``<base URL>/feeds/<name>/<format>`` of a known feed and format, with no query but one ``key``, no
    fragment, no trailing slash."""
    shape = f"{base_url}/feeds/<name>/<format>"
    try:
        parts = urlsplit(raw)
    except ValueError:  # such as a "[" in the host that opens no IPv6 address
        return f"hub.topic must be a feed of this hub: {shape}."
    base = urlsplit(base_url)
    if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
        return f"hub.topic must be a feed of this hub: {shape}."
    prefix = base.path.rstrip("/")  # a base URL may have a path (behind a proxy)
    path = parts.path[len(prefix):] if parts.path.startswith(prefix + "/") else ""
    segments = path[1:].split("/") if path.startswith("/") else []
    if len(segments) != 3 or segments[0] != "feeds" or not segments[1] or not segments[2]:
        return f"hub.topic {raw!r} is not a feed URL of this hub (no trailing slash, no empty segment): {shape}."
    name, fmt = segments[1], segments[2]
    known = sorted(feeds)
    if name not in known:
        return f"hub.topic names no feed of this hub: {name!r}; the feeds are {', '.join(known)}."
    if fmt not in FORMATS:
        return f"hub.topic names no format of this hub: {fmt!r}; the formats are {', '.join(FORMATS)}."
    if parts.fragment or "#" in raw:
        return "hub.topic must not have a fragment."
    query = parse_qs(parts.query, keep_blank_values=True) if parts.query else {}
    keys_given = query.get("key", [])
    if set(query) - {"key"} or len(keys_given) > 1 or ("?" in raw and not (keys_given and keys_given[0])):
        return "hub.topic may carry no query but one key=<partner key> (a topic is a feed's head, not a page)."
    key = query.get("key", [None])[0]
    return Topic(url=f"{base_url}{path}", feed=name, fmt=fmt, key=key or None, as_sent=raw)


def _lease(raw: object, settings) -> int | None:
    if raw is None or raw == "":
        requested = settings.websub_lease_default
    elif not isinstance(raw, str) or (requested := whole_number(raw)) is None:
        return None
    return max(settings.websub_lease_min, min(requested, settings.websub_lease_max))


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None
