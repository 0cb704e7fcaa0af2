"""Who must receive a revision, and as what: the propagation rule, pure (no Redis, no aiohttp).

A partner must receive revision V of article A when

1. it may read V now (the access policy, :mod:`server.domain.access`), **or**
2. it received any earlier revision of A (by poll, item, webhook or WebSub: its receipts hold A).

Corrections and kills follow the story to everyone who had it, as a publish queue resends kills.
What such a partner gets depends on whether it may still read V:

- it may read V: V itself (:attr:`Delivery.CONTENT`; for a kill, the kill's tombstone, :attr:`Delivery.KILL`);
- it may not (the story was re-filed out of its feeds, or its grants changed) but had the story: a kill
  is still the kill (its tombstone, as for everyone); any other revision is a **withdrawal**
  (:attr:`Delivery.WITHDRAWAL`): the article's tombstone shape (uri, ``pubStatus: canceled``, no
  headline, body, classification or photos) with a reason, at version V, so the partner takes its
  copy down and never sees the content of a feed it cannot read.

A disabled partner reads nothing and is sent nothing, so nothing is required of it. Revisions under
embargo or withheld are required of nobody until a feed may show them (the caller asks
:func:`server.domain.feeds.in_feed` first, as for the access policy). Only revisions after the first
(updates, corrections, kills: :data:`TRACKED_KINDS`) are tracked as requirements; a new article is
simply in the feeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from server.core.values import iso
from server.domain.access import may_read_item
from server.domain.articles import CANCELED, CORRECTION, KILL, UPDATE, Article, Revision
from server.domain.feeds import FeedDefinition
from server.domain.partners import Partner

TRACKED_KINDS = (UPDATE, CORRECTION, KILL)  # revisions whose receipt is tracked per partner
ITEM_KINDS = (CORRECTION, KILL)  # revisions that are propagation items (who has received each)
WITHDRAWAL_REASON = ("Withdrawn from the feeds you receive: the story was re-filed or your entitlements "
                     "changed. Please remove it.")


class Delivery(StrEnum):
    """What a partner that must receive a revision is sent."""

    CONTENT = "content"  # the revision itself
    KILL = "kill"  # the kill's tombstone (for everyone who must receive a kill)
    WITHDRAWAL = "withdrawal"  # the article's tombstone with a reason: had the story, may not read it now


def notice(revision: Revision) -> Delivery:
    """What a partner that had the story but may not read ``revision`` gets."""
    return Delivery.KILL if revision.pub_status == CANCELED else Delivery.WITHDRAWAL


def delivery(may_read: bool, had_story: bool, revision: Revision) -> Delivery | None:
    """The rule: None when the partner need not receive ``revision``."""
    if may_read:
        return Delivery.KILL if revision.pub_status == CANCELED else Delivery.CONTENT
    return notice(revision) if had_story else None


def may_read_now(partner: Partner, revision: Revision, feeds: Iterable[FeedDefinition], fmt: str | None = None) -> bool:
    """Rule 1: the access policy on the revision (an inactive partner reads nothing)."""
    return partner.active and may_read_item(partner, revision, feeds, fmt)


def requirement(partner: Partner, revision: Revision, feeds: Iterable[FeedDefinition], had_story: bool) -> Delivery | None:
    """Whether (and as what) ``partner`` must receive ``revision``; ``had_story``: its receipts hold the
    article (any earlier revision)."""
    if not partner.active:
        return None
    return delivery(may_read_now(partner, revision, feeds), had_story, revision)


def if_may_read_or_had(partner: Partner, revision: Revision,
                       feeds: Iterable[FeedDefinition]) -> tuple[Delivery | None, Delivery | None]:
    """The requirement both ways round, for a caller that learns ``had_story`` later (atomically, in
    Redis): (if it may read now, regardless of receipts; if it only had the story). The first is None
    when the partner may not read the revision; both are None for an inactive partner."""
    if not partner.active:
        return None, None
    if may_read_now(partner, revision, feeds):
        return delivery(True, False, revision), None
    return None, notice(revision)


def main_headline(document: dict[str, Any] | None) -> str | None:
    """The main headline of a ninjs document (ops name the story by it)."""
    for headline in (document or {}).get("headlines", []):
        if headline.get("role", "main") == "main":
            value = headline.get("value")
            return value if isinstance(value, str) else None
    return None


def withdrawal(revision: Revision, reason: str = WITHDRAWAL_REASON) -> Revision:
    """The withdrawal of ``revision`` for a partner that may not read it: the article's tombstone shape
    (uri, type, ``pubStatus: canceled``, the version's time), no headline, body, classification or
    photos, and the reason (``killReason``, which renderers show as the withdrawal notice)."""
    document = {"uri": revision.uri, "type": "text", "pubStatus": CANCELED,
                "versionCreated": iso(revision.version_created), "edNote": reason}
    return dataclasses.replace(revision, pub_status=CANCELED, embargoed_until=None, ed_note=None,
                               document=document, kill_reason=reason)


def as_delivered(article: Article, sent: Delivery) -> Article:
    """The article as a partner is sent it: as stored, or (a withdrawal) with its tombstone as latest."""
    if sent is Delivery.WITHDRAWAL:
        return dataclasses.replace(article, latest=withdrawal(article.latest))
    return article
