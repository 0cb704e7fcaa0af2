"""``syndicate serve`` (with ``--demo``: the demo article, the demo partner and the banner to try them)
and ``syndicate worker``.

``serve`` takes its port before anything starts: a busy port, or one it may not use, is one line and
exit status 2, with no banner and no traceback. The banner comes once the server listens.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path

import orjson
import uvloop
from aiohttp import web

from server.cli.errors import CommandError
from server.core.credentials import FILE_NAME as CREDENTIALS_FILE
from server.core.credentials import with_local_credentials
from server.core.errors import Problem
from server.core.settings import Settings
from server.core.values import utc_now
from server.domain.articles import article_id_for_uri
from server.domain.ninjs import parse_json_object, read_document
from server.http.state import ACCESS, PARTNERS, SETTINGS, STORE
from server.runtime.services import Role, open_services
from server.runtime.supervisor import LISTEN_BACKLOG, ChildKind, Supervisor, SupervisorError

DEMO_PARTNER_KEY = web.AppKey("demo_partner_key", str)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_ARTICLE = "serious-crime-convicts.v1.ninjs.json"
DEMO_CORRECTION = "serious-crime-convicts.v2-correction.ninjs.json"


def serve(args: argparse.Namespace, settings: Settings) -> int:
    from server.http.app import create_app

    if args.host:
        settings = replace(settings, host=args.host)
    if args.port:
        settings = replace(settings, port=args.port)
    processes = _processes(args.processes, settings.processes)
    settings = with_local_credentials(settings)  # before any child starts: one credentials file for all
    if processes > 1 and args.slot is None:
        return _supervise(ChildKind.SERVER, processes, settings, args)
    first = args.slot in (None, 0)  # the demo and the banner: once, by the first of a supervisor's children
    listening = socket.socket(fileno=args.listen_fd) if args.listen_fd is not None \
        else listen(settings.host, settings.port)
    try:
        app = create_app(settings)
        if args.demo and first:
            app.on_startup.append(_publish_demo)
            app.on_startup.append(_ensure_demo_partner)
        # uvloop's transports move big cached bodies noticeably faster than asyncio's (see Benchmarks).
        use_zero_copy_writes()
        uvloop.run(_run_server(app, listening, settings.fast_path, banner=first))
    finally:
        listening.close()
    return 0


def _processes(given: int | None, setting: int) -> int:
    if given is not None and not 1 <= given <= 256:
        raise CommandError(f"--processes: {given} is out of range (from 1 to 256)")
    return given or setting


def _supervise(kind: ChildKind, processes: int, settings: Settings, args: argparse.Namespace) -> int:
    """N children of ``kind`` under one supervisor (server.runtime.supervisor), until SIGTERM."""
    log = logging.getLogger("syndicate.supervisor")

    def command(slot: int, fd: int | None) -> list[str]:
        argv = [sys.executable, "-m", "server.cli", str(kind) if kind is ChildKind.WORKER else "serve",
                "--processes", "1", "--slot", str(slot)]
        if fd is not None:
            argv += ["--listen-fd", str(fd), "--host", settings.host, "--port", str(supervisor.port)]
        if getattr(args, "demo", False) and slot == 0:
            argv.append("--demo")
        return argv

    def started(running: Supervisor) -> None:
        where = f" on {settings.host}:{running.port}" if kind is ChildKind.SERVER else ""
        log.info("supervisor pid %d: %d %s processes%s (pids %s)", os.getpid(), processes, kind, where,
                 ", ".join(map(str, running.pids())))

    supervisor = Supervisor(kind, processes, command, settings.data_dir, settings.redis_address is None,
                            settings.redis_server_bin, settings.host, settings.port)
    try:
        return supervisor.run(started)
    except SupervisorError as exc:
        raise CommandError(str(exc)) from None


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server starts anything, so that a port it cannot have is
    a one-line :class:`CommandError` rather than a traceback after the banner."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        hint = ("another process is listening there; stop it, or choose another port with --port or "
                "SYNDICATE_PORT") if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise CommandError(f"cannot listen on {host}:{port}: {hint}") from None
    sock.setblocking(False)
    return sock


async def _run_server(app: web.Application, listening: socket.socket, fast_path: bool = True,
                      banner: bool = True) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully: what ``web.run_app`` does, with the
    runner that answers cached feed polls on the fast path (:mod:`server.http.fast_path`), unless
    ``SYNDICATE_FAST_PATH=off`` asks for aiohttp's own; either way with the connection caps and read
    timeouts of :mod:`server.http.connections`."""
    import signal

    from server.http.connections import LimitedRunner
    from server.http.fast_path import FastPathRunner

    runner = FastPathRunner(app, zero_copy=True, access_log=None, keepalive_timeout=75.0) if fast_path \
        else LimitedRunner(app, access_log=None, keepalive_timeout=75.0)
    await runner.setup()
    try:
        await web.SockSite(runner, listening, backlog=LISTEN_BACKLOG).start()
        freeze_start_up_objects()
        if banner:
            print_banner(app)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def freeze_start_up_objects() -> None:
    """Leave what start-up made (modules, grammars, the partner table: some 100,000 objects) out of
    every later garbage collection. A full collection walks every tracked object; with these in it,
    each took 60 to 100 ms at 1,000 partners, stalling every request on the loop (the ops views' p95
    doubled). Objects made afterwards are collected as usual."""
    import gc

    gc.collect()
    gc.freeze()


