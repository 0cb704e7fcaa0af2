"""The ``syndicate`` command: serve, import, show and purge.

Every failure is one line on stderr and a non-zero exit. Commands that need Redis use ``REDIS_URL``,
or the embedded Redis: the running server's when there is one, else a private one for the command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiohttp import web

from server.credentials import with_local_credentials
from server.embedded_redis import EmbeddedRedisError, start_embedded_redis
from server.feeds import FeedDefinitionError, load_feed_definitions
from server.models import is_article_id, iso
from server.ninjs import DocumentError, IncomingDocument, parse_json_object, read_document
from server.problems import Problem
from server.redis_setup import connect
from server.settings import Settings, SettingsError
from server.state import SETTINGS, STORE
from server.store import CREATED, REVISED, UNCHANGED, ArticleStore

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_ARTICLE = "serious-crime-convicts.v1.ninjs.json"
DEMO_CORRECTION = "serious-crime-convicts.v2-correction.ninjs.json"


class CommandError(Exception):
    """A failure to report as one line."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return args.run(args, settings)
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
    serve.set_defaults(run=_serve)

    imp = commands.add_parser("import", help="import ninjs JSON files or folders of them")
    imp.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    imp.add_argument("--signal", choices=("update", "correction"), help="mark revisions with this signal")
    imp.add_argument("--publisher", default="cli", help="name recorded on the revisions (default: cli)")
    imp.set_defaults(run=_import)

    show = commands.add_parser("show", help="print an article's latest revision and its history")
    show.add_argument("article_id", metavar="ID")
    show.set_defaults(run=_show)

    purge = commands.add_parser("purge", help="legal takedown: remove the bodies of every revision")
    purge.add_argument("article_id", metavar="ID")
    purge.add_argument("--reason", required=True, help="why, kept on the tombstone")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(run=_purge)
    return parser


# ----- serve ---------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace

    from server.app import create_app

    if args.host:
        settings = replace(settings, host=args.host)
    if args.port:
        settings = replace(settings, port=args.port)
    settings = with_local_credentials(settings)
    app = create_app(settings)
    if args.demo:
        app.on_startup.append(_publish_demo)
    app.on_startup.append(_print_banner)
    web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None)
    return 0


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


async def _print_banner(app: web.Application) -> None:
    settings = app[SETTINGS]
    base = settings.base_url
    publisher = settings.publisher_tokens[0]
    demo_id = None
    if app[STORE] is not None:
        from server.models import article_id_for_uri

        demo = orjson.loads(demo_article_path().read_bytes())
        demo_id = article_id_for_uri(demo["uri"])
    lines = [
        "",
        f"syndicate serving on {base}",
        f"  publisher token ({publisher.name}): {publisher.token}",
        f"  admin token:                 {settings.admin_token}",
        f"  health:   {base}/healthz   ready: {base}/readyz",
        f"  articles: curl -H 'Authorization: Bearer {publisher.token}' {base}/api/articles",
    ]
    if demo_id:
        correction = demo_article_path(DEMO_CORRECTION)
        lines += [
            f"  history:  curl -H 'Authorization: Bearer {publisher.token}' {base}/api/articles/{demo_id}/versions",
            "  publish the correction:",
            f"    curl -H 'Authorization: Bearer {publisher.token}' -H 'Content-Type: application/json' "
            f"--data-binary @{correction} '{base}/api/articles?signal=correction'",
        ]
    print("\n".join(lines) + "\n", flush=True)


# ----- commands that talk to Redis directly --------------------------------------------------------


@dataclass
class _Session:
    store: ArticleStore


@contextlib.asynccontextmanager
async def _store_session(settings: Settings) -> AsyncIterator[_Session]:
    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = start_embedded_redis(settings.data_dir, settings.redis_server_bin)
        url = embedded.url
    try:
        redis = await connect(url)
        try:
            yield _Session(ArticleStore(redis, load_feed_definitions(settings.feeds_dir)))
        finally:
            await redis.aclose()
    finally:
        if embedded is not None:
            embedded.stop()


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
    from server.models import parse_iso

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


def _check_id(article_id: str) -> None:
    if not is_article_id(article_id):
        raise CommandError(f"{article_id!r} is not an article id (16 characters a-z, 2-7)")


if __name__ == "__main__":
    sys.exit(main())
