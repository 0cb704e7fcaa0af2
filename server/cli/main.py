"""The ``syndicate`` command: serve, import, show and purge.

Every failure is one line on stderr and a non-zero exit. Commands that need Redis use ``REDIS_URL``,
or the embedded Redis: the running server's when there is one, else a private one for the command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path

import orjson
import uvloop
from aiohttp import web
from redis.exceptions import RedisError

from server.articles.store import CREATED, REVISED, UNCHANGED
from server.core.credentials import FILE_NAME as CREDENTIALS_FILE
from server.core.credentials import with_local_credentials
from server.core.embedded_redis import EmbeddedRedisError
from server.core.errors import Problem
from server.core.settings import Settings, SettingsError
from server.core.values import iso, parse_iso, utc_now
from server.domain.access import readable_feeds
from server.domain.articles import article_id_for_uri, is_article_id
from server.domain.feeds import FeedDefinitionError
from server.domain.ninjs import DocumentError, IncomingDocument, parse_json_object, read_document
from server.http.state import ACCESS, PARTNERS, SETTINGS, STORE
from server.observability import logs
from server.ops import views as ops
from server.ops.models import PartnerHealth
from server.ops.views import OpsContext
from server.push.destinations import WEBHOOK_FEED_FORMATS, WEBHOOK_FORMATS, new_webhook
from server.push.safety import check_destination
from server.runtime.services import Role, Services, open_services
from server.runtime.supervisor import LISTEN_BACKLOG, ChildKind, Supervisor, SupervisorError

DEMO_PARTNER_KEY = web.AppKey("demo_partner_key", str)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_ARTICLE = "serious-crime-convicts.v1.ninjs.json"
DEMO_CORRECTION = "serious-crime-convicts.v2-correction.ninjs.json"


class CommandError(Exception):
    """A failure to report as one line."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        logs.configure(settings)  # JSON lines on stderr (SYNDICATE_LOG_FORMAT=text for humans)
        return args.run(args, settings)
    except RedisError as exc:
        print(f"syndicate: Redis is not reachable or failed ({exc}); check REDIS_URL", file=sys.stderr)
        return 2
    except (SettingsError, CommandError, EmbeddedRedisError, FeedDefinitionError) as exc:
        print(f"syndicate: {exc}", file=sys.stderr)
        return 2
    except Problem as exc:
        print(f"syndicate: {exc.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syndicate", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="address to listen on (default SYNDICATE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default SYNDICATE_PORT or 8080)")
    serve.add_argument("--demo", action="store_true",
                       help="publish the seed article's first version at start-up and print how to try it")
    serve.add_argument("--processes", type=int, metavar="N",
                       help="server processes sharing the port under one supervisor (default SYNDICATE_PROCESSES or 1)")
    _child_arguments(serve)
    serve.set_defaults(run=_serve)

    worker = commands.add_parser("worker", help="run push workers (and the background jobs) without HTTP")
    worker.add_argument("--processes", type=int, metavar="N",
                        help="worker processes under one supervisor (default SYNDICATE_WORKER_PROCESSES or 1)")
    _child_arguments(worker)
    worker.set_defaults(run=_worker)

    imp = commands.add_parser("import", help="import ninjs JSON files or folders of them")
    imp.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    imp.add_argument("--signal", choices=("update", "correction"), help="mark revisions with this signal")
    imp.add_argument("--publisher", default="cli", help="name recorded on the revisions (default: cli)")
    imp.set_defaults(run=_import)

    show = commands.add_parser("show", help="print an article's latest revision and its history")
    show.add_argument("article_id", metavar="ID")
    show.set_defaults(run=_show)

    partner = commands.add_parser("partner", help="manage partners and their keys")
    partner_commands = partner.add_subparsers(required=True, metavar="ACTION")
    add = partner_commands.add_parser("add", help="create a partner and print its first key")
    add.add_argument("name")
    add.add_argument("--feeds", required=True, help="comma-separated feed names, or *")
    add.add_argument("--formats", required=True, help="comma-separated formats (rss,atom,newsml,json), or *")
    add.add_argument("--no-media", action="store_true", help="no photo rights: feeds without the photos")
    add.add_argument("--contact")
    add.add_argument("--notes")
    add.add_argument("--rate-limit", type=int, help="requests per minute (default: the server's)")
    add.add_argument("--expires", help="the key's expiry, an RFC 3339 date-time")
    add.set_defaults(run=_partner_add)
    partner_commands.add_parser("list", help="list partners").set_defaults(run=_partner_list)
    show_partner = partner_commands.add_parser("show", help="one partner, its keys and its status")
    show_partner.add_argument("name")
    show_partner.set_defaults(run=_partner_show)
    key = partner_commands.add_parser("key", help="issue another key")
    key.add_argument("name")
    key.add_argument("--expires", help="the key's expiry, an RFC 3339 date-time")
    key.set_defaults(run=_partner_key)
    revoke = partner_commands.add_parser("revoke", help="revoke one key")
    revoke.add_argument("name")
    revoke.add_argument("key_id", metavar="KEYID")
    revoke.set_defaults(run=_partner_revoke)
    endpoint = partner_commands.add_parser("endpoint", help="a partner's webhook endpoints")
    endpoint_commands = endpoint.add_subparsers(required=True, metavar="ACTION")
    endpoint_add = endpoint_commands.add_parser("add", help="push every revision to a URL, signed")
    endpoint_add.add_argument("name")
    endpoint_add.add_argument("url")
    endpoint_add.add_argument("--format", required=True, choices=WEBHOOK_FORMATS)
    endpoint_add.add_argument("--secret", required=True, help="16 to 199 bytes, shared with the receiver")
    endpoint_add.set_defaults(run=_endpoint_add)
    endpoint_list = endpoint_commands.add_parser("list", help="list endpoints and WebSub subscriptions")
    endpoint_list.add_argument("name")
    endpoint_list.set_defaults(run=_endpoint_list)
    endpoint_remove = endpoint_commands.add_parser("remove", help="remove an endpoint")
    endpoint_remove.add_argument("name")
    endpoint_remove.add_argument("endpoint_id", metavar="ENDPOINT_ID")
    endpoint_remove.set_defaults(run=_endpoint_remove)
    for action, active in (("disable", False), ("enable", True)):
        toggle = partner_commands.add_parser(action, help=f"{action} a partner (all its keys)")
        toggle.add_argument("name")
        toggle.set_defaults(run=_partner_toggle, active=active)

    status = commands.add_parser("status", help="partners' delivery health and outstanding corrections and kills")
    status.set_defaults(run=_status)
    deliveries = commands.add_parser("deliveries", help="recent push deliveries")
    deliveries.add_argument("--failed", action="store_true", help="only failed attempts and given-up deliveries")
    deliveries.add_argument("--partner")
    deliveries.set_defaults(run=_deliveries)
    retry = commands.add_parser("retry", help="send a failed delivery again (its article's newest revision), "
                                              "or with --destination every failed delivery of one destination")
    retry.add_argument("delivery_id", metavar="DELIVERY_ID", nargs="?")
    retry.add_argument("--destination", metavar="ID", help="retry every failed delivery of this destination")
    retry.set_defaults(run=_retry)

    purge = commands.add_parser("purge", help="legal takedown: remove the bodies of every revision")
    purge.add_argument("article_id", metavar="ID")
    purge.add_argument("--reason", required=True, help="why, kept on the tombstone")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(run=_purge)
    return parser


