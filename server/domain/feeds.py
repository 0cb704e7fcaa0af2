"""Feed definitions: the TOML files in ``feeds/`` (one per feed) and which articles each one holds.

A definition names the feed and filters articles by subject, place, language and slugline prefix
(all given filters must match; within a list any value may). The built-in ``latest`` feed holds
everything and exists even without a file (a ``feeds/latest.toml`` may retitle it). A broken file is a
:class:`FeedDefinitionError` at start-up naming the file and the field.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from server.core.text import single_line, xml_safe
from server.domain.articles import CANCELED, EMBARGO_LIFT, PURGE, WITHHELD, Article, Revision

LATEST = "latest"
FORMATS = ("rss", "atom", "newsml", "json")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_TOP_LEVEL = {"name", "title", "description", "language", "public", "limit", "filters"}
_FILTERS = {"subjects", "places", "language", "slugline_prefix"}


class FeedDefinitionError(ValueError):
    """A feed file cannot be used; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class FeedFilters:
    subjects: tuple[str, ...] = ()
    places: tuple[str, ...] = ()
    language: str | None = None
    slugline_prefix: str | None = None

    def matches(self, document: dict[str, Any] | None) -> bool:
        if not any((self.subjects, self.places, self.language, self.slugline_prefix)):
            return True
        if document is None:
            return False
        if self.subjects and not _any_concept(document.get("subjects"), self.subjects):
            return False
        if self.places and not _any_concept(document.get("places"), self.places):
            return False
        if self.language and not _same_language(document.get("language"), self.language):
            return False
        if self.slugline_prefix and not str(document.get("slugline") or "").startswith(self.slugline_prefix):
            return False
        return True


@dataclass(frozen=True, slots=True)
class FeedDefinition:
    name: str
    title: str
    description: str
    language: str | None = None
    public: bool = False
    limit: int = 100
    filters: FeedFilters = field(default_factory=FeedFilters)
    source: str = "built-in"

    def holds(self, revision: Revision | None) -> bool:
        """Whether the article at this revision belongs in the feed (status and embargo aside)."""
        return revision is not None and self.filters.matches(revision.document)


BUILT_IN_LATEST = FeedDefinition(
    name=LATEST, title="Latest", description="Every article, newest change first.")


def load_feed_definitions(directory: Path) -> dict[str, FeedDefinition]:
    """Every ``*.toml`` in ``directory`` plus the built-in ``latest``. A folder that is missing, is not
    a folder or holds no ``*.toml`` is an error: a mistyped ``SYNDICATE_FEEDS_DIR`` (or a server started
    from another folder) must not start quietly with ``latest`` alone."""
    feeds = {LATEST: BUILT_IN_LATEST}
    where = f"SYNDICATE_FEEDS_DIR: {directory}" + ("" if directory.is_absolute() else f" ({directory.absolute()})")
    if not directory.exists():
        raise FeedDefinitionError(f"{where} does not exist; set SYNDICATE_FEEDS_DIR to the folder of feed "
                                  "definitions (*.toml), e.g. the repository's feeds/")
    if not directory.is_dir():
        raise FeedDefinitionError(f"{where} is not a folder")
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise FeedDefinitionError(f"{where} holds no feed definitions (*.toml); add one (a latest.toml "
                                  "is enough) or point SYNDICATE_FEEDS_DIR at the right folder")
    for path in files:
        definition = parse_feed_file(path)
        if definition.name in feeds and definition.name != LATEST:
            raise FeedDefinitionError(f"{path}: name: {definition.name!r} is already defined by "
                                      f"{feeds[definition.name].source}")
        feeds[definition.name] = definition
    return feeds


def parse_feed_file(path: Path) -> FeedDefinition:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FeedDefinitionError(f"{path}: not valid TOML: {exc}") from None
    return parse_feed_definition(data, path)


