"""Analyst reports over the analytics views: each a list of titled tables, rendered as
text, JSON or CSV, plus one self-contained HTML page with inline SVG charts.

Every report takes a window: sessions that *started* in it (evaluated as of ``until``,
so still-active sessions are censored, not dropped), incidents *detected* in it,
revocations *requested* in it. ``until`` defaults to now (or to the newest event, when
simulated traffic lies in the future).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb

from ledger.domain.decide import ReusePolicy
from projections.analytics.whatif import EVENT_COLUMNS, Candidate, compare, requests_from

REPORTS = ("summary", "replay", "theft", "sessions", "expiration", "usage", "revocation")
FAR_PAST = datetime(1970, 1, 1)
_RELATIVE = re.compile(r"^(\d+)([mhd])$")


@dataclass(frozen=True)
class Table:
    title: str
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime
    at: datetime | None = None  # time travel: the sessions report lists what was valid then
    whatif: WhatIf | None = None  # policy dry-run: the candidate's settings (None: as recorded)


@dataclass(frozen=True)
class WhatIf:
    grace: timedelta | None = None
    reuse: str | None = None
    idle_ttl: timedelta | None = None
    absolute_ttl: timedelta | None = None


def parse_time(text: str, *, now: datetime) -> datetime:
    """``now``, an ISO date/time (UTC if no offset) or a relative age like ``30m``, ``24h``, ``7d``."""
    if text.strip().lower() == "now":
        return now.astimezone(UTC).replace(tzinfo=None)
    m = _RELATIVE.fullmatch(text.strip())
    if m:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[m[2]]
        return (now - timedelta(**{unit: int(m[1])})).replace(tzinfo=None)
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def window(
    conn: duckdb.DuckDBPyConnection,
    since: str | None,
    until: str | None,
    *,
    at: str | None = None,
    now: datetime | None = None,
) -> Window:
    """The report window; ``until`` (the state time) defaults to ``default_until``."""
    now = now or datetime.now(UTC)
    w = Window(
        since=parse_time(since, now=now) if since else FAR_PAST,
        until=parse_time(until, now=now) if until else default_until(conn, now),
        at=parse_time(at, now=now) if at else None,
    )
    if w.since > w.until:
        raise ValueError(f"--since {w.since.isoformat()} is later than --until {w.until.isoformat()}")
    return w


def default_until(conn: duckdb.DuckDBPyConnection, now: datetime) -> datetime:
    """Now: after traffic stops, sessions die as time goes on. The newest event instead when it
    lies in the future (the simulator's clock runs ahead), so a fresh simulation is all in."""
    row = conn.execute("SELECT as_of FROM horizon").fetchone()
    plain_now = now.astimezone(UTC).replace(tzinfo=None)
    return max(plain_now, row[0]) if row and row[0] is not None else plain_now


def query(conn: duckdb.DuckDBPyConnection, title: str, sql: str, params: list[Any] | None = None) -> Table:
    cur = conn.execute(sql, params or [])
    columns = [d[0] for d in cur.description or []]
    return Table(title, columns, [tuple(r) for r in cur.fetchall()])


def summary(conn: duckdb.DuckDBPyConnection, w: Window) -> list[Table]:
    """The headline figures, each defined as in its view or macro, but computed in one pass
    over ``sessions_at`` (the macros would fold the sessions once per figure) and straight
    from the typed event columns for incidents and revocations."""
    figures = conn.execute(_SUMMARY, [w.since, w.until]).fetchone()
    names = [
        "events", "sessions_started", "sessions_active", "sessions_revoked", "sessions_reuse",
        "sessions_user_revoked", "sessions_idle_expired", "sessions_absolute_expired", "rotations",
        "replay_incidents", "replay_users", "repeat_offenders", "session_revocations", "user_revocations",
        "tokens_issued", "tokens_expired_unused", "expiration_rate", "rotations_per_session_day",
        "duration_p50_s", "duration_p90_s", "duration_p99_s", "revocation_commit_p50_ms",
        "revocation_applied_p50_ms", "receipts",
    ]  # fmt: skip
    values = list(figures or [None] * len(names))
    rows = [("since", w.since), ("until", w.until), *zip(names, values, strict=True)]
    return [Table("summary", ["figure", "value"], rows)]


# Same definitions as sessions_at / token_expiration_at / refresh_usage_at /
# session_durations_at (the all-clients row) / replay_incidents / revocations /
# revocation_latency_at, restricted to what the summary shows.
_SUMMARY = """
WITH s AS MATERIALIZED (
    SELECT end_kind, censored, rotations, last_generation, duration_us
    FROM sessions_at($2) WHERE started_at >= $1),
agg AS (
    SELECT count(*) AS started, count(*) FILTER (WHERE censored) AS active,
           count(*) FILTER (WHERE end_kind = 'revoked') AS revoked,
           count(*) FILTER (WHERE end_kind = 'reuse') AS reuse,
           count(*) FILTER (WHERE end_kind = 'user_revoked') AS user_revoked,
           count(*) FILTER (WHERE end_kind = 'idle_expired') AS idle_expired,
           count(*) FILTER (WHERE end_kind = 'absolute_expired') AS absolute_expired,
           coalesce(sum(rotations), 0) AS rotations, coalesce(sum(last_generation + 1), 0) AS tokens_issued,
           count(*) FILTER (WHERE end_kind IN ('idle_expired', 'absolute_expired')) AS tokens_expired_unused,
           tokens_expired_unused / nullif(tokens_issued, 0) AS expiration_rate,
           sum(rotations) / nullif(sum(duration_us) / 86400e6, 0) AS rotations_per_session_day
    FROM s),
t AS (SELECT duration_us / 1e6 AS d, count(*) FILTER (WHERE NOT censored) AS deaths, count(*) AS n
      FROM s GROUP BY ALL),
r AS (SELECT *, sum(n) OVER (ORDER BY d DESC) AS at_risk FROM t),
km AS (SELECT d, product(1 - deaths / at_risk) OVER (ORDER BY d) AS survival FROM r WHERE deaths > 0),
q AS (SELECT min(d) FILTER (WHERE survival <= 0.5 + 1e-12) AS p50_s,
             min(d) FILTER (WHERE survival <= 0.1 + 1e-12) AS p90_s,
             min(d) FILTER (WHERE survival <= 0.01 + 1e-12) AS p99_s FROM km),
ri AS (SELECT count(*) AS incidents, count(DISTINCT sub) AS users,
              (SELECT count(*) FROM (SELECT sub FROM events WHERE type = 'ReuseDetected'
                                     AND occurred_at >= $1 AND occurred_at <= $2
                                     GROUP BY sub HAVING count(*) > 1)) AS repeat
       FROM events WHERE type = 'ReuseDetected' AND occurred_at >= $1 AND occurred_at <= $2),
rv AS (SELECT seq, event_id, type, stream_time,
              (epoch_us(occurred_at) - epoch_us(coalesce(requested_at, occurred_at))) / 1000 AS decide_ms,
              (epoch_us(stream_time) - epoch_us(occurred_at)) / 1000 AS commit_ms,
              abs(epoch_us(stream_time) - epoch_us(occurred_at)) > 60000000 AS clock_skew
       FROM events
       WHERE type IN ('SessionRevoked', 'UserSessionsRevoked', 'SigningKeyRetired')
         AND coalesce(requested_at, occurred_at) >= $1 AND coalesce(requested_at, occurred_at) <= $2),
rr AS (SELECT (min(epoch_us(r.applied_at)) - epoch_us(rv.stream_time)) / 1000 AS apply_ms
       FROM rv JOIN receipts r ON r.event_id = rv.event_id
       GROUP BY rv.seq, rv.event_id, rv.stream_time, r.verifier),
rva AS (SELECT count(*) FILTER (WHERE type = 'SessionRevoked') AS sessions,
               count(*) FILTER (WHERE type = 'UserSessionsRevoked') AS users,
               quantile_cont(decide_ms + commit_ms, 0.5) FILTER (WHERE NOT clock_skew) AS commit_p50
        FROM rv)
SELECT (SELECT count(*) FROM events WHERE occurred_at >= $1 AND occurred_at <= $2),
       agg.started, agg.active, agg.revoked, agg.reuse, agg.user_revoked, agg.idle_expired,
       agg.absolute_expired, agg.rotations, ri.incidents, ri.users, ri.repeat, rva.sessions, rva.users,
       agg.tokens_issued, agg.tokens_expired_unused, agg.expiration_rate, agg.rotations_per_session_day,
       q.p50_s, q.p90_s, q.p99_s, rva.commit_p50, (SELECT quantile_cont(apply_ms, 0.5) FROM rr),
       (SELECT count(*) FROM rv JOIN receipts r ON r.event_id = rv.event_id)
FROM agg, q, ri, rva
"""


def replay(conn: duckdb.DuckDBPyConnection, w: Window) -> list[Table]:
    p = [w.since, w.until]
    span = conn.execute(
        "SELECT min(detected_at), max(detected_at) FROM replay_incidents WHERE detected_at BETWEEN ? AND ?", p
    ).fetchone()
    bucket = _bucket(span)
    return [  # a stable title (JSON key); the bucket width is a column
        query(conn, "incidents over time", _OVER_TIME.format(bucket=bucket), p),
        query(conn, "by user", "SELECT * FROM replay_by_user_at(?, ?)", p),
        query(conn, "by client", "SELECT * FROM replay_by_client_at(?, ?)", p),
        query(
            conn,
            "incidents",
            """SELECT seq, detected_at, sub, client_id, sid, presented_generation, current_generation,
                      generations_behind, seconds_since_superseded, within_grace, revocation_kind,
                      user_incident_no
               FROM replay_incidents WHERE detected_at BETWEEN ? AND ? ORDER BY seq""",
            p,
        ),
    ]


_OVER_TIME = """
SELECT time_bucket(INTERVAL '{bucket}', detected_at) AS period, '{bucket}' AS bucket,
       count(*) AS incidents, count(DISTINCT sub) AS users
FROM replay_incidents WHERE detected_at BETWEEN ? AND ? GROUP BY ALL ORDER BY period
"""


def _bucket(span: tuple[Any, ...] | None) -> str:
    """A bucket that gives a readable number of bars for the incidents' time span."""
    if not span or span[0] is None:
        return "1 day"
    seconds = (span[1] - span[0]).total_seconds()
    for limit, bucket in ((3600, "5 minutes"), (86400, "1 hour"), (86400 * 60, "1 day")):
        if seconds <= limit:
            return bucket
    return "7 days"


def theft(conn: duckdb.DuckDBPyConnection, w: Window) -> list[Table]:
    """Race or theft: each reuse incident's evidence and verdict, and the likely thefts per user."""
    p = [w.since, w.until]
    return [
        query(conn, "likely thefts per user",
              "SELECT * FROM thefts_by_user_at(?, ?) ORDER BY likely_thefts DESC, incidents DESC, sub", p),
        query(conn, "verdicts",
              "SELECT verdict, count(*) AS incidents, count(DISTINCT sub) AS users "
              "FROM reuse_verdicts_at(?, ?) GROUP BY ALL ORDER BY verdict", p),
        query(conn, "incidents: race or theft", "SELECT * FROM reuse_verdicts_at(?, ?) ORDER BY seq", p),
    ]  # fmt: skip


def whatif(conn: duckdb.DuckDBPyConnection, w: Window) -> list[Table]:
    """Policy dry-run: the window's recorded requests through ``decide`` under the candidate
    policy, beside the same replay under the recorded one (``projections.analytics.whatif``)."""
    rows = conn.execute(_WHATIF_EVENTS, [w.since, w.until]).fetchall()
    requests = requests_from(dict(zip(EVENT_COLUMNS, row, strict=True)) for row in rows)
    actual = recorded_policy(conn)
    wanted = w.whatif or WhatIf()
    candidate = Candidate(
        grace=actual.grace if wanted.grace is None else wanted.grace,
        reuse=actual.reuse if wanted.reuse is None else ReusePolicy(wanted.reuse),
        idle_ttl=wanted.idle_ttl,
        absolute_ttl=wanted.absolute_ttl,
    )
    policies = [
        ("grace_window_s", actual.grace.total_seconds(), candidate.grace.total_seconds()),
        ("reuse_policy", actual.reuse.value, candidate.reuse.value),
        ("idle_ttl_s", "as recorded", _seconds(candidate.idle_ttl)),
        ("absolute_ttl_s", "as recorded", _seconds(candidate.absolute_ttl)),
        ("requests_replayed", len(requests), len(requests)),
    ]
    return [
        Table("policies", ["setting", "actual", "candidate"], policies),
        Table("what-if", ["figure", "actual", "candidate", "change"], compare(requests, actual, candidate)),
    ]


def recorded_policy(conn: duckdb.DuckDBPyConnection) -> Candidate:
    """The grace window the projection runs with and the reuse policy of the latest incident."""
    row = conn.execute(_RECORDED_POLICY).fetchone()
    grace, policy = row or (30.0, "family")
    return Candidate(grace=timedelta(seconds=float(grace)), reuse=ReusePolicy(policy))


def _seconds(value: timedelta | None) -> Any:
    return "as recorded" if value is None else value.total_seconds()


_RECORDED_POLICY = """
SELECT coalesce((SELECT max(TRY_CAST(value AS DOUBLE)) FROM analytics_meta WHERE key = 'grace_window_s'), 30),
       coalesce((SELECT arg_max_null(policy, seq) FROM events WHERE type = 'ReuseDetected'), 'family')
"""

# The window's sessions (started in it) with their family events, and the window's revoke-alls.
_WHATIF_EVENTS = f"""
SELECT {", ".join(EVENT_COLUMNS)} FROM events
WHERE occurred_at >= $1 AND occurred_at <= $2
  AND (type = 'UserSessionsRevoked'
       OR sid IN (SELECT sid FROM events
                  WHERE type = 'SessionStarted' AND occurred_at >= $1 AND occurred_at <= $2))
  AND type IN ('SessionStarted', 'TokenRotated', 'ReuseDetected', 'SessionRevoked', 'UserSessionsRevoked')
ORDER BY seq
"""  # noqa: S608


def sessions(conn: duckdb.DuckDBPyConnection, w: Window) -> list[Table]:
    if w.at is not None:
        return valid_at(conn, w.at)
    p = [w.since, w.until]
    return [
        query(conn, "durations (Kaplan-Meier; active sessions censored)", _DURATIONS, p),
        query(
            conn, "duration histogram", "SELECT bucket, ended, censored FROM session_histogram_at(?, ?)", p
        ),
        query(
            conn,
            "how sessions ended",
            """SELECT coalesce(end_kind, 'active') AS outcome, coalesce(end_reason, '') AS reason,
                      count(*) AS sessions
               FROM sessions_at($2) WHERE started_at >= $1 GROUP BY ALL ORDER BY sessions DESC, outcome""",
            p,
        ),
    ]


def valid_at(conn: duckdb.DuckDBPyConnection, at: datetime) -> list[Table]:
    """Time travel: the sessions, users and clients (devices) valid at ``at``, from the log."""
    return [
        query(
            conn, "valid sessions", "SELECT * FROM valid_sessions_at(?) ORDER BY sub, started_at, sid", [at]
        ),
        query(conn, "valid users", "SELECT * FROM valid_users_at(?) ORDER BY sub", [at]),
        query(
            conn, "valid devices (by client id)", "SELECT * FROM valid_devices_at(?) ORDER BY client_id", [at]
        ),
    ]


_DURATIONS = """
SELECT coalesce(client_id, '(all)') AS client_id, sessions, ended, censored,
       round(p50_s, 3) AS p50_s, round(p90_s, 3) AS p90_s, round(p99_s, 3) AS p99_s,
       round(mean_ended_s, 3) AS mean_ended_s, round(max_observed_s, 3) AS max_observed_s
FROM session_durations_at(?, ?)
"""


_ALL_CLIENTS = "SELECT coalesce(client_id, '(all)') AS client_id, * EXCLUDE (client_id) FROM {macro}(?, ?)"


def expiration(conn: duckdb.DuckDBPyConnection, w: Window) -> list[Table]:
    sql = _ALL_CLIENTS.format(macro="token_expiration_at")
    return [query(conn, "refresh-token expiration (issued tokens never used)", sql, [w.since, w.until])]


def usage(conn: duckdb.DuckDBPyConnection, w: Window) -> list[Table]:
    sql = _ALL_CLIENTS.format(macro="refresh_usage_at")
    return [query(conn, "refresh-token usage (rotations per session-day)", sql, [w.since, w.until])]


def revocation(conn: duckdb.DuckDBPyConnection, w: Window) -> list[Table]:
    p = [w.since, w.until]
    return [
        query(conn, "latency (ms; cross-clock stages skip rows with clock skew)", _LATENCY, p),
        query(
            conn,
            "revocations",
            """SELECT kind, reason, count(*) AS revocations, count(*) FILTER (WHERE clock_skew) AS clock_skew,
                      sum(verifiers_applied) AS receipts
               FROM revocations WHERE requested_at BETWEEN ? AND ? GROUP BY ALL ORDER BY revocations DESC""",
            p,
        ),
        query(
            conn,
            "per verifier",
            """SELECT rr.verifier, count(*) AS applied,
                      round(quantile_cont(rr.apply_ms, 0.5), 3) AS p50_ms,
                      round(quantile_cont(rr.apply_ms, 0.99), 3) AS p99_ms,
                      round(max(rr.apply_ms), 3) AS max_ms
               FROM revocation_receipts rr JOIN revocations r USING (seq)
               WHERE r.requested_at BETWEEN ? AND ? GROUP BY ALL ORDER BY rr.verifier""",
            p,
        ),
    ]


_LATENCY = """
SELECT stage, n, round(p50_ms, 3) AS p50_ms, round(p90_ms, 3) AS p90_ms, round(p99_ms, 3) AS p99_ms,
       round(max_ms, 3) AS max_ms
FROM revocation_latency_at(?, ?)
"""

BUILDERS: dict[str, Callable[[duckdb.DuckDBPyConnection, Window], list[Table]]] = {
    "summary": summary,
    "replay": replay,
    "theft": theft,
    "whatif": whatif,
    "sessions": sessions,
    "expiration": expiration,
    "usage": usage,
    "revocation": revocation,
}


def build(conn: duckdb.DuckDBPyConnection, name: str, w: Window) -> list[Table]:
    return BUILDERS[name](conn, w)


def plain(value: Any) -> Any:
    """JSON/CSV-friendly scalars: ISO times, floats as they are, lists kept."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def render(tables: list[Table], fmt: str) -> str:
    if fmt == "json":
        data = {t.title: [{k: plain(v) for k, v in r.items()} for r in t.records()] for t in tables}
        return json.dumps(data, indent=2, sort_keys=False)
    if fmt == "csv":
        return "\n".join(_csv(t) for t in tables)
    return "\n\n".join(_text(t) for t in tables)


def _csv(table: Table) -> str:
    buf = io.StringIO()
    buf.write(f"# {table.title}\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.columns)
    writer.writerows([[cell_text(v) for v in row] for row in table.rows])
    return buf.getvalue()


def cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e15 else str(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, list):
        return ",".join(cell_text(v) for v in value)
    return str(value)


def _text(table: Table) -> str:
    cells = [[cell_text(v) for v in row] for row in table.rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(table.columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(table.columns, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([f"== {table.title}", line, "-" * len(line), *(body or ["(no rows)"])])