# ----- serve ---------------------------------------------------------------------------------------


def _child_arguments(parser: argparse.ArgumentParser) -> None:
    """What a supervisor tells its children (server.runtime.supervisor); not for people."""
    parser.add_argument("--slot", type=int, help=argparse.SUPPRESS)  # this child's slot under a supervisor
    parser.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)  # the slot's listening socket


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace

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
    app = create_app(settings)
    if args.demo and first:
        app.on_startup.append(_publish_demo)
        app.on_startup.append(_ensure_demo_partner)
    if first:
        app.on_startup.append(_print_banner)
    # uvloop's transports move big cached bodies noticeably faster than asyncio's (see Benchmarks).
    use_zero_copy_writes()
    uvloop.run(_run_server(app, settings.host, settings.port, settings.fast_path, listen_fd=args.listen_fd))
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


async def _run_server(app: web.Application, host: str, port: int, fast_path: bool = True,
                      listen_fd: int | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully: what ``web.run_app`` does, with the
    runner that answers cached feed polls on the fast path (:mod:`server.http.fast_path`), unless
    ``SYNDICATE_FAST_PATH=off`` asks for aiohttp's own. ``listen_fd``: a socket a supervisor bound
    (``--processes``), served instead of binding ``host``:``port``."""
    import signal
    import socket

    from server.http.fast_path import FastPathRunner

    runner = FastPathRunner(app, zero_copy=True, access_log=None, keepalive_timeout=75.0) if fast_path \
        else web.AppRunner(app, access_log=None, keepalive_timeout=75.0)
    await runner.setup()
    try:
        if listen_fd is not None:
            await web.SockSite(runner, socket.socket(fileno=listen_fd), backlog=LISTEN_BACKLOG).start()
        else:
            await web.TCPSite(runner, host, port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


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


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    """The server's background half: change fan-out, push deliveries, embargo lifting and retention,
    without any of HTTP. It shares the queue with every other worker and server process through Redis."""
    import signal

    processes = _processes(args.processes, settings.worker_processes)
    if processes > 1 and args.slot is None:
        return _supervise(ChildKind.WORKER, processes, settings, args)

    async def run() -> int:
        async with open_services(settings, Role.WORKER):
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            logging.getLogger("syndicate").info("push worker running (pid %d)", os.getpid())
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


async def _print_banner(app: web.Application) -> None:
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


# ----- commands that talk to Redis directly --------------------------------------------------------


def _store_session(settings: Settings) -> contextlib.AbstractAsyncContextManager[Services]:
    """A command's services: the stores on one small Redis pool, no background job."""
    return open_services(settings, Role.COMMAND)


def _import(args: argparse.Namespace, settings: Settings) -> int:
    files = _ninjs_files(args.paths)
    if not files:
        raise CommandError("no .json files found in " + ", ".join(str(p) for p in args.paths))
    return asyncio.run(_import_files(files, settings, args.signal, args.publisher))


def _ninjs_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.json") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise CommandError(f"{path}: no such file or folder")
    return files


async def _import_files(files: list[Path], settings: Settings, signal: str | None, publisher: str) -> int:
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    counts = {CREATED: 0, REVISED: 0, UNCHANGED: 0, "rejected": 0}
    rejected: list[str] = []
    readable: list[tuple[str, Path, IncomingDocument]] = []
    for path in files:
        try:
            incoming = read_document(parse_json_object(path.read_bytes()))
        except (DocumentError, OSError) as exc:
            counts["rejected"] += 1
            rejected.append(f"{path}: {getattr(exc, 'detail', exc)}")
            continue
        readable.append((incoming.document.get("versionCreated") or "", path, incoming))
    # Oldest first, so that revisions of one article arrive in order and none is refused as stale.
    readable.sort(key=lambda item: (_sort_time(item[0]), str(item[1])))
    async with _store_session(settings) as session:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("importing", total=len(readable))
            for _, path, incoming in readable:
                try:
                    result = await session.store.ingest(incoming, publisher, signal=signal)
                    counts[result.outcome] += 1
                except Problem as exc:
                    counts["rejected"] += 1
                    rejected.append(f"{path}: {exc.detail}")
                progress.advance(task)
    for line in rejected:
        print(f"rejected {line}", file=sys.stderr)
    print(f"created {counts[CREATED]}, revised {counts[REVISED]}, unchanged {counts[UNCHANGED]}, "
          f"rejected {counts['rejected']}")
    return 1 if counts["rejected"] else 0


def _sort_time(value: str) -> float:
    from server.core.values import parse_iso

    try:
        moment = parse_iso(value) if value else None
    except ValueError:
        moment = None
    return moment.timestamp() if moment else float("inf")


def _show(args: argparse.Namespace, settings: Settings) -> int:
    _check_id(args.article_id)

    async def run() -> int:
        async with _store_session(settings) as session:
            article = await session.store.require(args.article_id)
            history = await session.store.history(args.article_id)
        out = {
            "id": article.id,
            "uri": article.uri,
            "version": article.version,
            "pubStatus": article.latest.pub_status,
            "purgedAt": iso(article.purged_at),
            "versions": [{k: v for k, v in r.to_record().items() if k != "document"} | {"hasBody": r.has_body}
                         for r in history],
            "document": article.latest.document,
        }
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0

    return asyncio.run(run())


def _purge(args: argparse.Namespace, settings: Settings) -> int:
    _check_id(args.article_id)
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError("purge removes every revision's body for good; pass --yes to confirm")
        answer = input(f"Remove the bodies of every revision of {args.article_id}? Type 'purge': ")
        if answer.strip() != "purge":
            raise CommandError("not purged")

    async def run() -> int:
        async with _store_session(settings) as session:
            article = await session.store.purge(args.article_id, args.reason, "cli")
        print(f"purged {article.id}: {article.version} versions kept as a tombstone, reason: {args.reason}")
        return 0

    return asyncio.run(run())


# ----- partners -------------------------------------------------------------------------------------


def _partner_command(settings: Settings, action) -> int:
    async def run() -> int:
        async with _store_session(settings) as session:
            await action(session)
        return 0

    return asyncio.run(run())


def _print_json(value) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _expiry(text: str | None):
    if text is None:
        return None
    try:
        return parse_iso(text)
    except ValueError:
        raise CommandError(f"--expires: {text!r} is not an RFC 3339 date-time with a timezone") from None


def _print_issued(issued) -> None:
    print(f"partner {issued.partner.name}: key {issued.key_id} (shown once, keep it safe)")
    print(issued.key)


def _partner_add(args: argparse.Namespace, settings: Settings) -> int:
    async def action(session: Services) -> None:
        _print_issued(await session.partners.create(
            args.name, _csv(args.feeds), _csv(args.formats), media=not args.no_media, contact=args.contact,
            notes=args.notes, rate_limit=args.rate_limit, expires_at=_expiry(args.expires)))
    return _partner_command(settings, action)


def _partner_list(args: argparse.Namespace, settings: Settings) -> int:
    async def action(session: Services) -> None:
        partners, _generation = await session.partners.load_all()
        for partner in partners:
            live = sum(1 for k in partner.keys if k.usable(utc_now()))
            print(f"{partner.name}\t{'active' if partner.active else 'disabled'}\tfeeds={','.join(partner.feeds)}"
                  f"\tformats={','.join(partner.formats)}\tmedia={'yes' if partner.media else 'no'}\tkeys={live}")
    return _partner_command(settings, action)


def _partner_show(args: argparse.Namespace, settings: Settings) -> int:
    async def action(session: Services) -> None:
        _print_json((await session.partners.get(args.name)).public_view())
    return _partner_command(settings, action)


def _partner_key(args: argparse.Namespace, settings: Settings) -> int:
    async def action(session: Services) -> None:
        _print_issued(await session.partners.issue_key(args.name, _expiry(args.expires)))
    return _partner_command(settings, action)


def _partner_revoke(args: argparse.Namespace, settings: Settings) -> int:
    async def action(session: Services) -> None:
        await session.partners.revoke_key(args.name, args.key_id)
        print(f"revoked key {args.key_id} of {args.name}")
    return _partner_command(settings, action)


def _partner_toggle(args: argparse.Namespace, settings: Settings) -> int:
    async def action(session: Services) -> None:
        await session.partners.update(args.name, active=args.active)
        print(f"{args.name} {'enabled' if args.active else 'disabled'}")
    return _partner_command(settings, action)


def _endpoint_add(args: argparse.Namespace, settings: Settings) -> int:
    async def action(session: Services) -> None:
        partner = await session.partners.get(args.name)
        if not 16 <= len(args.secret.encode()) <= 199:
            raise CommandError("--secret must be 16 to 199 bytes")
        if not readable_feeds(partner, session.store.feeds.values(), WEBHOOK_FEED_FORMATS[args.format]):
            raise CommandError(f"partner {partner.name} is not entitled to the {WEBHOOK_FEED_FORMATS[args.format]} format")
        await check_destination(args.url, settings.push_allow_networks)
        endpoint = await session.destinations.save(
            new_webhook(partner.name, args.url, args.format, args.secret))
        print(f"endpoint {endpoint.id} of {partner.name}: {endpoint.format} to {endpoint.url}")
    return _partner_command(settings, action)


def _endpoint_list(args: argparse.Namespace, settings: Settings) -> int:
    async def action(session: Services) -> None:
        partner = await session.partners.get(args.name)
        for destination in await session.destinations.for_partner(partner.name):
            print(f"{destination.id}\t{destination.kind}\t{destination.format}\t{destination.url}")
    return _partner_command(settings, action)


def _endpoint_remove(args: argparse.Namespace, settings: Settings) -> int:
    async def action(session: Services) -> None:
        store = session.destinations
        endpoint = await store.require(args.endpoint_id, partner=args.name)
        await store.remove(endpoint.id)
        print(f"removed endpoint {endpoint.id} of {args.name}")
    return _partner_command(settings, action)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


# ----- ops ------------------------------------------------------------------------------------------


def _ops_command(settings: Settings, action) -> int:
    async def run() -> int:
        async with _store_session(settings) as session:
            await action(session.ops)
        return 0

    return asyncio.run(run())


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    async def action(context: OpsContext) -> None:
        overview = await ops.overview(context)
        flow = await ops.propagation(context)
        console = Console()
        colours = {PartnerHealth.HEALTHY: "green", PartnerHealth.BEHIND: "yellow", PartnerHealth.FAILING: "bold red"}
        table = Table(title="Partners")
        for column in ("partner", "state", "last poll", "last push", "lag", "outstanding", "errors", "queue"):
            table.add_column(column)
        for row in overview.partners:
            table.add_row(row.partner + ("" if row.active else " (disabled)"),
                          f"[{colours[row.state]}]{row.state}[/]", iso(row.last_poll) or "never",
                          iso(row.last_push) or "-", f"{row.lag.revisions} rev / {row.lag.seconds:.0f} s",
                          str(row.outstanding), "-" if row.error_rate is None else f"{row.error_rate:.0%}",
                          str(row.queue_depth))
        console.print(table)
        outstanding = Table(title="Corrections and kills not yet received")
        for column in ("kind", "article", "version", "partner", "outstanding for"):
            outstanding.add_column(column)
        for item in flow.items:
            for receipt in item.partners:
                if not receipt.received:
                    outstanding.add_row(item.kind, item.headline or item.uri, str(item.version),
                                        receipt.partner, f"{(receipt.outstanding_seconds or 0) / 60:.1f} min")
        console.print(outstanding if outstanding.row_count else "[green]Every correction and kill has been received.[/]")
        queue = overview.queue
        console.print(f"queue: {queue.depth} waiting, {queue.in_flight} in flight, {queue.failed} failed; "
                      f"oldest pending {queue.oldest_pending_seconds or 0:.0f} s")
    return _ops_command(settings, action)


def _deliveries(args: argparse.Namespace, settings: Settings) -> int:
    async def action(context: OpsContext) -> None:
        result = await ops.deliveries(context, args.partner, failed_only=args.failed)
        for failure in result.failed:
            print(f"GAVE UP\t{failure.delivery}\t{failure.partner or '-'}\t{failure.url}\t"
                  f"{failure.article} v{failure.version}\t{failure.attempts} attempts\t{failure.last_error}")
        for attempt in result.attempts:
            print(f"{'ok' if attempt.ok else 'FAILED'}\t{attempt.delivery}\t{attempt.partner or '-'}\t"
                  f"{attempt.article} v{attempt.version}\tattempt {attempt.attempt}\t"
                  f"{attempt.status or '-'}\t{attempt.error or ''}")
    return _ops_command(settings, action)


def _retry(args: argparse.Namespace, settings: Settings) -> int:
    if (args.delivery_id is None) == (args.destination is None):
        raise CommandError("give either a DELIVERY_ID or --destination ID")

    async def action(context: OpsContext) -> None:
        if args.destination is not None:
            every = await ops.retry_destination(context, args.destination)
            for result in every.requeued:
                print(f"queued {result.article} v{result.version} for {result.destination} again")
            print(f"{len(every.requeued)} failed deliveries to {every.destination} queued again")
            return
        result = await ops.retry(context, args.delivery_id)
        print(f"queued {result.article} v{result.version} for {result.destination} again")
    return _ops_command(settings, action)


def _check_id(article_id: str) -> None:
    if not is_article_id(article_id):
        raise CommandError(f"{article_id!r} is not an article id (16 characters a-z, 2-7)")


if __name__ == "__main__":
    sys.exit(main())
