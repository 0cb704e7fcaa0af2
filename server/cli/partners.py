"""``syndicate partner ...``: partners, their keys and their webhook endpoints, straight in Redis
beside a running server (which reloads its key table on the change notice)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson

from server.cli.articles import store_session
from server.cli.errors import CommandError
from server.core.settings import Settings
from server.core.values import parse_iso, utc_now
from server.domain.partners import IssuedKey
from server.push.endpoints import checked_webhook
from server.runtime.services import Services


def _partner_command(settings: Settings, action: Callable[[Services], Awaitable[None]]) -> int:
    async def run() -> int:
        async with store_session(settings) as session:
            await action(session)
        return 0

    return asyncio.run(run())


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _expiry(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_iso(text)
    except ValueError:
        raise CommandError(f"--expires: {text!r} is not an RFC 3339 date-time with a timezone, in the years 1 "
                           "to 9999 once in UTC") from None


def _print_issued(issued: IssuedKey) -> None:
    print(f"partner {issued.partner.name}: key {issued.key_id} (shown once, keep it safe)")
    print(issued.key)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add(args: argparse.Namespace, settings: Settings) -> int:
    async def action(session: Services) -> None:
        _print_issued(await session.partners.create(
            args.name, _csv(args.feeds), _csv(args.formats), media=not args.no_media, contact=args.contact,
            notes=args.notes, rate_limit=args.rate_limit, expires_at=_expiry(args.expires)))
    return _partner_command(settings, action)


def list_partners(_args: argparse.Namespace, settings: Settings) -> int:
    async def action(session: Services) -> None:
        partners, _generation = await session.partners.load_all()
        for partner in partners:
            live = sum(1 for k in partner.keys if k.usable(utc_now()))
            print(f"{partner.name}\t{'active' if partner.active else 'disabled'}\tfeeds={','.join(partner.feeds)}"
                  f"\tformats={','.join(partner.formats)}\tmedia={'yes' if partner.media else 'no'}\tkeys={live}")
    return _partner_command(settings, action)


def show(args: argparse.Namespace, settings: Settings) -> int:
    async def action(session: Services) -> None:
        _print_json((await session.partners.get(args.name)).public_view())
    return _partner_command(settings, action)


def issue_key(args: argparse.Namespace, settings: Settings) -> int:
    async def action(session: Services) -> None:
        _print_issued(await session.partners.issue_key(args.name, _expiry(args.expires)))
    return _partner_command(settings, action)


def revoke(args: argparse.Namespace, settings: Settings) -> int:
    async def action(session: Services) -> None:
        await session.partners.revoke_key(args.name, args.key_id)
        print(f"revoked key {args.key_id} of {args.name}")
    return _partner_command(settings, action)


def toggle(args: argparse.Namespace, settings: Settings) -> int:
    async def action(session: Services) -> None:
        await session.partners.update(args.name, active=args.active)
        print(f"{args.name} {'enabled' if args.active else 'disabled'}")
    return _partner_command(settings, action)


def add_endpoint(args: argparse.Namespace, settings: Settings) -> int:
    async def action(session: Services) -> None:
        partner = await session.partners.get(args.name)
        webhook = await checked_webhook(partner, args.url, args.format, args.secret, session.store.feeds.values(),
                                        settings.push_allow_networks)
        endpoint = await session.destinations.save(webhook)
        print(f"endpoint {endpoint.id} of {partner.name}: {endpoint.format} to {endpoint.url}")
    return _partner_command(settings, action)


def list_endpoints(args: argparse.Namespace, settings: Settings) -> int:
    async def action(session: Services) -> None:
        partner = await session.partners.get(args.name)
        for destination in await session.destinations.for_partner(partner.name):
            print(f"{destination.id}\t{destination.kind}\t{destination.format}\t{destination.url}")
    return _partner_command(settings, action)


def remove_endpoint(args: argparse.Namespace, settings: Settings) -> int:
    async def action(session: Services) -> None:
        store = session.destinations
        endpoint = await store.require(args.endpoint_id, partner=args.name)
        await store.remove(endpoint.id)
        print(f"removed endpoint {endpoint.id} of {args.name}")
    return _partner_command(settings, action)
