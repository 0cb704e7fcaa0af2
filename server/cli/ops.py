"""``syndicate status``, ``deliveries`` and ``retry``: the ops views (:mod:`server.ops.views`) in a terminal."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

from server.cli.articles import store_session
from server.cli.errors import CommandError
from server.core.settings import Settings
from server.core.values import utc_now
from server.ops import views as ops
from server.ops.models import PartnerHealth
from server.ops.views import OpsContext


def _ops_command(settings: Settings, action: Callable[[OpsContext], Awaitable[None]]) -> int:
    async def run() -> int:
        async with store_session(settings) as session:
            await action(session.ops)
        return 0

    return asyncio.run(run())


def status(_args: argparse.Namespace, settings: Settings) -> int:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    async def action(context: OpsContext) -> None:
        overview = await ops.overview(context)
        flow = await ops.propagation(context)
        console = Console()
        colours = {PartnerHealth.HEALTHY: "green", PartnerHealth.BEHIND: "yellow", PartnerHealth.FAILING: "bold red"}
        # Fits the terminal: the names and states are never cut (they wrap at worst); times are short.
        table = Table(title="Partners", box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
        table.add_column("partner", no_wrap=True, overflow="fold", min_width=6)
        table.add_column("state", no_wrap=True, min_width=7)
        for column in ("last poll", "last push", "lag", "owed", "errors", "queue"):
            table.add_column(column, justify="right" if column in ("owed", "errors", "queue") else "left")
        now = utc_now()
        for row in overview.partners:
            table.add_row(row.partner + ("" if row.active else " (off)"),
                          f"[{colours[row.state]}]{row.state}[/]", _ago(row.last_poll, now, "never"),
                          _ago(row.last_push, now, "-"), f"{row.lag.revisions}r {_span(row.lag.seconds)}",
                          str(row.outstanding), "-" if row.error_rate is None else f"{row.error_rate:.0%}",
                          str(row.queue_depth))
        console.print(table)
        outstanding = Table(title="Corrections and kills not yet received", box=box.SIMPLE_HEAD, pad_edge=False)
        outstanding.add_column("kind", no_wrap=True)
        outstanding.add_column("article", overflow="fold", ratio=1)
        outstanding.add_column("v", justify="right")
        outstanding.add_column("partner", no_wrap=True, overflow="fold")
        outstanding.add_column("for", justify="right", no_wrap=True)
        for item in flow.items:
            for receipt in item.partners:
                if not receipt.received:
                    outstanding.add_row(item.kind, item.headline or item.uri, str(item.version),
                                        receipt.partner, _span(receipt.outstanding_seconds or 0))
        console.print(outstanding if outstanding.row_count else "[green]Every correction and kill has been received.[/]")
        queue = overview.queue
        console.print(f"queue: {queue.depth} waiting, {queue.in_flight} in flight, {queue.failed} failed; "
                      f"oldest pending {queue.oldest_pending_seconds or 0:.0f} s")
    return _ops_command(settings, action)


def _span(seconds: float) -> str:
    """A duration in its largest unit: 45s, 12m, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _ago(moment: datetime | None, now: datetime, missing: str) -> str:
    return missing if moment is None else f"{_span(max(0.0, (now - moment).total_seconds()))} ago"


def deliveries(args: argparse.Namespace, settings: Settings) -> int:
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


def retry(args: argparse.Namespace, settings: Settings) -> int:
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
