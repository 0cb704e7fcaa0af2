"""A bounded memo of per-item XML fragments, so re-rendering a feed rebuilds only the items that changed.

A feed page is re-rendered whenever one of its articles changes, yet almost every item in it is the
same as last time. The element subtree of one item (an Atom entry, an RSS item, a NewsML-G2 article
newsItem and its picture items) is a pure function of the item's immutable :class:`ItemView` and of
the few :class:`FeedView` fields it reads, so it can be built once and reused: the memo keeps the
built subtree and hands out a deep copy for each new document (an lxml element belongs to exactly
one tree). Output stays byte-identical to building from scratch; only the time changes.

Keys must hold everything the builder reads (the ItemView itself, which is frozen and hashable, and
the FeedView fields the format uses). The memo is bounded (least recently used out) and thread-safe.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from lxml import etree

from server.feeds.render.view import clear_view_memo

# Items per format. One memoised item costs about 25 KB (lxml nodes of a ~5 KB story), so the three
# XML memos hold at most ~20 MB per process; that covers the head pages of a few 100-item feeds and
# their recent since pages. A page larger than this still renders correctly, just without the gain.
DEFAULT_SIZE = 256
_ALL: list[FragmentMemo] = []


class FragmentMemo:
    """Elements ``build()`` made for ``key``: :meth:`copies` gives fresh deep copies to put into a new
    document; :meth:`shared` gives the memoised elements themselves, which must never be modified
    or attached to a tree (copy them first)."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[Hashable, tuple[etree._Element, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        _ALL.append(self)

    def copies(self, key: Hashable, build: Callable[[], tuple[etree._Element, ...]]) -> list[etree._Element]:
        return [copy.deepcopy(element) for element in self.shared(key, build)]

    def shared(self, key: Hashable, build: Callable[[], tuple[etree._Element, ...]]) -> tuple[etree._Element, ...]:
        with self._lock:
            elements = self._entries.get(key)
            if elements is not None:
                self._entries.move_to_end(key)
                self.hits += 1
        if elements is None:
            elements = build()
            with self._lock:
                self.misses += 1
                self._entries[key] = elements
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return elements

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)


def clear_all() -> None:
    """Empty every memo, and the ItemView memo (the benchmark uses it to time a cold render)."""
    for memo in _ALL:
        memo.clear()
    clear_view_memo()
