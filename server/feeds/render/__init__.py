"""Pure feed renderers: Atom, RSS 2.0, NewsML-G2 and JSON Feed from a FeedView and its ItemViews.

Nothing here does I/O or reads the clock: the same input always gives byte-identical output, so the
results can be cached and compared by hash. ``view`` holds the input types (built from stored
revisions by ``ItemView.from_revision``); each format has its own module (``atom``, ``rss``,
``newsml``, ``jsonfeed``); ``mediarss`` is the feedgen extension the Atom and RSS renderers share
for photos.
"""

from server.feeds.render.atom import ATOM_MEDIA_TYPE, render_atom, render_atom_entry
from server.feeds.render.jsonfeed import JSON_FEED_MEDIA_TYPE, render_json_feed
from server.feeds.render.newsml import (
    NEWSML_ITEM_MEDIA_TYPE,
    NEWSML_MESSAGE_MEDIA_TYPE,
    EmptyNewsMessageError,
    render_newsml_item,
    render_newsml_message,
    render_newsml_news_item,
)
from server.feeds.render.rss import RSS_MEDIA_TYPE, render_rss
from server.feeds.render.view import FeedView, ItemView, Photo, Subject

__all__ = [
    "ATOM_MEDIA_TYPE",
    "JSON_FEED_MEDIA_TYPE",
    "NEWSML_ITEM_MEDIA_TYPE",
    "NEWSML_MESSAGE_MEDIA_TYPE",
    "RSS_MEDIA_TYPE",
    "EmptyNewsMessageError",
    "FeedView",
    "ItemView",
    "Photo",
    "Subject",
    "render_atom",
    "render_atom_entry",
    "render_json_feed",
    "render_newsml_item",
    "render_newsml_message",
    "render_newsml_news_item",
    "render_rss",
]
