"""CLI for the sessions read side: ``sessions list|show`` and ``introspect``.

``sessions list --at T`` travels in time: it reads the event log (as the ``analyst`` role)
and folds it up to ``T`` with the projection's own pure fold (``projections.sessions.timetravel``).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS

from ledger.client import LedgerClient
from ledger.contracts.queries import SessionView
from ledger.domain.errors import BadRequest, TokenInvalid
from ledger.streaming.store import EventStore
from projections.analytics.reports import parse_time
from projections.sessions.timetravel import state_at, views_at
from session_ledger.cli.common import COMMON, emit, run_client, run_nats, settings_from


def register(sub: Any) -> None:
    sessions = sub.add_parser("sessions", help="query the sessions projection").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    listing = sessions.add_parser(
        "list",
        parents=[COMMON],
        help="a user's active sessions (--at: valid at a past instant, from the log)",
    )
    listing.add_argument("--sub", help="user id (required without --at; with --at: every user if omitted)")
    listing.add_argument("--all", action="store_true", help="include expired and revoked sessions")
    listing.add_argument(
        "--at",
        help="time travel: ISO time (UTC if no offset), an age like 2h, or now; folds the event log "
        "up to it (connects as analyst)",
    )
    listing.add_argument("--current", metavar="SID", help='the asking session: marked "this device"')
    listing.set_defaults(func=cmd_list)
    show = sessions.add_parser("show", parents=[COMMON], help="one session's state")
    show.add_argument("sid")
    show.set_defaults(func=cmd_show)

    intro = sub.add_parser(
        "introspect", parents=[COMMON], help="RFC 7662 introspection of a refresh or access token"
    )
    intro.add_argument("token", help="the token, or - to read it from stdin (keeps it out of shell history)")
    intro.set_defaults(func=cmd_introspect)


def _when(value: Any) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def session_text(v: SessionView) -> str:
    lines = [
        f"session        {v.sid} ({v.status})",
        f"user           {v.sub}",
        f"client         {v.client_id or '-'}",
        f"scopes         {' '.join(v.scopes) or '-'}",
        f"generation     {v.generation} ({v.rotations} rotations)",
        f"started        {_when(v.started_at)} (stream seq {v.start_seq})",
        f"last rotation  {_when(v.last_rotated_at)}",
        f"last seen      {_when(v.last_seen_at)}",
        f"device         {_device(v)}",
        f"acr            {v.acr or '-'}",
        f"idle expiry    {_when(v.idle_expires_at)}",
        f"expires        {_when(v.expires_at)}",
    ]
    if v.ended_at is not None or v.end_reason is not None:
        lines.append(f"ended          {_when(v.ended_at)} ({v.end_reason})")
    return "\n".join(lines)


def _device(v: SessionView) -> str:
    d = v.device
    if d is None:
        return "-"
    parts = [d.label, d.ua_family, d.device_class, d.ip_hint]
    return ", ".join(p for p in parts if p)


def sessions_table(views: tuple[SessionView, ...]) -> str:
    rows = [("SID", "CLIENT", "GEN", "STATUS", "STARTED", "LAST SEEN", "IDLE EXPIRY", "SCOPES", "DEVICE")]
    for v in views:
        rows.append(
            (
                v.sid + (" *" if v.current else ""),
                v.client_id or "-",
                str(v.generation),
                v.status,
                _when(v.started_at),
                _when(v.last_seen_at),
                _when(v.idle_expires_at),
                " ".join(v.scopes) or "-",
                _device(v),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def cmd_list(args: argparse.Namespace) -> None:
    if args.at is not None:
        return cmd_list_at(args)
    if not args.sub:
        raise BadRequest("--sub is required (or give --at to list every user's sessions at an instant)")

    async def go(c: LedgerClient) -> None:
        result = await c.list_sessions(args.sub, include_inactive=args.all, current_sid=args.current)
        emit(args, result, sessions_table(result.sessions) if result.sessions else "no sessions")

    run_client(args, go)


def cmd_list_at(args: argparse.Namespace) -> None:
    try:
        at = parse_time(args.at, now=datetime.now(UTC)).replace(tzinfo=UTC)
    except ValueError as err:
        raise BadRequest(f"bad --at: {err}") from None
    settings = settings_from(args, "analyst")

    async def go(nc: NATS) -> None:
        events = [rec async for rec in EventStore(nc, settings).read(from_seq=1)]
        views = views_at(state_at(events, at), at, sub=args.sub, include_inactive=args.all)
        data = {"at": at.isoformat(), "sub": args.sub, "sessions": [v.model_dump(mode="json") for v in views]}
        emit(args, data, at_text(at, views))

    run_nats(args, settings, go)


def at_text(at: datetime, views: tuple[SessionView, ...]) -> str:
    users = len({v.sub for v in views})
    clients = len({v.client_id for v in views})
    head = f"at {at.isoformat()}: {len(views)} sessions, {users} users, {clients} clients"
    if not views:
        return head
    rows = [("SUB", "SID", "CLIENT", "GEN", "STATUS", "STARTED", "IDLE EXPIRY")]
    rows += [
        (
            v.sub,
            v.sid,
            v.client_id or "-",
            str(v.generation),
            v.status,
            _when(v.started_at),
            _when(v.idle_expires_at),
        )
        for v in views
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([head, *table])


def cmd_show(args: argparse.Namespace) -> None:
    async def go(c: LedgerClient) -> None:
        view = await c.get_session(args.sid)
        emit(args, view, session_text(view))

    run_client(args, go)


def cmd_introspect(args: argparse.Namespace) -> None:
    """Prints the RFC 7662 answer; exits 1 when the token is not active."""
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    if not token:
        raise BadRequest("no token given")

    async def go(c: LedgerClient) -> None:
        result = await c.introspect(token)
        data = result.wire()
        emit(args, data, "\n".join(f"{k:<11} {v}" for k, v in data.items()))
        if not result.active:
            raise TokenInvalid("token is not active")

    run_client(args, go)