def parse_feed_definition(data: dict[str, Any], path: Path) -> FeedDefinition:
    def fail(name: str, problem: str) -> FeedDefinitionError:
        return FeedDefinitionError(f"{path}: {name}: {problem}")

    unknown = sorted(set(data) - _TOP_LEVEL)
    if unknown:
        raise fail(unknown[0], f"unknown field (known: {', '.join(sorted(_TOP_LEVEL))})")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise fail("name", "must be lowercase letters, digits and '-', at most 64 characters")
    title = _string(data, "title", fail)
    if title is None:
        raise fail("title", "is required")
    description = _string(data, "description", fail) or title
    language = _string(data, "language", fail)
    public = data.get("public", False)
    if not isinstance(public, bool):
        raise fail("public", "must be true or false")
    limit = data.get("limit", 100)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
        raise fail("limit", "must be a whole number from 1 to 1000")
    raw_filters = data.get("filters", {})
    if not isinstance(raw_filters, dict):
        raise fail("filters", "must be a table ([filters])")
    unknown = sorted(set(raw_filters) - _FILTERS)
    if unknown:
        raise fail(f"filters.{unknown[0]}", f"unknown filter (known: {', '.join(sorted(_FILTERS))})")
    if name == LATEST and raw_filters:
        raise fail("filters", "the built-in 'latest' feed holds every article and takes no filters")
    filters = FeedFilters(
        subjects=_string_list(raw_filters, "subjects", fail),
        places=_string_list(raw_filters, "places", fail),
        language=_string(raw_filters, "language", fail, prefix="filters."),
        slugline_prefix=_string(raw_filters, "slugline_prefix", fail, prefix="filters."),
    )
    return FeedDefinition(name=name, title=title, description=description, language=language, public=public,
                          limit=limit, filters=filters, source=str(path))


def _string(data: dict[str, Any], key: str, fail: Any, prefix: str = "") -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not single_line(xml_safe(value)):
        raise fail(prefix + key, "must be a non-empty string")
    return single_line(xml_safe(value))  # feed titles and names are one line in every format


def _string_list(data: dict[str, Any], key: str, fail: Any) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and single_line(xml_safe(v)) for v in value):
        raise fail(f"filters.{key}", "must be a list of non-empty strings")
    # One line, as ingest stores the names and literals they are compared with (server.domain.ninjs).
    return tuple(single_line(xml_safe(v)) for v in value)


def _any_concept(concepts: Any, wanted: tuple[str, ...]) -> bool:
    """A subject or place matches by its uri, its literal code, or its name (any case)."""
    wanted_folded = {w.casefold() for w in wanted}
    for concept in concepts or ():
        if not isinstance(concept, dict):
            continue
        for key in ("uri", "literal", "name"):
            value = concept.get(key)
            if isinstance(value, str) and value.casefold() in wanted_folded:
                return True
    return False


def _same_language(actual: Any, wanted: str) -> bool:
    """``en`` matches ``en``, ``en-GB`` and ``en-US``; ``en-GB`` matches only ``en-GB``."""
    if not isinstance(actual, str):
        return False
    actual, wanted = actual.casefold(), wanted.casefold()
    return bool(actual == wanted or actual.startswith(wanted + "-"))


def in_archive(feed: FeedDefinition, revision: Revision | None, kind: str, changed_at: datetime) -> bool:
    """Whether an RFC 5005 archive page of ``feed`` shows ``revision`` at the change-log entry that made
    it (``kind``, at ``changed_at``): the feed holds it, it is not withheld, and it was not under embargo
    then. An embargoed revision is shown at its ``embargo-lift`` entry instead, so a page, once complete,
    never changes with the clock. Kills are always shown: a reader of the history must hear of them."""
    if revision is None or not feed.holds(revision) or revision.pub_status == WITHHELD or kind == PURGE:
        return False
    if kind == EMBARGO_LIFT:
        return True
    return revision.embargoed_until is None or revision.embargoed_until <= changed_at


def in_feed(article: Article, now: datetime, kill_window: timedelta | None) -> bool:
    """Whether a feed may show the article now: not withheld, not under embargo, and a kill only for
    ``kill_window`` after it happened (always, in since pages: a poller must hear of every kill)."""
    latest = article.latest
    if latest.pub_status == WITHHELD:
        return False
    if latest.embargoed_until is not None and latest.embargoed_until > now:
        return False
    if latest.pub_status == CANCELED and kill_window is not None:
        return latest.ingested_at >= now - kill_window
    return True


def since_page_shows(feed: FeedDefinition, article: Article, now: datetime) -> bool:
    """Whether the feed's since pages (the cursor a reader follows) show the article's latest revision:
    the feed holds it and a feed may show it now (kills always)."""
    return feed.holds(article.latest) and in_feed(article, now, None)
