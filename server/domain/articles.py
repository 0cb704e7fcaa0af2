"""The domain's data: an Article and its Revisions, and entries of the change log.

A :class:`Revision` is immutable once stored. Its ``document`` is the ninjs document normalised to
3.x (camelCase) property names, with XML-forbidden characters removed and HTML bodies sanitised; it is
``None`` once the body was dropped (retention) or purged (legal takedown), leaving the metadata as a
tombstone. Records are serialised with orjson; datetimes are timezone-aware and kept in UTC.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from server.core.values import iso, parse_iso


class ChangeKind(StrEnum):
    """Kinds of change, as written to the change log."""

    NEW = "new"
    UPDATE = "update"
    CORRECTION = "correction"
    KILL = "kill"
    PURGE = "purge"
    EMBARGO_LIFT = "embargo-lift"


class PubStatus(StrEnum):
    """Publication statuses (ninjs pubStatus / NewsML-G2 stat:*)."""

    USABLE = "usable"
    WITHHELD = "withheld"
    CANCELED = "canceled"


# The same values as plain strings (``.value``), for the store, the renderers and Redis: a str
# subclass is not a valid orjson dict key.
NEW, UPDATE, CORRECTION, KILL = ChangeKind.NEW.value, ChangeKind.UPDATE.value, ChangeKind.CORRECTION.value, ChangeKind.KILL.value
PURGE, EMBARGO_LIFT = ChangeKind.PURGE.value, ChangeKind.EMBARGO_LIFT.value
USABLE, WITHHELD, CANCELED = PubStatus.USABLE.value, PubStatus.WITHHELD.value, PubStatus.CANCELED.value


def article_id_for_uri(uri: str) -> str:
    """The article's stable, short, URL-safe id: the first 80 bits of SHA-256 of the ninjs ``uri``
    (UTF-8), as 16 lowercase base32 characters. The same uri always gives the same id."""
    digest = hashlib.sha256(uri.encode("utf-8")).digest()[:10]
    return base64.b32encode(digest).decode("ascii").lower()


def is_article_id(value: str) -> bool:
    return len(value) == 16 and all(c in "abcdefghijklmnopqrstuvwxyz234567" for c in value)


@dataclass(frozen=True, slots=True)
class Revision:
    article_id: str
    uri: str
    version: int  # the server's, 1, 2, ... per article
    kind: str  # NEW, UPDATE, CORRECTION or KILL
    signal: str | None  # None for a first version, "update" or "correction" after it
    first_created: datetime
    version_created: datetime
    ingested_at: datetime  # the server's clock when it was stored
    pub_status: str
    embargoed_until: datetime | None
    ed_note: str | None
    publisher: str
    content_hash: str
    document: dict[str, Any] | None
    kill_reason: str | None = None
    removed_characters: int = 0
    body_dropped_at: datetime | None = None
    # What the CMS sent that has no home in ninjs 3.x (JSON pointer into the document as sent -> value),
    # e.g. Superdesk's priority; dropped with the body. Held in the record only when there is some.
    extra: dict[str, Any] | None = None

    @property
    def has_body(self) -> bool:
        return self.document is not None

    def to_record(self) -> dict[str, Any]:
        record = {
            "id": self.article_id,
            "uri": self.uri,
            "version": self.version,
            "kind": self.kind,
            "signal": self.signal,
            "firstCreated": iso(self.first_created),
            "versionCreated": iso(self.version_created),
            "ingestedAt": iso(self.ingested_at),
            "pubStatus": self.pub_status,
            "embargoedUntil": iso(self.embargoed_until),
            "edNote": self.ed_note,
            "publisher": self.publisher,
            "contentHash": self.content_hash,
            "killReason": self.kill_reason,
            "removedCharacters": self.removed_characters,
            "bodyDroppedAt": iso(self.body_dropped_at),
            "document": self.document,
        }
        if self.extra is not None:
            record["extra"] = self.extra
        return record

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_record())

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Revision:
        return cls(
            article_id=record["id"],
            uri=record["uri"],
            version=int(record["version"]),
            kind=record["kind"],
            signal=record.get("signal"),
            first_created=parse_iso(record["firstCreated"]),
            version_created=parse_iso(record["versionCreated"]),
            ingested_at=parse_iso(record["ingestedAt"]),
            pub_status=record["pubStatus"],
            embargoed_until=parse_iso(record.get("embargoedUntil")),
            ed_note=record.get("edNote"),
            publisher=record["publisher"],
            content_hash=record["contentHash"],
            document=record.get("document"),
            kill_reason=record.get("killReason"),
            removed_characters=int(record.get("removedCharacters") or 0),
            body_dropped_at=parse_iso(record.get("bodyDroppedAt")),
            extra=record.get("extra"),
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> Revision:
        return cls.from_record(orjson.loads(data))


@dataclass(frozen=True, slots=True)
class Article:
    """An article at its latest revision, with the state that spans revisions."""

    id: str
    uri: str
    latest: Revision
    created_at: datetime  # the server's ingest time of version 1
    change_seq: int  # change-log sequence number of the latest change
    purged_at: datetime | None = None
    purge_reason: str | None = None
    changed_at: datetime | None = None  # the latest change: an ingest, or an embargo lifting

    @property
    def last_changed(self) -> datetime:
        return self.changed_at or self.latest.ingested_at

    @property
    def version(self) -> int:
        return self.latest.version

    @property
    def etag(self) -> str:
        return f'"{self.latest.version}"'

    @property
    def killed(self) -> bool:
        return self.latest.pub_status == CANCELED


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change log."""

    seq: int
    article_id: str
    version: int
    kind: str
    ingested_at: datetime
