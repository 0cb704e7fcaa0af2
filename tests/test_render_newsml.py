"""NewsML-G2 2.35 output: every document validates against the IPTC Power XSD offline, reads back with
IPTC's own ``newsmlg2`` package, and carries the item metadata, XHTML body and picture items."""

from __future__ import annotations

import pytest
from NewsMLG2 import NewsItem, NewsMLG2Document
from NewsMLG2 import NewsMessage as G2NewsMessage
from render_helpers import (
    G2_XSD,
    KILL_REASON,
    NAR_NS,
    XHTML_NS,
    feed_view,
    killed_revision,
    many_items,
    nar,
    newsml_errors,
    newsml_items,
    parse_xml,
    seed_document,
    seed_v1_revision,
    seed_v2_revision,
    view,
)

from server.feeds.render import (
    NEWSML_ITEM_MEDIA_TYPE,
    NEWSML_MESSAGE_MEDIA_TYPE,
    EmptyNewsMessageError,
    render_newsml_item,
    render_newsml_message,
    render_newsml_news_item,
)

DOCUMENTS = {
    "message-v1": lambda: render_newsml_message(feed_view(), [view(seed_v1_revision())]),
    "message-v1-v2-killed": lambda: render_newsml_message(
        feed_view(), [view(seed_v1_revision()), view(seed_v2_revision()), view(killed_revision())]),
    "item-v2": lambda: render_newsml_item(feed_view(), view(seed_v2_revision())),
    "item-killed": lambda: render_newsml_item(feed_view(), view(killed_revision())),
    "item-purged": lambda: render_newsml_item(feed_view(), view(killed_revision(keep_document=False))),
    "bare-item-v2": lambda: render_newsml_news_item(feed_view(), view(seed_v2_revision())),
    "bare-item-killed": lambda: render_newsml_news_item(feed_view(), view(killed_revision())),
    "no-photos": lambda: render_newsml_message(feed_view(include_photos=False), [view(seed_v2_revision())]),
    "fifty": lambda: render_newsml_message(feed_view(), many_items(50)),
}


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_validates_against_the_iptc_schema(name: str) -> None:
    assert newsml_errors(DOCUMENTS[name]()) == []


def test_an_empty_message_is_refused_not_made_invalid() -> None:
    with pytest.raises(EmptyNewsMessageError):
        render_newsml_message(feed_view(), [])


def test_the_validator_can_fail() -> None:
    bad = G2_XSD.parent / "examples" / "invalid" / "001_incomplete_file.xml"
    assert newsml_errors(bad.read_bytes()) != []
    # A newsItem of ours, its itemMeta removed, fails too.
    from lxml import etree

    root = parse_xml(render_newsml_news_item(feed_view(), view(seed_v2_revision())))
    root.remove(root.find(nar("itemMeta")))
    assert newsml_errors(etree.tostring(root)) != []


def test_iptc_reader_reads_back_every_item_of_a_message() -> None:
    from lxml import etree

    items = [view(seed_v1_revision()), view(killed_revision())]
    data = render_newsml_message(feed_view(), items)
    message = NewsMLG2Document(data).get_item()
    assert isinstance(message, G2NewsMessage)
    assert str(message.header.transmitid) == "render-0001"
    assert str(message.header.sent) == "2022-11-04T12:00:00Z"

    read = []
    for element in parse_xml(data).find(nar("itemSet")):
        news_item = NewsMLG2Document(etree.tostring(element)).get_item()
        assert isinstance(news_item, NewsItem)
        read.append((news_item.guid, news_item.version, str(news_item.itemmeta.itemclass.qcode)))
    photos = items[0].photos
    assert read == [
        (items[0].uri, "1", "ninat:text"),
        (photos[0].uri, "1", "ninat:picture"),
        (photos[1].uri, "1", "ninat:picture"),
        (items[1].uri, "3", "ninat:text"),  # withdrawn: no pictures follow
    ]


