"""A partner's webhook endpoint as it is registered: the one check the admin API
(``POST /api/partners/{name}/endpoints``) and ``syndicate partner endpoint add`` share.

An endpoint needs a URL push may go to (:func:`server.push.safety.check_destination`), one of the
webhook formats, a secret of 16 to 199 bytes, and a partner that may read some feed in the feed format
its webhook format needs (``ninjs`` needs ``json``). Each refusal is a 422 problem naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable

from server.core.errors import Problem
from server.core.networks import Network
from server.domain.access import readable_feeds
from server.domain.feeds import FeedDefinition
from server.domain.partners import Partner
from server.push.destinations import WEBHOOK_FEED_FORMATS, WEBHOOK_FORMATS, Destination, new_webhook
from server.push.safety import check_destination

MIN_SECRET_BYTES, MAX_SECRET_BYTES = 16, 199


async def checked_webhook(partner: Partner, url: object, fmt: object, secret: object,
                          feeds: Iterable[FeedDefinition], allowed: tuple[Network, ...]) -> Destination:
    """The new endpoint (not yet saved), or the :class:`Problem` that refuses it."""
    if not isinstance(url, str):
        raise Problem("url is required.", status=422, errors=[{"pointer": "/url", "detail": "required"}])
    if not isinstance(fmt, str) or fmt not in WEBHOOK_FORMATS:
        raise Problem(f"format must be one of {', '.join(WEBHOOK_FORMATS)}.", status=422,
                      errors=[{"pointer": "/format", "detail": "unknown format"}])
    if not isinstance(secret, str) or not MIN_SECRET_BYTES <= len(secret.encode()) <= MAX_SECRET_BYTES:
        raise Problem(f"secret must be a string of {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes.", status=422,
                      errors=[{"pointer": "/secret", "detail": f"{MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes"}])
    feed_format = WEBHOOK_FEED_FORMATS[fmt]
    if not readable_feeds(partner, feeds, feed_format):
        raise Problem(f"Partner {partner.name!r} is not entitled to the {feed_format} format, which a {fmt} "
                      "endpoint needs.", status=422,
                      errors=[{"pointer": "/format", "detail": "format not granted to the partner"}])
    await check_destination(url, allowed)
    return new_webhook(partner.name, url, fmt, secret)
