"""``syndicate import``, ``show`` and ``purge``: articles straight in the store, beside a running server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

import orjson

from server.articles.store import CREATED, REVISED, UNCHANGED
from server.cli.errors import CommandError
from server.core.errors import Problem
from server.core.settings import Settings
from server.core.values import iso, parse_iso
from server.domain.articles import is_article_id
from server.domain.ninjs import DocumentError, IncomingDocument, parse_json_object, read_document
from server.runtime.services import Role, Services, open_services


def store_session(settings: Settings) -> contextlib.AbstractAsyncContextManager[Services]:
    """A command's services: the stores on one small Redis pool, no background job."""
    return open_services(settings, Role.COMMAND)


def import_files(args: argparse.Namespace, settings: Settings) -> int:
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
    async with store_session(settings) as session:
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
    try:
        moment = parse_iso(value) if value else None
    except ValueError:
        moment = None
    return moment.timestamp() if moment else float("inf")


def show(args: argparse.Namespace, settings: Settings) -> int:
    _check_id(args.article_id)

    async def run() -> int:
        async with store_session(settings) as session:
            article = await session.store.require(args.article_id)
            history = await session.store.history(args.article_id)
        out = {
            "id": article.id,
            "uri": article.uri,
            "version": article.version,
            "pubStatus": article.latest.pub_status,
            "purgedAt": iso(article.purged_at),
            "purgeReason": article.purge_reason,
            "versions": [{k: v for k, v in r.to_record().items() if k != "document"} | {"hasBody": r.has_body}
                         for r in history],
            "document": article.latest.document,
        }
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0

    return asyncio.run(run())


def purge(args: argparse.Namespace, settings: Settings) -> int:
    _check_id(args.article_id)
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError("purge removes every revision's body for good; pass --yes to confirm")
        answer = input(f"Remove the bodies of every revision of {args.article_id}? Type 'purge': ")
        if answer.strip() != "purge":
            raise CommandError("not purged")

    async def run() -> int:
        async with store_session(settings) as session:
            article = await session.store.purge(args.article_id, args.reason, "cli")
        print(f"purged {article.id}: {article.version} versions kept as a tombstone, reason: {args.reason}")
        return 0

    return asyncio.run(run())


def _check_id(article_id: str) -> None:
    if not is_article_id(article_id):
        raise CommandError(f"{article_id!r} is not an article id (16 characters a-z, 2-7)")
