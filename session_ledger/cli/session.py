"""CLI commands that talk to a running ledger: session, user, events."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from ledger.client import LedgerClient
from ledger.contracts.commands import Revocation, TokenPair
from ledger.domain.events import RevokeReason
from ledger.streaming.connection import connect
from ledger.streaming.store import EventStore
from session_ledger.cli.common import COMMON, emit, run_client, settings_from

REASONS = [r.value for r in RevokeReason]


def register(sub: Any) -> None:
    session = sub.add_parser("session", help="start, rotate and revoke sessions").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    start = session.add_parser(
        "start", parents=[COMMON], help="start a session for a user; prints the token pair"
    )
    start.add_argument("--sub", required=True, help="user id")
    start.add_argument("--client-id", help="client (app/device) id")
    start.add_argument("--scope", action="append", default=[], help="scope (repeatable)")
    start.set_defaults(func=cmd_start)

    rotate = session.add_parser("rotate", parents=[COMMON], help="exchange a refresh token for a new pair")
    rotate.add_argument("token", help="the current refresh token")
    rotate.set_defaults(func=cmd_rotate)

    revoke = session.add_parser("revoke", parents=[COMMON], help="revoke one session by id")
    revoke.add_argument("sid")
    revoke.add_argument("--reason", choices=REASONS, default="admin")
    revoke.set_defaults(func=cmd_revoke)

    logout = session.add_parser("logout", parents=[COMMON], help="revoke the session of a refresh token")
    logout.add_argument("token")
    logout.set_defaults(func=cmd_logout)

    user = sub.add_parser("user", help="user-wide actions").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    urevoke = user.add_parser(
        "revoke", parents=[COMMON], help="revoke every session of a user (log out everywhere)"
    )
    urevoke.add_argument("sub")
    urevoke.add_argument("--reason", choices=REASONS, default="admin")
    urevoke.set_defaults(func=cmd_revoke_user)

    events = sub.add_parser("events", help="read the event stream").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    tail = events.add_parser("tail", parents=[COMMON], help="print events as JSON lines")
    tail.add_argument("--from-seq", type=_positive, default=1, help="first stream sequence (default 1)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep following new events")
    tail.set_defaults(func=cmd_tail)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _pair_text(pair: TokenPair) -> str:
    return "\n".join(
        [
            f"session      {pair.sid} (user {pair.sub}, generation {pair.generation})",
            f"access       {pair.access_token}",
            f"refresh      {pair.refresh_token}",
            f"access exp   {pair.access_expires_at.isoformat()}",
            f"refresh exp  {pair.refresh_expires_at.isoformat()}",
            f"session exp  {pair.session_expires_at.isoformat()}",
        ]
    )


def _revocation_text(rev: Revocation) -> str:
    what = f"session {rev.sid}" if rev.sid else f"all sessions of {rev.sub}"
    if rev.already_revoked:
        return f"{what} was already revoked"
    return f"revoked {what} (stream sequence {rev.seq})"


def _command(
    action: Callable[[LedgerClient, argparse.Namespace], Awaitable[Any]], text: Callable[[Any], str]
) -> Callable[[argparse.Namespace], None]:
    """A CLI command that makes one ledger call and prints its result."""

    def run(args: argparse.Namespace) -> None:
        async def go(client: LedgerClient) -> None:
            result = await action(client, args)
            emit(args, result, text(result))

        run_client(args, go)

    return run


cmd_start = _command(lambda c, a: c.start_session(a.sub, client_id=a.client_id, scopes=a.scope), _pair_text)
cmd_rotate = _command(lambda c, a: c.rotate(a.token), _pair_text)
cmd_revoke = _command(lambda c, a: c.revoke_session(a.sid, a.reason), _revocation_text)
cmd_logout = _command(lambda c, a: c.logout(a.token), _revocation_text)
cmd_revoke_user = _command(lambda c, a: c.revoke_user(a.sub, a.reason), _revocation_text)


def cmd_tail(args: argparse.Namespace) -> None:
    """Events are JSON lines whatever ``--json`` says: one object per event, with its sequence."""
    settings = settings_from(args, "analyst")

    async def go() -> None:
        nc = await connect(settings.nats_url, "ledger-cli", deadline=args.timeout)
        try:
            async for rec in EventStore(nc, settings).read(from_seq=args.from_seq, follow=args.follow):
                line = {"seq": rec.seq, "subject": rec.subject, **rec.event.model_dump(mode="json")}
                print(json.dumps(line, sort_keys=True), flush=True)
        finally:
            await nc.close()

    asyncio.run(go())
