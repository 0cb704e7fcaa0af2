"""The ``syndicate`` command: the parser, the dispatch to a command's module, and one-line errors.

Start-up is quick because this module imports nothing heavy: each command is named by the module that
runs it (``server.cli.serve``, ``.articles``, ``.partners``, ``.ops``), imported only once the
arguments are parsed, so ``syndicate --help`` and a mistyped option never load aiohttp, Redis or the
ninjs schemas. Every failure is one line on stderr and a non-zero exit: a bad argument (2), a bad
setting or an unusable environment (2), a refused request (1). Commands that need Redis use
``REDIS_URL``, or the embedded Redis: the running server's when there is one, else a private one for
the command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

DESCRIPTION = "Syndicate, a news syndication server: serve feeds, ingest ninjs, manage partners and push."
FORMATS_HELP = "comma-separated formats (rss,atom,newsml,json), or *"


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported as one line (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


class _Formatter(argparse.HelpFormatter):
    """argparse's help, with room for the longest command name ("deliveries") before its help, so that
    every command is listed on one line."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=24)
        self._action_max_length = 16  # argparse measures the COMMAND metavar, not the commands in it


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Only now the command's module, and what every command shares: settings, logs, the errors.
    from redis.exceptions import RedisError

    from server.cli.errors import CommandError
    from server.core.embedded_redis import EmbeddedRedisError
    from server.core.errors import Problem
    from server.core.redis_connection import describe_failure
    from server.core.settings import Settings, SettingsError
    from server.domain.feeds import FeedDefinitionError
    from server.observability import logs

    try:
        module_name, function_name = args.run.split(":")
        run: Callable[[argparse.Namespace, Settings], int] = getattr(
            importlib.import_module(f"server.cli.{module_name}"), function_name)
        settings = Settings.from_env()
        logs.configure(settings)  # JSON lines on stderr (SYNDICATE_LOG_FORMAT=text for humans)
        return run(args, settings)
    except RedisError as exc:
        print(f"syndicate: Redis is not reachable or failed ({describe_failure(exc)}); check REDIS_URL",
              file=sys.stderr)
        return 2
    except (SettingsError, CommandError, EmbeddedRedisError, FeedDefinitionError) as exc:
        print(f"syndicate: {exc}", file=sys.stderr)
        return 2
    except Problem as exc:
        print(f"syndicate: {exc.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _port(text: str) -> int:
    """``--port``: the same rule as ``SYNDICATE_PORT`` (a whole number, 1 to 65535)."""
    from server.core.settings import SettingsError, parse_port

    try:
        return parse_port(text, "--port")
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--port: ")) from None


def _child_arguments(parser: argparse.ArgumentParser) -> None:
    """What a supervisor tells its children (server.runtime.supervisor); not for people."""
    parser.add_argument("--slot", type=int, help=argparse.SUPPRESS)  # this child's slot under a supervisor
    parser.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)  # the slot's listening socket


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="syndicate", description=DESCRIPTION, formatter_class=_Formatter)
    commands = parser.add_subparsers(required=True, metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help_text: str, run: str, into: Any = commands) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = into.add_parser(name, help=help_text, description=help_text,
                                                       formatter_class=_Formatter)
        if run:
            sub.set_defaults(run=run)
        return sub

    serve = command("serve", "run the HTTP server", "serve:serve")
    serve.add_argument("--host", help="address to listen on (default SYNDICATE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port, 1 to 65535 (default SYNDICATE_PORT or 8080)")
    serve.add_argument("--demo", action="store_true",
                       help="publish the demo article and make the demo partner at start-up")
    serve.add_argument("--processes", type=int, metavar="N",
                       help="server processes sharing the port under one supervisor (default SYNDICATE_PROCESSES or 1)")
    _child_arguments(serve)
    worker = command("worker", "run push workers and background jobs, no HTTP", "serve:worker")
    worker.add_argument("--processes", type=int, metavar="N",
                        help="worker processes under one supervisor (default SYNDICATE_WORKER_PROCESSES or 1)")
    _child_arguments(worker)

    imp = command("import", "import ninjs JSON files or folders of them", "articles:import_files")
    imp.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    imp.add_argument("--signal", choices=("update", "correction"), help="mark revisions with this signal")
    imp.add_argument("--publisher", default="cli", help="name recorded on the revisions (default: cli)")

    show = command("show", "print an article's latest revision and history", "articles:show")
    show.add_argument("article_id", metavar="ID")

    purge = command("purge", "legal takedown: remove every revision's body", "articles:purge")
    purge.add_argument("article_id", metavar="ID")
    purge.add_argument("--reason", required=True, help="why, kept on the tombstone")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    partner = command("partner", "manage partners, keys and webhook endpoints", "")
    actions = partner.add_subparsers(required=True, metavar="ACTION", parser_class=_Parser)
    add = command("add", "create a partner and print its first key", "partners:add", actions)
    add.add_argument("name")
    add.add_argument("--feeds", required=True, help="comma-separated feed names, or *")
    add.add_argument("--formats", required=True, help=FORMATS_HELP)
    add.add_argument("--no-media", action="store_true", help="no photo rights: feeds without the photos")
    add.add_argument("--contact")
    add.add_argument("--notes")
    add.add_argument("--rate-limit", type=int, help="requests per minute (default: the server's)")
    add.add_argument("--expires", help="the key's expiry, an RFC 3339 date-time")
    command("list", "list partners", "partners:list_partners", actions)
    command("show", "one partner and its keys", "partners:show", actions).add_argument("name")
    key = command("key", "issue another key", "partners:issue_key", actions)
    key.add_argument("name")
    key.add_argument("--expires", help="the key's expiry, an RFC 3339 date-time")
    revoke = command("revoke", "revoke one key", "partners:revoke", actions)
    revoke.add_argument("name")
    revoke.add_argument("key_id", metavar="KEYID")
    for action, active in (("disable", False), ("enable", True)):
        toggle = command(action, f"{action} a partner (all its keys)", "partners:toggle", actions)
        toggle.add_argument("name")
        toggle.set_defaults(active=active)
    endpoint = command("endpoint", "a partner's webhook endpoints", "", actions)
    endpoint_actions = endpoint.add_subparsers(required=True, metavar="ACTION", parser_class=_Parser)
    endpoint_add = command("add", "push every revision to a URL, signed", "partners:add_endpoint", endpoint_actions)
    endpoint_add.add_argument("name")
    endpoint_add.add_argument("url")
    endpoint_add.add_argument("--format", required=True, help="newsml, ninjs or atom")
    endpoint_add.add_argument("--secret", required=True, help="16 to 199 bytes, shared with the receiver")
    command("list", "list endpoints and WebSub subscriptions", "partners:list_endpoints",
            endpoint_actions).add_argument("name")
    endpoint_remove = command("remove", "remove an endpoint", "partners:remove_endpoint", endpoint_actions)
    endpoint_remove.add_argument("name")
    endpoint_remove.add_argument("endpoint_id", metavar="ENDPOINT_ID")

    command("status", "partners' health, corrections and kills not received", "ops:status")
    deliveries = command("deliveries", "recent push deliveries and failures", "ops:deliveries")
    deliveries.add_argument("--failed", action="store_true", help="only failed attempts and given-up deliveries")
    deliveries.add_argument("--partner")
    retry = command("retry", "send a given-up delivery again", "ops:retry")
    retry.add_argument("delivery_id", metavar="DELIVERY_ID", nargs="?")
    retry.add_argument("--destination", metavar="ID", help="retry every failed delivery of this destination")
    return parser


if __name__ == "__main__":
    sys.exit(main())