def use_zero_copy_writes() -> None:
    """Let aiohttp hand a response's headers and body to the transport as two buffers.

    On Python older than 3.12.9 aiohttp joins them into one new bytes object first
    (``aiohttp.http_writer.SKIP_WRITELINES``), because CPython's selector transport had a
    ``writelines`` without flow control until then (CVE-2024-12254). ``serve`` runs on uvloop, whose
    transports implement ``writelines`` themselves, through the same flow-controlled buffer as
    ``write``; so there the copy buys nothing, and it costs a copy of the whole body per response (a
    280 KB feed: about a quarter of the time of a cached GET on the benchmark machine)."""
    import aiohttp.http_writer

    if getattr(aiohttp.http_writer, "SKIP_WRITELINES", False):
        aiohttp.http_writer.SKIP_WRITELINES = False


def worker(args: argparse.Namespace, settings: Settings) -> int:
    """The server's background half: change fan-out, push deliveries, embargo lifting and retention,
    without any of HTTP. It shares the queue with every other worker and server process through Redis."""
    import signal

    processes = _processes(args.processes, settings.worker_processes)
    settings = with_local_credentials(settings)  # the same tokens (and so the same sealing key) as serve
    if processes > 1 and args.slot is None:
        return _supervise(ChildKind.WORKER, processes, settings, args)

    async def run() -> int:
        async with open_services(settings, Role.WORKER):
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            logging.getLogger("syndicate").info("push worker running (pid %d)", os.getpid())
            freeze_start_up_objects()
            await stop.wait()
        return 0

    return asyncio.run(run())


def demo_article_path(name: str = DEMO_ARTICLE) -> Path:
    shared = REPO_ROOT.parent / "shared" / "fixtures" / "articles" / name
    return shared if shared.exists() else REPO_ROOT / "examples" / name


async def _publish_demo(app: web.Application) -> None:
    path = demo_article_path()
    incoming = read_document(parse_json_object(path.read_bytes()))
    try:
        result = await app[STORE].ingest(incoming, "demo")
        logging.getLogger("syndicate").info("demo article %s: %s", result.article.id, result.outcome)
    except Problem as exc:  # e.g. the newcomer already posted the correction: v1 is then stale
        logging.getLogger("syndicate").info("demo article not published again: %s", exc.detail)


async def _ensure_demo_partner(app: web.Application) -> None:
    """A partner named "demo", entitled to everything, made once; its key is kept in a 0600 file under
    the data dir (keys are shown only once) and printed on every run."""
    settings, access = app[SETTINGS], app[ACCESS]
    path = settings.data_dir / "demo-partner.json"
    if path.exists():
        key = orjson.loads(path.read_bytes()).get("key", "")
        if access.table.authenticate(key, utc_now()) is not None:
            app[DEMO_PARTNER_KEY] = key
            return
    try:
        issued = await app[PARTNERS].create("demo", ["*"], ["*"], contact="make run", notes="demo partner")
    except Problem:  # it exists (its key file was lost, or its key revoked): give it a new key
        await app[PARTNERS].update("demo", active=True)
        issued = await app[PARTNERS].issue_key("demo")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(orjson.dumps({"partner": "demo", "key": issued.key, "key_id": issued.key_id}))
    await access.reload(force=True)
    app[DEMO_PARTNER_KEY] = issued.key


def print_banner(app: web.Application) -> None:
    settings = app[SETTINGS]
    base = settings.base_url
    publisher = settings.publisher_tokens[0]
    demo = orjson.loads(demo_article_path().read_bytes())
    demo_id = article_id_for_uri(demo["uri"])
    demo_run = DEMO_PARTNER_KEY in app
    # Tokens go to the terminal only for the local demo: a server's log is kept (docker logs, journald).
    publisher_token = publisher.token if demo_run else "$PUBLISHER_TOKEN"
    admin_token = settings.admin_token if demo_run else "$ADMIN_TOKEN"
    lines = ["", f"syndicate serving on {base}"]
    if demo_run:
        lines += [f"  publisher token ({publisher.name}): {publisher.token}",
                  f"  admin token:                 {settings.admin_token}"]
    else:
        lines += [f"  tokens: the publisher's ({publisher.name}) and the admin's, from SYNDICATE_PUBLISHER_TOKENS "
                  f"and SYNDICATE_ADMIN_TOKEN or else kept in {settings.data_dir / CREDENTIALS_FILE} (not printed)"]
    lines += [
        f"  health:   {base}/healthz   ready: {base}/readyz",
        f"  ops:      {base}/ops (log in with the admin token)   metrics: {base}/metrics (admin token)",
        f"  articles: curl -H 'Authorization: Bearer {publisher_token}' {base}/api/articles",
    ]
    if demo_run:
        key = app[DEMO_PARTNER_KEY]
        lines += [
            f"  demo partner key: {key}",
            f"  feeds:    {base}/feeds/latest/atom?key={key}",
            f"            (also rss, newsml, json; the public feed {base}/feeds/headlines/rss needs no key)",
            f"  partner status: curl -H 'Authorization: Bearer {admin_token}' {base}/api/partners/demo/status",
        ]
    if demo_id:
        correction = demo_article_path(DEMO_CORRECTION)
        lines += [
            f"  history:  curl -H 'Authorization: Bearer {publisher_token}' {base}/api/articles/{demo_id}/versions",
            "  publish the correction:",
            f"    curl -H 'Authorization: Bearer {publisher_token}' -H 'Content-Type: application/json' "
            f"--data-binary @{correction} '{base}/api/articles?signal=correction'",
        ]
    print("\n".join(lines) + "\n", flush=True)
