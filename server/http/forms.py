"""Reading a posted form, the one rule for every route that takes one (the dashboard's forms and the
WebSub hub): a form aiohttp cannot read (a multipart body without its boundary, a charset Python does
not know, bytes that are not in the form's charset, a broken part) is bad input, a 400, never a 500."""

from __future__ import annotations

from aiohttp import web
from multidict import MultiDictProxy

from server.core.errors import Problem

# The charsets a form may declare: text encodings of the web. Python knows others that are not text
# (``unicode_escape`` turns ``\ud800`` in the body into a lone surrogate, ``idna`` fails on a long
# field) and would make a form no client sends.
FORM_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin-1", "latin1"})


async def read_form(request: web.Request) -> MultiDictProxy[str | bytes | web.FileField]:
    """The posted form, or a 400 problem (``unreadable-form``) saying why it cannot be read."""
    charset = request.charset
    if charset is not None and charset.lower() not in FORM_CHARSETS:
        raise Problem(f"The form could not be read: its charset {charset[:40]!r} is not one the server "
                      "reads; send it as UTF-8.", status=400, slug="unreadable-form")
    try:
        form = await request.post()
    except (ValueError, LookupError, AssertionError) as exc:  # UnicodeDecodeError is a ValueError
        raise Problem(f"The form could not be read ({type(exc).__name__}: {exc}); send it "
                      "application/x-www-form-urlencoded.", status=400, slug="unreadable-form") from None
    for value in form.values():
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: no text a client meant
                raise Problem("The form could not be read: it holds a character that is not text (a lone "
                              "surrogate).", status=400, slug="unreadable-form") from None
    return form
