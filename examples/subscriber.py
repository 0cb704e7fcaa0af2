"""A WebSub subscriber and a webhook receiver to try push with, in one small aiohttp process.

    .venv/bin/python examples/subscriber.py start http://127.0.0.1:9000   # in the background
    .venv/bin/python examples/subscriber.py wait verified                 # until the hub has verified it
    .venv/bin/python examples/subscriber.py wait delivery 2               # until two deliveries arrived
    .venv/bin/python examples/subscriber.py stop

``start`` listens on the URL's address before it returns, then runs in the background and writes one
line per event to ``subscriber.log`` (its pid is in ``subscriber.pid``), both in the current folder:

- ``GET /websub``: the hub's verification of intent; it echoes ``hub.challenge`` (``verified ...``);
- ``POST /websub``: a WebSub delivery, its ``X-Hub-Signature`` checked with ``WEBSUB_SECRET``;
- ``POST /webhook``: a partner webhook delivery, its ``X-Syndicate-Signature`` (over
  ``<timestamp>.<body>``) and timestamp checked with ``WEBHOOK_SECRET``.

Each delivery line says ``delivery``, the kind, the delivery id, ``signed`` or ``BAD SIGNATURE``, and
the start of the body. ``wait WORD [N]`` prints the log once it holds N lines with WORD (default 1)
and fails after 15 seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

WEBSUB_SECRET = b"a-secret-of-our-own"
WEBHOOK_SECRET = b"a-long-shared-secret-0123"
LOG = Path("subscriber.log")
PID = Path("subscriber.pid")


def verify_webhook(secret: bytes, headers, body: bytes, max_age: int = 300) -> bool:
    """A webhook receiver's check: the signature over the timestamp, a dot and the raw body, in
    constant time, and a timestamp close to our clock (a captured request cannot be replayed later)."""
    timestamp = headers.get("X-Syndicate-Timestamp", "0")
    expected = "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return (hmac.compare_digest(expected, headers.get("X-Syndicate-Signature", ""))
            and timestamp.isdigit() and abs(time.time() - int(timestamp)) <= max_age)


def verify_websub(secret: bytes, headers, body: bytes) -> bool:
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers.get("X-Hub-Signature", ""))


def log(line: str) -> None:
    with LOG.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def serve(sock: socket.socket) -> None:
    from aiohttp import web

    async def websub(request: web.Request) -> web.Response:
        if request.method == "GET":  # verification of intent (or hub.mode=denied): echo the challenge
            mode = request.query.get("hub.mode", "?")
            said = {"subscribe": "verified", "unsubscribe": "verified the end of"}.get(mode, mode)
            log(f"{said} websub subscription to {request.query.get('hub.topic')}")
            return web.Response(text=request.query.get("hub.challenge", ""))
        body = await request.read()
        signed = "signed" if verify_websub(WEBSUB_SECRET, request.headers, body) else "BAD SIGNATURE"
        log(f"delivery websub {request.headers.get('X-Syndicate-Delivery')} {signed} {body[:120]!r}")
        return web.Response(status=204)

    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        signed = "signed" if verify_webhook(WEBHOOK_SECRET, request.headers, body) else "BAD SIGNATURE"
        log(f"delivery webhook {request.headers.get('X-Syndicate-Delivery')} {signed} {body[:120]!r}")
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/websub", websub)
    app.router.add_post("/webhook", webhook)
    web.run_app(app, sock=sock, print=None, access_log=None)


def start(url: str) -> int:
    parts = urlsplit(url)
    sock = socket.create_server((parts.hostname or "127.0.0.1", parts.port or 80))  # listening from here
    LOG.write_text("")
    pid = os.fork()
    if pid:
        PID.write_text(f"{pid}\n")
        print(f"subscriber listening on {url} (pid {pid}); callbacks {url}/websub and {url}/webhook, "
              f"log in {LOG}")
        return 0
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    serve(sock)
    return 0


def wait(word: str, count: int = 1, seconds: float = 15) -> int:
    deadline = time.monotonic() + seconds
    while True:
        lines = [line for line in LOG.read_text(encoding="utf-8").splitlines() if word in line] \
            if LOG.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            print("\n".join(lines) if lines else f"nothing with {word!r} in {LOG} yet")
            return 0 if len(lines) >= count else 1
        time.sleep(0.1)


def stop() -> int:
    if PID.exists():
        try:
            os.kill(int(PID.read_text()), 15)
        except ProcessLookupError:
            pass
        PID.unlink()
    return 0


if __name__ == "__main__":
    command, *rest = sys.argv[1:] or ["help"]
    if command == "start" and len(rest) == 1:
        sys.exit(start(rest[0]))
    if command == "wait" and 1 <= len(rest) <= 2:
        sys.exit(wait(rest[0], int(rest[1]) if len(rest) == 2 else 1))
    if command == "stop":
        sys.exit(stop())
    print(__doc__)
    sys.exit(2)
