"""CLI for the read side: ``sessions list|show``, ``introspect``, ``projections status|rebuild``.

Other projections join ``projections status`` / ``rebuild`` by adding an entry to
``CHECKPOINTS`` / ``REBUILDERS`` (name -> async function of (nc, settings)).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TextIO

from nats.aio.client import Client as NATS

from ledger.cli import COMMON, emit, run_client, settings_from
from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.errors import BadRequest, TokenInvalid
from ledger.natsconn import connect
from ledger.store import EventStore
from projections.rebuild import RebuildResult, rebuild_sessions
from projections.runner import run_sessions
from projections.session_store import Pointer, SessionStore
from projections.views import SessionView

Checkpoint = Callable[[NATS, Settings], Awaitable[int | None]]
Rebuilder = Callable[[NATS, Settings, Callable[[int, int], None]], Awaitable[RebuildResult]]
Runner = Callable[[Settings, asyncio.Event, asyncio.Event], Coroutine[Any, Any, None]]


async def sessions_checkpoint(nc: NATS, settings: Settings) -> int | None:
    js = nc.jetstream(timeout=settings.request_timeout)
    bucket, _ = await (await Pointer.open(js, settings)).read()
    if bucket is None:
        return None
    return await (await SessionStore.open(js, bucket)).checkpoint()


CHECKPOINTS: dict[str, Checkpoint] = {"sessions": sessions_checkpoint}
REBUILDERS: dict[str, Rebuilder] = {"sessions": rebuild_sessions}
RUNNERS: dict[str, Runner] = {"sessions": run_sessions}


def register(sub: Any) -> None:
    sessions = sub.add_parser("sessions", help="query the sessions projection").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    listing = sessions.add_parser("list", parents=[COMMON], help="a user's active sessions")
    listing.add_argument("--sub", required=True, help="user id")
    listing.add_argument("--all", action="store_true", help="include expired and revoked sessions")
    listing.set_defaults(func=cmd_list)
    show = sessions.add_parser("show", parents=[COMMON], help="one session's state")
    show.add_argument("sid")
    show.set_defaults(func=cmd_show)

    intro = sub.add_parser(
        "introspect", parents=[COMMON], help="RFC 7662 introspection of a refresh or access token"
    )
    intro.add_argument("token", help="the token, or - to read it from stdin (keeps it out of shell history)")
    intro.set_defaults(func=cmd_introspect)

    proj = sub.add_parser("projections", help="read-side projections").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    proj.add_parser("status", parents=[COMMON], help="lag behind the stream, per projection").set_defaults(
        func=cmd_status
    )
    rebuild = proj.add_parser(
        "rebuild", parents=[COMMON], help="rebuild a projection from sequence 1 (service keeps running)"
    )
    rebuild.add_argument("name", choices=sorted(REBUILDERS))
    rebuild.set_defaults(func=cmd_rebuild)
    run = proj.add_parser(
        "run", parents=[COMMON], help="run one projection process (and its queries) until SIGINT/SIGTERM"
    )
    run.add_argument("name", choices=sorted(RUNNERS))
    run.add_argument("--data-dir", type=Path, help="state directory with keys/ (default ./.ledger)")
    run.set_defaults(func=cmd_run)


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
        f"idle expiry    {_when(v.idle_expires_at)}",
        f"expires        {_when(v.expires_at)}",
    ]
    if v.ended_at is not None or v.end_reason is not None:
        lines.append(f"ended          {_when(v.ended_at)} ({v.end_reason})")
    return "\n".join(lines)


def sessions_table(views: tuple[SessionView, ...]) -> str:
    rows = [("SID", "CLIENT", "GEN", "STATUS", "STARTED", "LAST ROTATION", "IDLE EXPIRY", "SCOPES")]
    for v in views:
        rows.append(
            (
                v.sid,
                v.client_id or "-",
                str(v.generation),
                v.status,
                _when(v.started_at),
                _when(v.last_rotated_at),
                _when(v.idle_expires_at),
                " ".join(v.scopes) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def cmd_list(args: argparse.Namespace) -> None:
    async def go(c: LedgerClient) -> None:
        result = await c.list_sessions(args.sub, include_inactive=args.all)
        emit(args, result, sessions_table(result.sessions) if result.sessions else "no sessions")

    run_client(args, go)


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


async def status_rows(nc: NATS, settings: Settings) -> list[dict[str, Any]]:
    last = await EventStore(nc, settings).last_seq()
    rows = []
    for name, checkpoint in CHECKPOINTS.items():
        row: dict[str, Any] = {"projection": name, "stream_last_seq": last, "checkpoint": None, "lag": None}
        try:
            row["checkpoint"] = applied = await checkpoint(nc, settings)
        except Exception as exc:  # one broken projection must not hide the others
            row["error"] = f"{type(exc).__name__}: {exc}"
            applied = None
        row["lag"] = None if applied is None else max(0, last - applied)
        rows.append(row)
    return rows


def cmd_status(args: argparse.Namespace) -> None:
    settings = settings_from(args)

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
    settings = settings_from(args)

    async def go(nc: NATS) -> None:
        bar = ProgressBar(f"rebuild {args.name}")
        result = await REBUILDERS[args.name](nc, settings, bar.update)
        bar.finish()
        human = (
            f"rebuilt {args.name}: {result.events} events -> {result.keys} keys in {result.bucket} "
            f"(was {result.previous or '-'}), up to seq {result.last_seq}, {result.seconds:.2f}s"
        )
        emit(args, {"projection": args.name, **vars(result)}, human)

    run_nats(args, settings, go)


def cmd_run(args: argparse.Namespace) -> None:
    settings = settings_from(args)

    async def go() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(RUNNERS[args.name](settings, stop, ready))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if ready.is_set():
            print(f"ready: projection {args.name} on {settings.nats_url}", flush=True)
        await task

    asyncio.run(go())


def run_nats(args: argparse.Namespace, settings: Settings, action: Callable[[NATS], Awaitable[None]]) -> None:
    async def go() -> None:
        nc = await connect(settings.nats_url, "ledger-cli", deadline=args.timeout)
        try:
            await action(nc)
        finally:
            await nc.drain()

    asyncio.run(go())


class ProgressBar:
    """A one-line bar on stderr, redrawn at most ten times a second."""

    def __init__(self, label: str, out: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.out = out or sys.stderr
        self.width = width
        self._last_draw = 0.0
        self._drawn = False

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        share = done / total if total else 1.0
        filled = int(share * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        self.out.write(f"\r{self.label} [{bar}] {share:6.1%} {done}/{total}")
        self.out.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self.out.write("\n")
            self.out.flush()