def test_iptc_reader_reads_the_bare_item() -> None:
    item = view(seed_v2_revision())
    news_item = NewsMLG2Document(render_newsml_news_item(feed_view(), item)).get_item()
    assert news_item.guid == item.uri
    assert news_item.version == "2"
    assert news_item.standardversion == "2.35" and news_item.conformance == "power"
    assert [str(h) for h in news_item.contentmeta.headline] == [seed_document(2)["headlines"][0]["value"]]
    assert str(news_item.itemmeta.pubstatus.qcode) == "stat:usable"
    assert str(news_item.itemmeta.signal.qcode) == "sig:correction"


def test_article_item_metadata() -> None:
    item = view(seed_v2_revision())
    [article, *pictures] = newsml_items(render_newsml_item(feed_view(), item))
    assert (article.get("guid"), article.get("version"), article.get("standard"), article.get("standardversion"),
            article.get("conformance")) == (item.uri, "2", "NewsML-G2", "2.35", "power")
    assert article.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
    assert article.find(nar("catalogRef")).get("href").startswith("http://www.iptc.org/std/catalog/")
    meta = article.find(nar("itemMeta"))
    assert meta.find(nar("itemClass")).get("qcode") == "ninat:text"
    assert meta.findtext(nar("provider/name")) == "newsroom"
    assert meta.findtext(nar("versionCreated")) == "2022-11-04T11:10:00Z"
    assert meta.findtext(nar("firstCreated")) == "2022-11-04T09:55:00Z"
    assert meta.find(nar("pubStatus")).get("qcode") == "stat:usable"
    assert [link.get("residref") for link in meta.iterfind(nar("link"))] == [p.get("guid") for p in pictures]
    assert {link.get("rel") for link in meta.iterfind(nar("link"))} == {"irel:associatedWith"}

    content = article.find(nar("contentMeta"))
    assert content.find(nar("language")).get("tag") == "en"
    subjects = [(s.get("qcode"), s.get("literal"), s.get("type"), s.findtext(nar("name")))
                for s in content.iterfind(nar("subject"))]
    assert subjects == [
        ("medtop:16000000", None, None, "armed conflict"),
        (None, "russia-ukraine-war", None, "Russia-Ukraine war"),
        (None, None, "cpnat:geoArea", "Russia"),
        (None, None, "cpnat:geoArea", "Ukraine"),
    ]
    assert content.findtext(nar("slugline")) == "russia-mobilisation-convicts"


def test_body_is_xhtml_in_inline_xml() -> None:
    item = view(seed_v2_revision())
    [article, *_] = newsml_items(render_newsml_item(feed_view(), item))
    inline = article.find(nar("contentSet/inlineXML"))
    assert inline.get("contenttype") == "application/xhtml+xml"
    [html] = list(inline)
    assert html.tag == f"{{{XHTML_NS}}}html"
    assert html.findtext(f"{{{XHTML_NS}}}head/{{{XHTML_NS}}}title") == item.headline
    body = html.find(f"{{{XHTML_NS}}}body")
    # Every element of the body is XHTML, the figure and its image included.
    assert {element.tag.split("}")[0] + "}" for element in body.iter()} == {f"{{{XHTML_NS}}}"}
    image = body.find(f".//{{{XHTML_NS}}}figure/{{{XHTML_NS}}}img")
    assert image.get("src") == "https://media.news.example.com/2022/11/04/kherson-rally.jpg"


def test_unusual_html_still_becomes_xhtml_only() -> None:
    import dataclasses

    document = seed_document(2)
    document["bodies"][0]["value"] = (
        '<P CLASS="c" xmlns="http://evil.example/" xmlns:x="http://x" data-n="1">one</P>'
        "lead<svg:rect/><my-element>two</my-element><!-- c --><br>three &amp; &lt;four&gt;")
    item = view(dataclasses.replace(seed_v2_revision(), document=document))
    data = render_newsml_news_item(feed_view(), item)
    assert newsml_errors(data) == []
    body = parse_xml(data).find(f"{nar('contentSet/inlineXML')}/{{{XHTML_NS}}}html/{{{XHTML_NS}}}body")
    assert {element.tag.split("}")[0] + "}" for element in body.iter()} == {f"{{{XHTML_NS}}}"}
    paragraph = body.findall(f"{{{XHTML_NS}}}p")[1]
    assert (paragraph.text, paragraph.get("class"), paragraph.get("data-n")) == ("one", "c", "1")
    assert "".join(body.itertext()).endswith("onelead" + "two" + "three & <four>")


