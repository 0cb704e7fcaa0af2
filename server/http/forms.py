"""Reading a posted form, the one rule for every route that takes one (the dashboard's forms and the
WebSub hub): a form aiohttp cannot read (a multipart body without its boundary, a charset Python does
not know, bytes that are not in the form's charset, a broken part) is bad input, a 400, never a 500."""

from __future__ import annotations

from aiohttp import web
from multidict import MultiDictProxy

from server.core.errors import Problem


async def read_form(request: web.Request) -> MultiDictProxy[str | bytes | web.FileField]:
    """The posted form, or a 400 problem (``unreadable-form``) saying why it cannot be read."""
    try:
        return await request.post()
    except (ValueError, LookupError, AssertionError) as exc:  # UnicodeDecodeError is a ValueError
        raise Problem(f"The form could not be read ({type(exc).__name__}: {exc}); send it "
                      "application/x-www-form-urlencoded.", status=400, slug="unreadable-form") from None
