"""``session-ledger projections status|rebuild|run``: every projection, from one explicit table."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS

from ledger.config import Settings
from ledger.streaming.store import EventStore
from projections.sessions.rebuild import RebuildResult, rebuild_sessions
from projections.sessions.store import sessions_checkpoint
from session_ledger.cli.analytics import analytics_checkpoint, rebuild_analytics
from session_ledger.cli.common import COMMON, SERVING, ProgressBar, emit, run_nats, settings_from
from session_ledger.components import ANALYTICS, SESSIONS
from session_ledger.runtime import Component, run_one

Checkpoint = Callable[[NATS, Settings], Awaitable[int | None]]
Rebuilder = Callable[[NATS, Settings, Callable[[int, int], None]], Awaitable[RebuildResult]]


@dataclass(frozen=True)
class Projection:
    checkpoint: Checkpoint
    rebuild: Rebuilder
    component: Component


PROJECTIONS: dict[str, Projection] = {
    "sessions": Projection(sessions_checkpoint, rebuild_sessions, SESSIONS),
    "analytics": Projection(analytics_checkpoint, rebuild_analytics, ANALYTICS),
}


def register(sub: Any) -> None:
    proj = sub.add_parser("projections", help="read-side projections").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    status = proj.add_parser("status", parents=[COMMON], help="lag behind the stream, per projection")
    status.set_defaults(func=cmd_status)
    rebuild = proj.add_parser(
        "rebuild", parents=[COMMON], help="rebuild a projection from sequence 1 (service keeps running)"
    )
    rebuild.add_argument("name", choices=sorted(PROJECTIONS))
    rebuild.set_defaults(func=cmd_rebuild)
    run = proj.add_parser(
        "run",
        parents=[COMMON, SERVING],
        help="run one projection process (and its queries) until SIGINT/SIGTERM",
    )
    run.add_argument("name", choices=sorted(PROJECTIONS))
    run.set_defaults(func=cmd_run)


async def status_rows(nc: NATS, settings: Settings) -> list[dict[str, Any]]:
    last = await EventStore(nc, settings).last_seq()
    rows = []
    for name, projection in PROJECTIONS.items():
        row: dict[str, Any] = {"projection": name, "stream_last_seq": last, "checkpoint": None, "lag": None}
        try:
            row["checkpoint"] = applied = await projection.checkpoint(nc, settings)
        except Exception as exc:  # one broken projection must not hide the others
            row["error"] = type(exc).__name__
            applied = None
        row["lag"] = None if applied is None else max(0, last - applied)
        rows.append(row)
    return rows


def cmd_status(args: argparse.Namespace) -> None:
    settings = settings_from(args, "projector")

    async def go(nc: NATS) -> None:
        rows = await status_rows(nc, settings)
        human = "\n".join(
            f"{r['projection']:<12} checkpoint {r['checkpoint'] if r['checkpoint'] is not None else '-':>10}"
            f"  stream {r['stream_last_seq']:>10}  lag {r['lag'] if r['lag'] is not None else 'not started'}"
            + (f"  ({r['error']})" if "error" in r else "")
            for r in rows
        )
        emit(args, {"projections": rows}, human)

    run_nats(args, settings, go)


def cmd_rebuild(args: argparse.Namespace) -> None:
    settings = settings_from(args, "projector")

    async def go(nc: NATS) -> None:
        bar = ProgressBar(f"rebuild {args.name}")
        result = await PROJECTIONS[args.name].rebuild(nc, settings, bar.update)
        bar.finish()
        human = (
            f"rebuilt {args.name}: {result.events} events -> {result.keys} keys in {result.bucket} "
            f"(was {result.previous or '-'}), up to seq {result.last_seq}, {result.seconds:.2f}s"
        )
        emit(args, {"projection": args.name, **vars(result)}, human)

    run_nats(args, settings, go)


def cmd_run(args: argparse.Namespace) -> None:
    run_one(PROJECTIONS[args.name].component, settings_from(args, "projector"))