def test_picture_items() -> None:
    item = view(seed_v2_revision())
    [_, *pictures] = newsml_items(render_newsml_item(feed_view(), item))
    assert len(pictures) == 2
    for picture, photo in zip(pictures, item.photos, strict=True):
        assert picture.get("guid") == photo.uri and picture.get("version") == "2"
        assert picture.find(nar("itemMeta/itemClass")).get("qcode") == "ninat:picture"
        remote = picture.find(nar("contentSet/remoteContent"))
        assert (remote.get("href"), remote.get("contenttype"), remote.get("width"), remote.get("height")) == (
            photo.href, "image/jpeg", "1200", "800")
        caption = picture.find(nar("contentMeta/description"))
        assert caption.get("role") == "drol:caption" and caption.text == photo.caption
        assert picture.findtext(nar("contentMeta/creditline")) == "AP"
        assert picture.findtext(nar("rightsInfo/copyrightHolder/name")) == "The Associated Press"


def test_withdrawn_item_is_canceled_without_body_or_pictures() -> None:
    item = view(killed_revision())
    data = render_newsml_item(feed_view(), item)
    [article] = newsml_items(data)
    assert article.get("guid") == item.uri and article.get("version") == "3"
    assert article.find(nar("itemMeta/pubStatus")).get("qcode") == "stat:canceled"
    assert article.find(nar("contentSet")) is None
    assert article.find(nar("itemMeta/link")) is None
    assert any(KILL_REASON in (note.text or "") for note in article.iterfind(nar("itemMeta/edNote")))


def test_header() -> None:
    root = parse_xml(render_newsml_message(feed_view(render_id="r-42"), [view(seed_v1_revision())]))
    assert root.tag == f"{{{NAR_NS}}}newsMessage"
    assert root.findtext(nar("header/sent")) == "2022-11-04T12:00:00Z"
    assert root.findtext(nar("header/sender")) == "feeds.example.org"
    assert root.findtext(nar("header/transmitId")) == "r-42"


def test_media_types() -> None:
    assert NEWSML_MESSAGE_MEDIA_TYPE == "application/vnd.iptc.g2.newsmessage+xml"
    assert NEWSML_ITEM_MEDIA_TYPE == "application/vnd.iptc.g2.newsitem+xml"


def test_the_renderer_keeps_one_line_fields_on_one_line_whatever_the_store_holds() -> None:
    """Ingest stores these fields on one line (server.domain.ninjs.one_line_fields); a record written
    another way (an older server, a hand-made revision) still gives a valid document: the renderer puts
    them on one line again, and leaves a blank one out."""
    import dataclasses

    document = seed_document(2)
    document |= {"slugline": "a\tb\nc", "copyrightHolder": "The\nAgency", "by": "A\tReporter"}
    document["subjects"] = [{"name": "armed\tconflict", "literal": "x\ny"}, {"name": " \n"}]
    document["places"] = [{"name": "Kyiv\n"}]
    document["associations"][0] |= {"by": "AP\nPhotos", "copyrightHolder": "\t"}
    document["associations"][1] |= {"by": " \n "}
    item = view(dataclasses.replace(seed_v2_revision(), document=document))
    data = render_newsml_message(feed_view(), [item])
    assert newsml_errors(data) == []
    root = parse_xml(data)
    assert root.findtext(f".//{nar('slugline')}") == "a b c"
    assert root.findtext(f".//{nar('contentMeta')}/{nar('creditline')}") == "The Agency"
    pictures = root.findall(f".//{nar('newsItem')}")[1:]
    assert [p.findtext(f".//{nar('creditline')}") for p in pictures] == ["AP Photos", None]
