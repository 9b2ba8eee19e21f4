"""CLI commands that talk to a running ledger: session, user, events."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from ledger.client import LedgerClient
from ledger.contracts.commands import ClientContext, Revocation, StepUp, TokenPair
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
    _auth_options(start, required=False)
    start.add_argument(
        "--idempotency-key",
        help="a retry with the same key returns the same session (8-128 of [A-Za-z0-9._:-])",
    )
    _client_options(start)
    start.set_defaults(func=cmd_start)

    rotate = session.add_parser("rotate", parents=[COMMON], help="exchange a refresh token for a new pair")
    rotate.add_argument("token", help="the current refresh token")
    _client_options(rotate)
    rotate.set_defaults(func=cmd_rotate)

    step = session.add_parser(
        "step-up", parents=[COMMON], help="raise a session's authentication level after a re-authentication"
    )
    step.add_argument("sid", help="the session")
    step.add_argument("--sub", required=True, help="the user who re-authenticated (must own the session)")
    _auth_options(step, required=True)
    step.set_defaults(func=cmd_step_up)

    own = session.add_parser(
        "revoke-own", parents=[COMMON], help="self-service: revoke one of the user's sessions from another"
    )
    own.add_argument("sid", help="the session to revoke")
    own.add_argument("--sub", required=True, help="the user")
    own.add_argument("--current", required=True, metavar="SID", help="the user's live session asking")
    own.set_defaults(func=cmd_revoke_own)

    others = session.add_parser(
        "sign-out-others",
        parents=[COMMON],
        help="self-service: revoke every session of the user but this one",
    )
    others.add_argument("--sub", required=True, help="the user")
    others.add_argument("--current", required=True, metavar="SID", help="the session that stays signed in")
    others.set_defaults(func=cmd_sign_out_others)

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


def _auth_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--acr", required=required, help="authentication context class (OpenID Connect acr)")
    parser.add_argument(
        "--amr", action="append", default=[], help="authentication method, RFC 8176 (repeatable)"
    )
    parser.add_argument("--auth-time", type=_when, help="when the user authenticated (ISO 8601 with offset)")


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user-agent", help="the client's User-Agent (only its family is stored)")
    parser.add_argument(
        "--ip", help="the client's IP (stored as LEDGER_CLIENT_IP says; truncated by default)"
    )
    parser.add_argument("--device-label", help="a name for the device, shown in session lists (<= 64)")


def _client(args: argparse.Namespace) -> ClientContext | None:
    given = {"user_agent": args.user_agent, "ip": args.ip, "label": args.device_label}
    return ClientContext(**given) if any(v is not None for v in given.values()) else None


def _when(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone offset, e.g. 2026-12-01T10:00:00+00:00")
    return value


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


def _step_up_text(ack: StepUp) -> str:
    return f"session {ack.sid} now at acr {ack.acr} (stream sequence {ack.seq}); its next tokens carry it"


def _revocation_text(rev: Revocation) -> str:
    what = f"session {rev.sid}" if rev.sid else f"all sessions of {rev.sub}"
    if rev.kept_sid:
        what += f" except {rev.kept_sid}"
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


cmd_start = _command(
    lambda c, a: c.start_session(
        a.sub, client_id=a.client_id, scopes=a.scope, acr=a.acr, amr=a.amr, auth_time=a.auth_time,
        client=_client(a), idempotency_key=a.idempotency_key,
    ),
    _pair_text,
)  # fmt: skip
cmd_rotate = _command(lambda c, a: c.rotate(a.token, client=_client(a)), _pair_text)
cmd_step_up = _command(
    lambda c, a: c.step_up(a.sid, sub=a.sub, acr=a.acr, amr=a.amr, auth_time=a.auth_time), _step_up_text
)
cmd_revoke_own = _command(
    lambda c, a: c.revoke_own_session(a.sid, sub=a.sub, current_sid=a.current), _revocation_text
)
cmd_sign_out_others = _command(
    lambda c, a: c.sign_out_others(sub=a.sub, current_sid=a.current), _revocation_text
)
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
