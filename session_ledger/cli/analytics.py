"""CLI for analysts: ``report``, ``sql``, ``simulate`` and ``analytics run|rebuild``.

Reports and ``sql`` open DuckDB read-only and sandboxed (no file access, no extensions,
configuration locked): the live file when no projection holds it, otherwise the
snapshot the running projection publishes every few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
from nats.aio.client import Client as NATS

from ledger.config import Settings, parse_duration
from ledger.domain.errors import BadRequest, Unavailable
from projections.analytics.html import render_html
from projections.analytics.projection import BATCH, AnalyticsDB, db_path_for, open_reader, open_writer
from projections.analytics.rebuild import rebuild_anywhere, run_analytics
from projections.analytics.reports import REPORTS, Table, WhatIf, build, query, render, window
from projections.sessions.rebuild import RebuildResult
from session_ledger.cli.common import COMMON, SERVING, settings_from
from session_ledger.runtime import Component, run_one
from session_ledger.sim.simulate import SimConfig, simulate

REPORT_HELP = {
    "summary": "headline figures of the window",
    "replay": "replay incidents over time, by user, by client, each incident",
    "theft": "race or theft: each reuse incident's verdict and evidence, likely thefts per user",
    "sessions": "durations (Kaplan-Meier), histogram, how sessions ended; --at: valid then",
    "expiration": "refresh tokens issued and never used",
    "usage": "rotations per session-day",
    "revocation": "revocation latency, per verifier",
}


def register(sub: Any) -> None:
    report = sub.add_parser("report", help="analyst reports from DuckDB").add_subparsers(
        dest="report", required=True, metavar="REPORT"
    )
    for name in REPORTS:
        p = report.add_parser(name, parents=[COMMON, _db_options()], help=REPORT_HELP[name])
        p.add_argument("--format", choices=["table", "json", "csv"], default="table")
        if name == "sessions":
            _at_option(p, "instead: the sessions, users and clients valid at this instant")
        p.set_defaults(func=cmd_report, name=name)
    whatif = report.add_parser(
        "whatif",
        parents=[COMMON, _db_options(), _whatif_options()],
        help="policy dry-run: recorded requests replayed through the ledger's decisions, candidate policy",
    )
    whatif.add_argument("--format", choices=["table", "json", "csv"], default="table")
    whatif.set_defaults(func=cmd_report, name="whatif")
    html = report.add_parser(
        "html", parents=[COMMON, _db_options(), _whatif_options()], help="one self-contained HTML page"
    )
    html.add_argument("-o", "--output", type=Path, default=Path("report.html"))
    _at_option(html, "add a section: the sessions, users and clients valid at this instant")
    html.set_defaults(func=cmd_html)

    sql = sub.add_parser("sql", parents=[COMMON, _db_options(window=False)], help="ad-hoc read-only SQL")
    sql.add_argument("query", help='e.g. "SELECT * FROM replay_incidents LIMIT 10"')
    sql.add_argument("--format", choices=["table", "json", "csv"], default="table")
    sql.set_defaults(func=cmd_sql)

    _register_simulate(sub)
    analytics = sub.add_parser("analytics", help="the DuckDB analytics projection").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    run = analytics.add_parser(
        "run", parents=[COMMON, SERVING, _db_options(window=False)], help="follow the stream"
    )
    run.add_argument("--batch", type=int, default=BATCH, help=f"events per transaction (default {BATCH})")
    run.set_defaults(func=cmd_run)
    rb = analytics.add_parser(
        "rebuild",
        parents=[COMMON, _db_options(window=False)],
        help="rebuild from sequence 1 (stop `up` first)",
    )
    rb.set_defaults(func=cmd_rebuild)


def _db_options(*, window: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--db", type=Path, help="DuckDB file (default <data-dir>/analytics.duckdb)")
    if window:
        p.add_argument("--since", help="start: ISO time (UTC), an age like 24h, 7d, or now")
        p.add_argument(
            "--until",
            help="end and as-of (state) time, same forms (default: now; the newest event if it is later)",
        )
    return p


def _whatif_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    same = "(default: as recorded)"
    p.add_argument("--grace", help=f"candidate grace window, e.g. 0, 5s, 2m {same}")
    p.add_argument("--policy", choices=["family", "user"], help=f"candidate reuse policy {same}")
    p.add_argument("--idle", help=f"candidate idle timeout, e.g. 30m, 1d {same}")
    p.add_argument("--absolute", help=f"candidate absolute session lifetime, e.g. 12h, 30d {same}")
    return p


def whatif_from(args: argparse.Namespace) -> WhatIf | None:
    """The candidate policy of ``report whatif`` / ``report html`` (None: no what-if asked)."""
    asked = any(getattr(args, n) is not None for n in ("grace", "policy", "idle", "absolute"))
    if getattr(args, "name", None) != "whatif" and not asked:
        return None
    return WhatIf(
        grace=_duration(args.grace, "--grace", zero=True),
        reuse=args.policy,
        idle_ttl=_duration(args.idle, "--idle"),
        absolute_ttl=_duration(args.absolute, "--absolute"),
    )


def _duration(text: str | None, flag: str, *, zero: bool = False) -> timedelta | None:
    if text is None:
        return None
    value = parse_duration(text)
    if not isinstance(value, timedelta) or value < timedelta(0) or (value == timedelta(0) and not zero):
        raise BadRequest(f"bad {flag} {text!r}: a duration like 30s, 15m, 7d{' or 0' if zero else ''}")
    return value


def _at_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--at", help=f"time travel: ISO time (UTC), an age like 2h, or now; {what}")


def _register_simulate(sub: Any) -> None:
    sim = sub.add_parser(
        "simulate", parents=[COMMON], help="drive the ledger with simulated users; print the ground truth"
    )
    sim.add_argument("--users", type=int, default=20, help="simulated users")
    sim.add_argument("--minutes", type=float, default=30.0, help="simulated minutes (run in seconds)")
    sim.add_argument("--replay-rate", type=float, default=0.1, help="share of sessions attacked")
    sim.add_argument("--seed", type=int, default=1, help="random seed (same seed, same traffic)")
    sim.set_defaults(func=cmd_simulate)


def db_path(args: argparse.Namespace) -> Path:
    return args.db if args.db is not None else db_path_for(settings_from(args))


def reader(args: argparse.Namespace) -> tuple[duckdb.DuckDBPyConnection, str]:
    try:
        return open_reader(db_path(args))
    except FileNotFoundError as err:
        raise Unavailable(str(err)) from None


def cmd_report(args: argparse.Namespace) -> None:
    conn, source = reader(args)
    with conn:
        tables = build(conn, args.name, _window(conn, args))
    print(render(tables, "json" if args.json else args.format))
    note_source(source)


def _window(conn: duckdb.DuckDBPyConnection, args: argparse.Namespace) -> Any:
    try:
        w = window(conn, args.since, args.until, at=getattr(args, "at", None))
    except ValueError as err:
        raise BadRequest(f"bad --since/--until/--at: {err}") from None
    return replace(w, whatif=whatif_from(args)) if hasattr(args, "grace") else w


def cmd_html(args: argparse.Namespace) -> None:
    conn, source = reader(args)
    with conn:
        page = render_html(conn, _window(conn, args), source)
    args.output.write_text(page, encoding="utf-8")
    print(f"wrote {args.output} ({len(page)} bytes)")


def cmd_sql(args: argparse.Namespace) -> None:
    conn, source = reader(args)
    with conn:
        try:
            table = query(conn, "result", args.query)
        except duckdb.Error as err:
            raise BadRequest(f"query failed: {str(err).splitlines()[0]}") from None
    print(render([table], "json" if args.json else args.format))
    note_source(source)


def note_source(source: str) -> None:
    """Readers may be a few seconds stale while ``up`` writes: say so, on stderr."""
    if source == "snapshot":
        print("(from the snapshot published by the running projection)", file=sys.stderr)


def cmd_simulate(args: argparse.Namespace) -> None:
    if args.users < 1 or args.minutes <= 0 or not 0 <= args.replay_rate <= 1:
        raise BadRequest("need --users >= 1, --minutes > 0 and 0 <= --replay-rate <= 1")
    cfg = SimConfig(users=args.users, minutes=args.minutes, replay_rate=args.replay_rate, seed=args.seed)
    truth = asyncio.run(simulate(settings_from(args, "ledger"), cfg))
    print(json.dumps(truth, indent=None if args.json else 2))
    if not args.json:
        print(
            f"\ncheck it: session-ledger report summary --since {truth['since']} --until {truth['until']}",
            file=sys.stderr,
        )


def cmd_run(args: argparse.Namespace) -> None:
    settings, path = settings_from(args, "projector"), db_path(args)
    if args.batch < 1:
        raise BadRequest("--batch must be 1 or more")
    db = asyncio.run(take_file(path, settings))  # a clear error now if another process holds it
    runner = functools.partial(run_analytics, db=db, batch=args.batch)
    run_one(Component("analytics", runner, f"DuckDB analytics {path}"), settings)


async def take_file(path: Path, settings: Settings) -> AnalyticsDB:
    """The writer, kept open from here on: closing it to reopen later let a reader take it."""
    try:
        return await open_writer(path, grace_window_s=settings.grace_window.total_seconds())
    except duckdb.IOException as err:
        raise Unavailable(f"{path} is held by another process (is `session-ledger up` running?)") from err


def cmd_rebuild(args: argparse.Namespace) -> None:
    settings = settings_from(args, "projector")
    path = db_path(args)
    result = asyncio.run(rebuild_anywhere(settings, path))
    data = {"projection": "analytics", "db": str(path), **result}
    human = f"rebuilt analytics ({result['where']}): {result['rows']} rows, {result['seconds']:.2f}s, {path}"
    print(json.dumps(data) if args.json else human)


async def rebuild_analytics(nc: NATS, settings: Settings, progress: Any) -> RebuildResult:
    """``session-ledger projections rebuild analytics``: the same rebuild, in the projections table."""
    path = db_path_for(settings)
    result = await rebuild_anywhere(settings, path, quiet=True)
    last = await analytics_checkpoint(nc, settings) or 0
    progress(last, last)
    return RebuildResult(str(path), None, result["rows"], result["rows"], last, result["seconds"])


async def analytics_checkpoint(nc: NATS, settings: Settings) -> int | None:
    """Adapter for ``session-ledger projections status``: read from the snapshot if need be."""
    try:
        conn, _ = open_reader(db_path_for(settings))
    except (FileNotFoundError, duckdb.Error):
        return None
    with conn:
        row = conn.execute("SELECT last_seq FROM checkpoints WHERE stream = ?", [settings.stream]).fetchone()
    return None if row is None else int(row[0])


__all__ = ["Table", "analytics_checkpoint", "rebuild_analytics", "register"]
