"""The W3C WebSub hub at ``POST /hub``, and partners' webhook endpoints under ``/api/partners``.

Subscribing: a form-encoded request is checked (topic is one of our feed URLs, callback is a safe
http(s) URL, the key entitles the subscriber to the topic unless the feed is public) and answered 202;
the hub then verifies intent with a GET carrying a random single-use ``hub.challenge`` and only a 2xx
echoing it makes (or replaces) the subscription (:func:`server.push.websub.verify_intent`: a save that
Redis fails is retried for a bounded time, and a subscription never saved is denied). Hub errors
are plain text, as WebSub subscribers expect. Content distribution is :mod:`server.push`'s.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import orjson
from aiohttp import web

from server.core.errors import Problem
from server.core.values import whole_number
from server.domain.access import feed_refusal, readable_feeds
from server.domain.feeds import FORMATS
from server.domain.ninjs import DocumentError, parse_json_object
from server.domain.partners import check_name
from server.http.auth import require_caller
from server.http.clients import client_address
from server.http.state import ACCESS, DESTINATIONS, FEEDS, HUB_TASKS, PARTNERS, SETTINGS, TOKENS
from server.partners.ratelimit import Windows
from server.push.destinations import (
    WEBHOOK,
    WEBHOOK_FEED_FORMATS,
    WEBHOOK_FORMATS,
    WEBSUB,
    Destination,
    new_webhook,
    subscription_id,
)
from server.push.safety import UnsafeDestination, check_destination
from server.push.websub import HubMode, verify_intent

log = logging.getLogger(__name__)
MAX_SECRET_BYTES = 199  # WebSub: hub.secret MUST be less than 200 bytes


HUB_REQUESTS_PER_ADDRESS = 60
HUB_REQUESTS_PER_SUBSCRIPTION = 6
HUB_MAX_VERIFICATIONS = 64


@dataclass(frozen=True, slots=True)
class HubLimits:
    """What one process's hub takes: requests per client address and per (callback, topic) a minute,
    and verifications of intent running at once (each holds an outbound connection)."""

    by_address: Windows = field(default_factory=lambda: Windows(HUB_REQUESTS_PER_ADDRESS))
    by_subscription: Windows = field(default_factory=lambda: Windows(HUB_REQUESTS_PER_SUBSCRIPTION))
    max_verifications: int = HUB_MAX_VERIFICATIONS


HUB_LIMITS: web.AppKey[HubLimits] = web.AppKey("hub_limits", HubLimits)


def _too_many(text: str, retry_after: int) -> web.Response:
    return web.Response(status=429, text=text + "\n", content_type="text/plain",
                        headers={"Retry-After": str(retry_after)})


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type="text/plain")


async def hub(request: web.Request) -> web.Response:
    limits = request.app[HUB_LIMITS]
    address = client_address(request)
    wait = limits.by_address.take(address)
    if wait is not None:
        return _too_many(f"Too many hub requests from this address; try again in {wait} s.", wait)
    if request.content_type != "application/x-www-form-urlencoded":
        return _plain(415, "Send the request form-encoded (application/x-www-form-urlencoded).")
    form = await request.post()
    mode = form.get("hub.mode")
    if mode not in (HubMode.SUBSCRIBE, HubMode.UNSUBSCRIBE):
        return _plain(400, "hub.mode must be subscribe or unsubscribe.")
    callback, raw_topic = form.get("hub.callback"), form.get("hub.topic")
    if not isinstance(callback, str) or not isinstance(raw_topic, str) or not callback or not raw_topic:
        return _plain(400, "hub.callback and hub.topic are required.")
    settings = request.app[SETTINGS]
    topic, feed_name, fmt, topic_key = _parse_topic(raw_topic, settings.base_url)
    feed = request.app[FEEDS].get(feed_name or "")
    if feed is None or fmt not in FORMATS:
        return _plain(400, f"hub.topic must be a feed of this hub: {settings.base_url}/feeds/<name>/<format>.")
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
    presented = _bearer(request) or topic_key
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

    subscription = Destination(
        id=subscription_id(callback, topic), kind=WEBSUB, url=callback, format=fmt, secret=secret or None,
        partner=partner_name, key_id=key_id, feed=feed.name, topic=topic)
    wait = limits.by_subscription.take(subscription.id)
    if wait is not None:
        return _too_many("Too many requests for this callback and topic; try again later.", wait)
    if len(request.app[HUB_TASKS]) >= limits.max_verifications:
        return web.Response(status=503, text="The hub is verifying too many subscriptions; try again shortly.\n",
                            content_type="text/plain", headers={"Retry-After": "5"})
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
    require_caller(request, request.app[TOKENS], admin=True)
    partner = await request.app[PARTNERS].get(check_name(request.match_info["name"]))
    try:
        body = parse_json_object(await request.read())
    except DocumentError as exc:
        raise Problem(exc.detail, errors=exc.errors) from None
    unknown = sorted(set(body) - {"url", "format", "secret"})
    if unknown:
        raise Problem(f"Unknown field {unknown[0]!r}; an endpoint takes url, format and secret.", status=422,
                      errors=[{"pointer": f"/{unknown[0]}", "detail": "unknown field"}])
    url, fmt, secret = body.get("url"), body.get("format"), body.get("secret")
    if not isinstance(url, str):
        raise Problem("url is required.", status=422, errors=[{"pointer": "/url", "detail": "required"}])
    if fmt not in WEBHOOK_FORMATS:
        raise Problem(f"format must be one of {', '.join(WEBHOOK_FORMATS)}.", status=422,
                      errors=[{"pointer": "/format", "detail": "unknown format"}])
    if not isinstance(secret, str) or not 16 <= len(secret.encode()) <= MAX_SECRET_BYTES:
        raise Problem("secret must be a string of 16 to 199 bytes.", status=422,
                      errors=[{"pointer": "/secret", "detail": "16 to 199 bytes"}])
    if not readable_feeds(partner, request.app[FEEDS].values(), WEBHOOK_FEED_FORMATS[fmt]):
        raise Problem(f"Partner {partner.name!r} is not entitled to the {WEBHOOK_FEED_FORMATS[fmt]} format.",
                      status=422, errors=[{"pointer": "/format", "detail": "format not granted to the partner"}])
    await check_destination(url, request.app[SETTINGS].push_allow_networks)
    endpoint = await request.app[DESTINATIONS].save(new_webhook(partner.name, url, fmt, secret))
    return web.Response(body=orjson.dumps(endpoint.public_view()), status=201, content_type="application/json",
                        headers={"Location": f"/api/partners/{partner.name}/endpoints/{endpoint.id}"})


async def list_endpoints(request: web.Request) -> web.Response:
    require_caller(request, request.app[TOKENS], admin=True)
    partner = await request.app[PARTNERS].get(check_name(request.match_info["name"]))
    endpoints = await request.app[DESTINATIONS].for_partner(partner.name, WEBHOOK)
    subscriptions = await request.app[DESTINATIONS].for_partner(partner.name, WEBSUB)
    return web.Response(body=orjson.dumps({"items": [e.public_view() for e in endpoints],
                                           "subscriptions": [s.public_view() for s in subscriptions]}),
                        content_type="application/json")


async def remove_endpoint(request: web.Request) -> web.Response:
    require_caller(request, request.app[TOKENS], admin=True)
    name = check_name(request.match_info["name"])
    endpoint = await request.app[DESTINATIONS].require(request.match_info["endpoint_id"], partner=name)
    await request.app[DESTINATIONS].remove(endpoint.id)
    return web.Response(status=204)


def _parse_topic(raw: str, base_url: str) -> tuple[str, str | None, str | None, str | None]:
    """(topic without its key parameter, feed name, format, key) for one of our feed URLs."""
    parts = urlsplit(raw)
    base = urlsplit(base_url)
    key = parse_qs(parts.query).get("key", [None])[0]
    prefix = base.path.rstrip("/")  # a base URL may have a path (behind a proxy)
    path = parts.path[len(prefix):] if parts.path.startswith(prefix + "/") else ""
    segments = path[1:].split("/") if path.startswith("/") else []  # exactly /feeds/<name>/<format>
    topic = f"{base_url}{path}"
    if (parts.scheme, parts.netloc) != (base.scheme, base.netloc) or len(segments) != 3 or segments[0] != "feeds":
        return topic, None, None, key
    return topic, segments[1], segments[2], key


def _lease(raw: object, settings) -> int | None:
    if raw is None or raw == "":
        requested = settings.websub_lease_default
    elif not isinstance(raw, str) or (requested := whole_number(raw)) is None:
        return None
    return max(settings.websub_lease_min, min(requested, settings.websub_lease_max))


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None
