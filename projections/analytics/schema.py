"""The analytics schema: raw tables loaded from the streams, and the views analysts query.

Tables hold what the streams hold (one row per event / receipt, typed columns plus
the JSON); everything else is a view or a table macro over them, so a rebuild from
sequence 1 reproduces every figure exactly (invariant 6). All times are UTC
``TIMESTAMP``s. The ``*_at(since, until)`` macros evaluate state *as of* ``until``:
events after it are ignored and sessions still alive then are censored, not dropped.
"""

from __future__ import annotations

import logging
import time

import duckdb

log = logging.getLogger("projections.analytics.schema")

SCHEMA_VERSION = "5"  # 2: session_facts and user_cuts, folded by ingest; 3: refused rotations left out;
# 4: user_cuts.keep_sid ("sign out the other devices" keeps one session alive); 5: a fact taken
# from "the row with the smallest seq" is that row's even when NULL (arg_min skipped NULLs, so a
# full fold and a batched one could disagree on an event that lacks occurred_at)
REFOLD_FACTS_FROM = ("1", "2", "3", "4")  # session_facts of these versions are folded again on open
REFOLD_CUTS_FROM = ("1", "2", "3")  # user_cuts of these versions lack keep_sid: folded again

TABLES = """
CREATE TABLE IF NOT EXISTS events (
    seq UBIGINT PRIMARY KEY,          -- LEDGER stream sequence: the global order
    subject VARCHAR NOT NULL,
    stream_time TIMESTAMP,            -- when JetStream stored it (server clock)
    type VARCHAR NOT NULL,
    schema_version INTEGER,
    event_id VARCHAR,
    occurred_at TIMESTAMP,            -- the ledger service's clock
    sid VARCHAR,
    sub VARCHAR,
    generation BIGINT,
    client_id VARCHAR,
    scopes VARCHAR[],
    idle_ttl_s BIGINT,
    absolute_ttl_s BIGINT,
    reason VARCHAR,
    requested_at TIMESTAMP,
    not_before TIMESTAMP,
    presented_generation BIGINT,
    superseded_at TIMESTAMP,
    policy VARCHAR,
    kid VARCHAR,
    alg VARCHAR,
    data JSON                         -- the event as stored (ids and keyed hashes only)
);
CREATE TABLE IF NOT EXISTS receipts (
    seq UBIGINT PRIMARY KEY,          -- LEDGER_RECEIPTS stream sequence
    subject VARCHAR NOT NULL,
    stream_time TIMESTAMP,
    verifier VARCHAR,
    event_id VARCHAR,                 -- the revocation event it answers
    revoke_seq UBIGINT,
    kind VARCHAR,
    sid VARCHAR,
    sub VARCHAR,
    kid VARCHAR,
    applied_at TIMESTAMP,             -- the verifier's clock
    data JSON
);
CREATE TABLE IF NOT EXISTS session_facts (  -- one row per sid: a fold of events, kept by ingest
    sid VARCHAR PRIMARY KEY,
    first_seq UBIGINT NOT NULL,       -- the family's first event of any type
    starts BIGINT NOT NULL,           -- SessionStarted events (1 in a valid ledger)
    start_seq UBIGINT,                -- the first SessionStarted and its facts
    sub VARCHAR,
    client_id VARCHAR,
    scopes VARCHAR[],
    started_at TIMESTAMP,
    idle_ttl_s BIGINT,
    absolute_ttl_s BIGINT,
    rotations BIGINT NOT NULL,        -- TokenRotated events the ledger accepted (refused: see the fold)
    last_generation BIGINT,
    last_rotation_at TIMESTAMP,
    end_seq UBIGINT,                  -- the first SessionRevoked / ReuseDetected
    end_at TIMESTAMP,
    end_type VARCHAR,
    end_reason VARCHAR,
    last_event_at TIMESTAMP NOT NULL  -- newest occurred_at of the family ('infinity' if one lacks it)
);
CREATE TABLE IF NOT EXISTS user_cuts (  -- the UserSessionsRevoked events, kept by ingest (a few rows)
    seq UBIGINT NOT NULL,
    sub VARCHAR,
    occurred_at TIMESTAMP,
    reason VARCHAR,
    keep_sid VARCHAR                  -- "sign out the other devices": the one session not cut
);
-- A fold keeps the row with the smaller seq: is seq a (not NULL) before seq b (NULL = none yet)?
CREATE OR REPLACE MACRO earlier(a, b) AS coalesce(a < b, a IS NOT NULL AND b IS NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    stream VARCHAR PRIMARY KEY,
    last_seq UBIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS analytics_meta (
    key VARCHAR PRIMARY KEY,
    value VARCHAR
);
"""

# The typed columns of each table, in order: (JSON field, SQL type or None for VARCHAR).
EVENT_FIELDS = (
    ("type", None), ("schema_version", "INTEGER"), ("event_id", None), ("occurred_at", "TIMESTAMP"),
    ("sid", None), ("sub", None), ("generation", "BIGINT"), ("client_id", None), ("scopes", "VARCHAR[]"),
    ("idle_ttl_s", "BIGINT"), ("absolute_ttl_s", "BIGINT"), ("reason", None), ("requested_at", "TIMESTAMP"),
    ("not_before", "TIMESTAMP"), ("presented_generation", "BIGINT"), ("superseded_at", "TIMESTAMP"),
    ("policy", None), ("kid", None), ("alg", None),
)  # fmt: skip
RECEIPT_FIELDS = (
    ("verifier", None), ("event_id", None), ("revoke_seq", "UBIGINT"), ("kind", None), ("sid", None),
    ("sub", None), ("kid", None), ("applied_at", "TIMESTAMP"),
)  # fmt: skip


def load_select(fields: tuple[tuple[str, str | None], ...], source: str) -> str:
    """SELECT the table's columns from staged lines ``{"seq","subject","ts_us","e"}``.

    One ``json_extract_string`` with every path parses each event once (a ``->>`` per
    column would parse it once per column: measured 1.8x slower). Unknown or missing
    fields become NULL; a payload without ``type`` is typed ``_malformed``.
    """
    paths = ", ".join(f"'$.{name}'" for name, _ in fields)
    cols = []
    for i, (name, sql_type) in enumerate(fields, start=1):
        value = f"v[{i}]"
        if sql_type == "VARCHAR[]":
            value = f"TRY_CAST({value}::JSON AS VARCHAR[])"
        elif sql_type is not None:
            value = f"TRY_CAST({value} AS {sql_type})"
        cols.append(f"coalesce({value}, '_malformed')" if name == "type" else value)
    return (
        f"SELECT seq, subject, make_timestamp(ts_us), {', '.join(cols)}, e "  # noqa: S608
        f"FROM (SELECT *, json_extract_string(e, [{paths}]) AS v FROM {source})"
    )


STAGE_COLUMNS = "{seq: 'UBIGINT', subject: 'VARCHAR', ts_us: 'BIGINT', e: 'JSON'}"

# Folds the events with seq > $1 into session_facts, in O(batch): every statement reads the
# batch, the few rows of session_facts its sessions already have, or user_cuts. Every merge is
# associative (sums, max/min, "the row with the smallest seq wins"), so any batching gives the
# same table: the live file and a rebuild from sequence 1 hold identical rows (invariant 6).
# DuckDB plans INSERT ... ON CONFLICT DO UPDATE as a MERGE that scans the whole target
# (measured: 1.0 s per 20,000-event batch at 10M events, 0.3 s at 1M), so the fold finds the
# existing rows once (fold_old, by sid), deletes them by rowid (the scan skips the row groups
# without one) and inserts them merged, with the new sessions, in one plain INSERT.
FOLD_BATCH = """
CREATE OR REPLACE TEMP TABLE fold_b AS
SELECT seq, sid, type, sub, client_id, scopes, occurred_at, idle_ttl_s, absolute_ttl_s, generation, reason
FROM events WHERE seq > $1 AND sid IS NOT NULL
"""
FOLD_OLD = """
CREATE OR REPLACE TEMP TABLE fold_old AS
SELECT rowid AS rid, sid, start_seq, sub FROM session_facts WHERE sid IN (SELECT sid FROM fold_b)
"""
# A rotation appended after a revoke-all that its session predates was refused: the service's
# post-commit cut check answered session_revoked and the edges ignore it (its ssq is below the
# cut). Its session's first start and every cut before it have lower seqs, so they are folded
# already (fold_old) or are in this batch (user_cuts is folded first): the same for any batching.
FOLD_PARTIAL = """
CREATE OR REPLACE TEMP TABLE fold_p AS
WITH b AS (FROM fold_b),
starts AS (SELECT sid, start_seq, sub FROM fold_old
           WHERE start_seq IS NOT NULL AND sid IN (SELECT sid FROM b WHERE type = 'TokenRotated')
           UNION ALL SELECT sid, seq, sub FROM b WHERE type = 'SessionStarted'),
first_start AS (SELECT sid, min(start_seq) AS start_seq, arg_min_null(sub, start_seq) AS sub
                FROM starts GROUP BY sid),
refused AS (SELECT r.seq FROM b r JOIN first_start f USING (sid)
            WHERE r.type = 'TokenRotated'
              AND EXISTS (SELECT 1 FROM user_cuts u
                          WHERE u.sub = f.sub AND u.seq > f.start_seq AND u.seq < r.seq
                            AND u.keep_sid IS DISTINCT FROM r.sid)),
e AS (SELECT b.*, b.type = 'TokenRotated' AND x.seq IS NULL AS rotated
      FROM b LEFT JOIN refused x USING (seq))
SELECT sid, min(seq) AS first_seq, count(*) FILTER (WHERE type = 'SessionStarted') AS starts,
       min(seq) FILTER (WHERE type = 'SessionStarted') AS start_seq,
       arg_min_null(sub, seq) FILTER (WHERE type = 'SessionStarted') AS sub,
       arg_min_null(client_id, seq) FILTER (WHERE type = 'SessionStarted') AS client_id,
       arg_min_null(scopes, seq) FILTER (WHERE type = 'SessionStarted') AS scopes,
       arg_min_null(occurred_at, seq) FILTER (WHERE type = 'SessionStarted') AS started_at,
       arg_min_null(idle_ttl_s, seq) FILTER (WHERE type = 'SessionStarted') AS idle_ttl_s,
       arg_min_null(absolute_ttl_s, seq) FILTER (WHERE type = 'SessionStarted') AS absolute_ttl_s,
       count(*) FILTER (WHERE rotated) AS rotations,
       max(generation) FILTER (WHERE rotated) AS last_generation,
       max(occurred_at) FILTER (WHERE rotated) AS last_rotation_at,
       min(seq) FILTER (WHERE type IN ('SessionRevoked', 'ReuseDetected')) AS end_seq,
       arg_min_null(occurred_at, seq) FILTER (WHERE type IN ('SessionRevoked', 'ReuseDetected')) AS end_at,
       arg_min_null(type, seq) FILTER (WHERE type IN ('SessionRevoked', 'ReuseDetected')) AS end_type,
       arg_min_null(coalesce(reason, 'reuse'), seq) FILTER (WHERE type IN ('SessionRevoked', 'ReuseDetected'))
           AS end_reason,
       max(coalesce(occurred_at, 'infinity'::TIMESTAMP)) AS last_event_at
FROM e GROUP BY sid
"""
# The batch's part merged into each existing row (f), read by rowid before it is deleted.
FOLD_MERGED = """
CREATE OR REPLACE TEMP TABLE fold_m AS
SELECT f.sid, least(f.first_seq, p.first_seq) AS first_seq, f.starts + p.starts AS starts,
    CASE WHEN earlier(p.start_seq, f.start_seq) THEN p.start_seq ELSE f.start_seq END AS start_seq,
    CASE WHEN earlier(p.start_seq, f.start_seq) THEN p.sub ELSE f.sub END AS sub,
    CASE WHEN earlier(p.start_seq, f.start_seq) THEN p.client_id ELSE f.client_id END AS client_id,
    CASE WHEN earlier(p.start_seq, f.start_seq) THEN p.scopes ELSE f.scopes END AS scopes,
    CASE WHEN earlier(p.start_seq, f.start_seq) THEN p.started_at ELSE f.started_at END AS started_at,
    CASE WHEN earlier(p.start_seq, f.start_seq) THEN p.idle_ttl_s ELSE f.idle_ttl_s END AS idle_ttl_s,
    CASE WHEN earlier(p.start_seq, f.start_seq) THEN p.absolute_ttl_s ELSE f.absolute_ttl_s END
        AS absolute_ttl_s,
    f.rotations + p.rotations AS rotations,
    greatest(f.last_generation, p.last_generation) AS last_generation,
    greatest(f.last_rotation_at, p.last_rotation_at) AS last_rotation_at,
    CASE WHEN earlier(p.end_seq, f.end_seq) THEN p.end_seq ELSE f.end_seq END AS end_seq,
    CASE WHEN earlier(p.end_seq, f.end_seq) THEN p.end_at ELSE f.end_at END AS end_at,
    CASE WHEN earlier(p.end_seq, f.end_seq) THEN p.end_type ELSE f.end_type END AS end_type,
    CASE WHEN earlier(p.end_seq, f.end_seq) THEN p.end_reason ELSE f.end_reason END AS end_reason,
    greatest(f.last_event_at, p.last_event_at) AS last_event_at
FROM fold_old o JOIN fold_p p USING (sid) JOIN session_facts f ON f.rowid = o.rid
"""
FOLD_DELETE = "DELETE FROM session_facts WHERE rowid IN (SELECT rid FROM fold_old)"
FOLD_INSERT = """
INSERT INTO session_facts BY NAME
SELECT * FROM fold_p WHERE sid NOT IN (SELECT sid FROM fold_old)
UNION ALL BY NAME SELECT * FROM fold_m
"""
FOLD_SESSIONS = (FOLD_BATCH, FOLD_OLD, FOLD_PARTIAL, FOLD_MERGED, FOLD_DELETE, FOLD_INSERT)
FOLD_TEMP = ("fold_b", "fold_old", "fold_p", "fold_m")

# A small table of its own, not a filter on events: the planner then knows it is small
# and joins the sessions against it (building on the sessions costs 0.4 s at 10M events).
FOLD_USER_CUTS = """
INSERT INTO user_cuts
SELECT seq, sub, occurred_at, reason, json_extract_string(data, '$.keep_sid')
FROM events WHERE seq > $1 AND type = 'UserSessionsRevoked'
"""

SESSIONS = """
CREATE OR REPLACE VIEW horizon AS
SELECT max(occurred_at) AS as_of, max(seq) AS last_seq, count(*) AS events FROM events;

-- A session whose every event is at or before t, and that started once, is read from
-- session_facts as it stands; only the few others (still changing after t, or odd) are
-- folded from events here, exactly as session_facts would fold them. A user revocation
-- ends the sessions of its user started before it: each session meets the first one
-- after its start (at or before t), found as a seq range so that no GROUP BY is needed.
CREATE OR REPLACE MACRO sessions_at(t) AS TABLE
WITH kept AS (SELECT DISTINCT keep_sid AS sid FROM user_cuts WHERE keep_sid IS NOT NULL),
fast AS (  -- a session some cut kept is folded below: the seq ranges of the fast join ignore keep_sid
    SELECT sid, start_seq, sub, client_id, scopes, started_at, idle_ttl_s, absolute_ttl_s,
           rotations, last_generation, last_rotation_at, end_at AS f_at, end_type AS f_type,
           end_reason AS f_reason
    FROM session_facts WHERE starts = 1 AND last_event_at <= t AND sid NOT IN (SELECT sid FROM kept)),
slow AS (SELECT sid, first_seq, start_seq AS first_start_seq, sub AS first_sub FROM session_facts
         WHERE starts > 0
           AND NOT coalesce(starts = 1 AND last_event_at <= t AND sid NOT IN (SELECT sid FROM kept), false)),
ev AS (SELECT * FROM events
       WHERE occurred_at <= t AND seq >= (SELECT min(first_seq) FROM slow) AND sid IN (SELECT sid FROM slow)),
started AS (
    SELECT sid, seq AS start_seq, sub, client_id, scopes, occurred_at AS started_at,
           idle_ttl_s, absolute_ttl_s
    FROM ev WHERE type = 'SessionStarted'),
rot AS (  -- the rotations the ledger accepted: none after a cut its session predates (as in the fold)
    SELECT e.sid, count(*) AS rotations, max(e.generation) AS last_generation,
           max(e.occurred_at) AS last_rotation_at
    FROM ev e JOIN slow USING (sid)
    WHERE e.type = 'TokenRotated'
      AND NOT EXISTS (SELECT 1 FROM user_cuts u
                      WHERE u.sub = slow.first_sub AND u.seq > slow.first_start_seq AND u.seq < e.seq
                        AND u.keep_sid IS DISTINCT FROM e.sid)
    GROUP BY e.sid),
fend AS (
    SELECT sid, arg_min_null(occurred_at, seq) AS f_at, arg_min_null(type, seq) AS f_type,
           arg_min_null(coalesce(reason, 'reuse'), seq) AS f_reason
    FROM ev WHERE type IN ('SessionRevoked', 'ReuseDetected') GROUP BY sid),
uev AS (SELECT * FROM user_cuts WHERE occurred_at <= t),
cuts AS (  -- sessions of sub with start_seq in [after_seq, seq) meet this cut first
    SELECT sub, lag(seq, 1, 0) OVER w AS after_seq, seq, occurred_at AS u_at,
           first_value(reason IGNORE NULLS) OVER (w ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING)
               AS u_reason
    FROM uev WINDOW w AS (PARTITION BY sub ORDER BY seq)),
uend AS (
    SELECT s.sid, arg_min_null(u.occurred_at, u.seq) AS u_at, arg_min_null(u.reason, u.seq) AS u_reason
    FROM started s JOIN uev u ON u.sub = s.sub AND u.seq > s.start_seq AND u.keep_sid IS DISTINCT FROM s.sid
    GROUP BY s.sid),
folded AS (
    SELECT s.*, c.u_at, c.u_reason
    FROM fast s LEFT JOIN cuts c ON c.sub = s.sub AND s.start_seq >= c.after_seq AND s.start_seq < c.seq
    UNION ALL
    SELECT s.*, r.rotations, r.last_generation, r.last_rotation_at, f.f_at, f.f_type, f.f_reason,
           u.u_at, u.u_reason
    FROM started s LEFT JOIN rot r USING (sid) LEFT JOIN fend f USING (sid) LEFT JOIN uend u USING (sid)),
base AS (
    SELECT * EXCLUDE (rotations, last_generation, last_rotation_at),
           coalesce(rotations, 0) AS rotations, coalesce(last_generation, 0) AS last_generation,
           coalesce(last_rotation_at, started_at) AS last_activity_at,
           least(coalesce(last_rotation_at, started_at) + to_seconds(idle_ttl_s),
                 started_at + to_seconds(absolute_ttl_s)) AS expires_at,
           started_at + to_seconds(absolute_ttl_s) AS absolute_expires_at
    FROM folded),
ended AS (
    SELECT *, least(f_at, u_at, CASE WHEN expires_at <= t THEN expires_at END) AS ended_at FROM base)
SELECT sid, sub, client_id, scopes, start_seq, started_at, idle_ttl_s, absolute_ttl_s,
       rotations, last_generation, last_activity_at, expires_at, ended_at,
       CASE WHEN ended_at IS NULL THEN NULL
            WHEN ended_at = f_at THEN CASE WHEN f_type = 'ReuseDetected' OR f_reason = 'reuse'
                                           THEN 'reuse' ELSE 'revoked' END
            WHEN ended_at = u_at THEN 'user_revoked'
            WHEN expires_at = absolute_expires_at THEN 'absolute_expired'
            ELSE 'idle_expired' END AS end_kind,
       CASE WHEN ended_at IS NULL THEN NULL
            WHEN ended_at = f_at THEN f_reason
            WHEN ended_at = u_at THEN u_reason
            WHEN expires_at = absolute_expires_at THEN 'absolute_lifetime'
            ELSE 'idle_timeout' END AS end_reason,
       epoch(coalesce(ended_at, t) - started_at) AS duration_s,
       epoch_us(coalesce(ended_at, t)) - epoch_us(started_at) AS duration_us,
       ended_at IS NULL AS censored,
       t AS as_of
FROM ended;

CREATE OR REPLACE VIEW sessions AS SELECT * FROM sessions_at((SELECT as_of FROM horizon));
-- "now" for analysts (UTC; the newest event instead when simulated traffic lies in the future).
-- Not in `sessions`: a view that moves with the clock could not equal its rebuild.
CREATE OR REPLACE MACRO state_now() AS
    greatest(make_timestamp(epoch_us(now())), (SELECT as_of FROM horizon));
CREATE OR REPLACE VIEW sessions_now AS SELECT * FROM sessions_at(state_now());

-- Time travel: what was valid at t (started by t, not ended by t), from the log.
-- "Device" is the client id until events carry device context (the session-features issue);
-- then valid_devices_at groups by that instead.
CREATE OR REPLACE MACRO valid_sessions_at(t) AS TABLE
SELECT sid, sub, client_id, scopes, started_at, last_activity_at, expires_at, rotations, last_generation
FROM sessions_at(t) WHERE censored;
CREATE OR REPLACE MACRO valid_users_at(t) AS TABLE
SELECT sub, count(*) AS sessions,
       list(DISTINCT coalesce(client_id, '(none)') ORDER BY coalesce(client_id, '(none)')) AS clients,
       min(started_at) AS first_started_at, max(last_activity_at) AS last_activity_at
FROM valid_sessions_at(t) GROUP BY sub;
CREATE OR REPLACE MACRO valid_devices_at(t) AS TABLE
SELECT coalesce(client_id, '(none)') AS client_id, count(*) AS sessions, count(DISTINCT sub) AS users
FROM valid_sessions_at(t) GROUP BY ALL;
"""

REPLAY = """
CREATE OR REPLACE VIEW replay_incidents AS
WITH r AS (SELECT * FROM events WHERE type = 'ReuseDetected'),
s AS (SELECT sid, client_id, occurred_at AS session_started_at FROM events WHERE type = 'SessionStarted'),
fr AS (SELECT r.seq AS rseq, min(f.seq) AS rev_seq, arg_min_null(f.reason, f.seq) AS rev_reason,
              arg_min_null(f.occurred_at, f.seq) AS rev_at
       FROM r JOIN events f ON f.type = 'SessionRevoked' AND f.sid = r.sid AND f.seq > r.seq GROUP BY r.seq),
-- Under the `user` policy the service appends the user-wide revocation *before* ReuseDetected
-- (the widest revocation first), in the same decision: same sub, same occurred_at, lower seq.
ur AS (SELECT r.seq AS rseq, max(u.seq) AS rev_seq, arg_max_null(u.reason, u.seq) AS rev_reason,
              arg_max_null(u.occurred_at, u.seq) AS rev_at
       FROM r JOIN events u ON u.type = 'UserSessionsRevoked' AND u.sub = r.sub AND u.seq < r.seq
                           AND u.reason = 'reuse' AND u.occurred_at = r.occurred_at
       WHERE r.policy = 'user'
       GROUP BY r.seq),
grace AS (SELECT coalesce(max(TRY_CAST(value AS DOUBLE)), 30) AS grace_s
          FROM analytics_meta WHERE key = 'grace_window_s')
SELECT r.seq, r.event_id, r.occurred_at AS detected_at, r.stream_time AS committed_at,
       r.sid, r.sub, s.client_id, s.session_started_at,
       r.presented_generation, r.generation AS current_generation,
       r.generation - r.presented_generation AS generations_behind,
       r.superseded_at, epoch(r.occurred_at - r.superseded_at) AS seconds_since_superseded,
       coalesce(epoch(r.occurred_at - r.superseded_at) <= grace.grace_s, false) AS within_grace,
       r.policy,
       coalesce(fr.rev_seq, ur.rev_seq) AS revocation_seq,
       CASE WHEN fr.rev_seq IS NOT NULL THEN 'session' WHEN ur.rev_seq IS NOT NULL THEN 'user' END
           AS revocation_kind,
       coalesce(fr.rev_reason, ur.rev_reason) AS revocation_reason,
       coalesce(fr.rev_at, ur.rev_at) AS revoked_at,
       row_number() OVER (PARTITION BY r.sub ORDER BY r.seq) AS user_incident_no
FROM r CROSS JOIN grace LEFT JOIN s USING (sid)
LEFT JOIN fr ON fr.rseq = r.seq LEFT JOIN ur ON ur.rseq = r.seq;

CREATE OR REPLACE MACRO replay_daily_at(since, until) AS TABLE
SELECT CAST(detected_at AS DATE) AS day, count(*) AS incidents, count(DISTINCT sub) AS users,
       count(DISTINCT sid) AS sessions
FROM replay_incidents WHERE detected_at >= since AND detected_at <= until GROUP BY ALL ORDER BY day;

CREATE OR REPLACE MACRO replay_by_user_at(since, until) AS TABLE
SELECT sub, count(*) AS incidents, min(detected_at) AS first_seen, max(detected_at) AS last_seen,
       count(*) > 1 AS repeat_offender,
       list(DISTINCT coalesce(client_id, '(none)') ORDER BY coalesce(client_id, '(none)')) AS clients
FROM replay_incidents WHERE detected_at >= since AND detected_at <= until
GROUP BY sub ORDER BY incidents DESC, sub;

CREATE OR REPLACE MACRO replay_by_client_at(since, until) AS TABLE
SELECT coalesce(client_id, '(none)') AS client_id, count(*) AS incidents, count(DISTINCT sub) AS users,
       min(detected_at) AS first_seen, max(detected_at) AS last_seen
FROM replay_incidents WHERE detected_at >= since AND detected_at <= until
GROUP BY ALL ORDER BY incidents DESC, client_id;

-- Race or theft? Each incident's evidence and a verdict (the rule is in the README):
--   benign_race   the immediate predecessor, presented within race_s after the grace window
--                 closed (a second tab or a retry that just missed it; with grace 0: milliseconds);
--   likely_theft  a token two or more generations old (its holder never saw the newer ones),
--                 or presented theft_s or more after it was superseded;
--   unclear       in between.
-- When was the presented token superseded? By the rotation to the next generation, whatever
-- the generation (ReuseDetected carries it for the immediate predecessor only).
-- Device context hook: presented_device / same_device stay NULL until events carry the
-- presenter's device (the session-features work); a different device then means likely_theft,
-- the same device and a close time benign_race.
CREATE OR REPLACE MACRO reuse_verdicts_at(since, until, race_s := 5.0, theft_s := 300.0) AS TABLE
WITH i AS (SELECT * FROM replay_incidents WHERE detected_at >= since AND detected_at <= until),
nxt AS (SELECT i.seq AS rseq, min(f.occurred_at) AS next_at
        FROM i JOIN events f ON f.type = 'TokenRotated' AND f.sid = i.sid
                             AND f.generation = i.presented_generation + 1 AND f.seq < i.seq
        GROUP BY i.seq),
grace AS (SELECT coalesce(max(TRY_CAST(value AS DOUBLE)), 30) AS grace_s
          FROM analytics_meta WHERE key = 'grace_window_s'),
e AS (SELECT i.*, coalesce(i.superseded_at, nxt.next_at) AS presented_superseded_at,
             epoch(i.detected_at - coalesce(i.superseded_at, nxt.next_at)) AS after_supersession_s,
             NULL::VARCHAR AS presented_device, NULL::BOOLEAN AS same_device, grace.grace_s
      FROM i CROSS JOIN grace LEFT JOIN nxt ON nxt.rseq = i.seq)
SELECT seq, detected_at, sub, sid, client_id, presented_generation, current_generation, generations_behind,
       presented_superseded_at, round(after_supersession_s, 6) AS after_supersession_s, grace_s,
       presented_device, same_device,
       CASE WHEN same_device = false THEN 'likely_theft'
            WHEN generations_behind >= 2 THEN 'likely_theft'
            WHEN after_supersession_s >= theft_s THEN 'likely_theft'
            WHEN generations_behind = 1 AND after_supersession_s <= grace_s + race_s THEN 'benign_race'
            ELSE 'unclear' END AS verdict,
       CASE WHEN same_device = false THEN 'presented from another device'
            WHEN generations_behind >= 2 THEN generations_behind || ' generations old'
            WHEN after_supersession_s >= theft_s THEN 'presented ' || round(after_supersession_s)
                                                       || ' s after it was superseded'
            WHEN generations_behind = 1 AND after_supersession_s <= grace_s + race_s
                THEN 'the previous token, ' || round(after_supersession_s - grace_s, 3)
                     || ' s after the grace window'
            ELSE 'the previous token, ' || coalesce(round(after_supersession_s) || ' s', 'unknown time')
                 || ' after it was superseded' END AS evidence
FROM e;

CREATE OR REPLACE MACRO thefts_by_user_at(since, until, race_s := 5.0, theft_s := 300.0) AS TABLE
SELECT sub, count(*) AS incidents, count(*) FILTER (WHERE verdict = 'likely_theft') AS likely_thefts,
       count(*) FILTER (WHERE verdict = 'benign_race') AS benign_races,
       count(*) FILTER (WHERE verdict = 'unclear') AS unclear,
       min(detected_at) FILTER (WHERE verdict = 'likely_theft') AS first_theft_at,
       max(detected_at) FILTER (WHERE verdict = 'likely_theft') AS last_theft_at,
       list(DISTINCT coalesce(client_id, '(none)') ORDER BY coalesce(client_id, '(none)')) AS clients
FROM reuse_verdicts_at(since, until, race_s := race_s, theft_s := theft_s)
GROUP BY sub;

CREATE OR REPLACE VIEW reuse_verdicts AS
SELECT * FROM reuse_verdicts_at('-infinity'::TIMESTAMP, 'infinity'::TIMESTAMP);
CREATE OR REPLACE VIEW thefts_by_user AS
SELECT * FROM thefts_by_user_at('-infinity'::TIMESTAMP, 'infinity'::TIMESTAMP);

CREATE OR REPLACE VIEW replay_daily AS
SELECT * FROM replay_daily_at('-infinity'::TIMESTAMP, 'infinity'::TIMESTAMP);
CREATE OR REPLACE VIEW replay_by_user AS
SELECT * FROM replay_by_user_at('-infinity'::TIMESTAMP, 'infinity'::TIMESTAMP);
CREATE OR REPLACE VIEW replay_by_client AS
SELECT * FROM replay_by_client_at('-infinity'::TIMESTAMP, 'infinity'::TIMESTAMP);
"""

REVOCATIONS = """
CREATE OR REPLACE VIEW revocation_receipts AS
SELECT e.seq, e.event_id, r.verifier, min(r.applied_at) AS applied_at,
       (min(epoch_us(r.applied_at)) - epoch_us(e.stream_time)) / 1000 AS apply_ms
FROM events e JOIN receipts r ON r.event_id = e.event_id
GROUP BY e.seq, e.event_id, e.stream_time, r.verifier;

CREATE OR REPLACE VIEW revocations AS
WITH rv AS (
    SELECT seq, event_id,
           CASE type WHEN 'SessionRevoked' THEN 'session' WHEN 'UserSessionsRevoked' THEN 'user'
                     ELSE 'key' END AS kind,
           sid, sub, kid, reason, coalesce(requested_at, occurred_at) AS requested_at,
           occurred_at AS decided_at, stream_time AS committed_at
    FROM events WHERE type IN ('SessionRevoked', 'UserSessionsRevoked', 'SigningKeyRetired'))
SELECT rv.*,
       (epoch_us(decided_at) - epoch_us(requested_at)) / 1000 AS decide_ms,
       (epoch_us(committed_at) - epoch_us(decided_at)) / 1000 AS commit_ms,
       abs(epoch_us(committed_at) - epoch_us(decided_at)) > 60000000 AS clock_skew,
       count(rr.verifier) AS verifiers_applied,
       min(rr.applied_at) AS first_applied_at, max(rr.applied_at) AS last_applied_at,
       list({'verifier': rr.verifier, 'applied_at': rr.applied_at, 'apply_ms': rr.apply_ms}
            ORDER BY rr.verifier) FILTER (WHERE rr.verifier IS NOT NULL) AS verifier_receipts
FROM rv LEFT JOIN revocation_receipts rr USING (seq)
GROUP BY ALL;

CREATE OR REPLACE MACRO revocation_latency_at(since, until) AS TABLE
WITH rv AS (SELECT * FROM revocations WHERE requested_at >= since AND requested_at <= until),
ok AS (SELECT * FROM rv WHERE NOT clock_skew),
applied AS (SELECT rr.apply_ms,  -- server and verifier clocks: valid even for simulated traffic
                   CASE WHEN NOT rv.clock_skew THEN rr.apply_ms + rv.decide_ms + rv.commit_ms END AS total_ms
            FROM rv JOIN revocation_receipts rr USING (seq)),
stages AS (
    SELECT 1 AS ord, 'request_to_decided' AS stage, decide_ms AS ms FROM rv
    UNION ALL SELECT 2, 'decided_to_committed', commit_ms FROM ok
    UNION ALL SELECT 3, 'request_to_committed', decide_ms + commit_ms FROM ok
    UNION ALL SELECT 4, 'committed_to_applied', apply_ms FROM applied
    UNION ALL SELECT 5, 'request_to_applied', total_ms FROM applied WHERE total_ms IS NOT NULL)
SELECT stage, count(ms) AS n, quantile_cont(ms, 0.5) AS p50_ms, quantile_cont(ms, 0.9) AS p90_ms,
       quantile_cont(ms, 0.99) AS p99_ms, max(ms) AS max_ms
FROM stages GROUP BY ord, stage ORDER BY ord;

CREATE OR REPLACE VIEW revocation_latency AS
SELECT * FROM revocation_latency_at('-infinity'::TIMESTAMP, 'infinity'::TIMESTAMP);
"""

METRICS = """
CREATE OR REPLACE MACRO token_expiration_at(since, until) AS TABLE
SELECT coalesce(client_id, '(none)') AS client_id,
       coalesce(sum(last_generation + 1), 0) AS tokens_issued,
       coalesce(sum(rotations), 0) AS tokens_used,
       count(*) FILTER (WHERE end_kind IN ('idle_expired', 'absolute_expired')) AS tokens_expired_unused,
       count(*) FILTER (WHERE end_kind IN ('revoked', 'reuse', 'user_revoked')) AS tokens_revoked_unused,
       count(*) FILTER (WHERE censored) AS tokens_live,
       tokens_expired_unused / nullif(tokens_issued, 0) AS expiration_rate
FROM sessions_at(until) WHERE started_at >= since
GROUP BY ROLLUP (coalesce(client_id, '(none)')) ORDER BY client_id NULLS FIRST;

CREATE OR REPLACE MACRO refresh_usage_at(since, until) AS TABLE
SELECT coalesce(client_id, '(none)') AS client_id, count(*) AS sessions,
       coalesce(sum(rotations), 0) AS rotations, coalesce(sum(duration_us) / 86400e6, 0) AS session_days,
       sum(rotations) / nullif(sum(duration_us) / 86400e6, 0) AS rotations_per_session_day
FROM sessions_at(until) WHERE started_at >= since
GROUP BY ROLLUP (coalesce(client_id, '(none)')) ORDER BY client_id NULLS FIRST;

-- Kaplan-Meier: sessions still active are censored at the as-of time, never dropped.
CREATE OR REPLACE MACRO session_durations_at(since, until) AS TABLE
WITH s AS (SELECT coalesce(client_id, '(none)') AS client_id, duration_us / 1e6 AS d, NOT censored AS died,
                  duration_us AS us
           FROM sessions_at(until) WHERE started_at >= since),
g AS (SELECT NULL::VARCHAR AS client_id, d, died, us FROM s UNION ALL SELECT * FROM s),
t AS (SELECT client_id, d, count(*) FILTER (WHERE died) AS deaths, count(*) AS n FROM g GROUP BY ALL),
r AS (SELECT *, sum(n) OVER (PARTITION BY client_id ORDER BY d DESC) AS at_risk FROM t),
km AS (SELECT client_id, d,
              product(1 - deaths / at_risk) OVER (PARTITION BY client_id ORDER BY d) AS survival
       FROM r WHERE deaths > 0),
q AS (SELECT client_id, min(d) FILTER (WHERE survival <= 0.5 + 1e-12) AS p50_s,
             min(d) FILTER (WHERE survival <= 0.1 + 1e-12) AS p90_s,
             min(d) FILTER (WHERE survival <= 0.01 + 1e-12) AS p99_s
      FROM km GROUP BY client_id),
c AS (SELECT client_id, count(*) AS sessions, count(*) FILTER (WHERE died) AS ended,
             count(*) FILTER (WHERE NOT died) AS censored, avg(us) FILTER (WHERE died) / 1e6 AS mean_ended_s,
             max(d) AS max_observed_s
      FROM g GROUP BY client_id
      UNION ALL  -- the total row, even for an empty window
      SELECT NULL, 0, 0, 0, NULL, NULL WHERE NOT EXISTS (SELECT 1 FROM s))
SELECT c.client_id, sessions, ended, censored, p50_s, p90_s, p99_s, mean_ended_s, max_observed_s
FROM c LEFT JOIN q ON c.client_id IS NOT DISTINCT FROM q.client_id ORDER BY c.client_id NULLS FIRST;

CREATE OR REPLACE MACRO session_histogram_at(since, until) AS TABLE
WITH b AS (SELECT * FROM (VALUES (0, '< 1 min', 0), (1, '1-5 min', 60), (2, '5-15 min', 300),
                                 (3, '15-60 min', 900), (4, '1-4 h', 3600), (5, '4-24 h', 14400),
                                 (6, '1-7 d', 86400), (7, '>= 7 d', 604800)) v(ord, bucket, lo)),
s AS (SELECT duration_s, censored FROM sessions_at(until) WHERE started_at >= since)
SELECT b.ord, b.bucket, count(s.duration_s) FILTER (WHERE NOT s.censored) AS ended,
       count(s.duration_s) FILTER (WHERE s.censored) AS censored
FROM b LEFT JOIN s ON s.duration_s >= b.lo
     AND s.duration_s < coalesce((SELECT min(lo) FROM b b2 WHERE b2.lo > b.lo), 'infinity'::DOUBLE)
GROUP BY b.ord, b.bucket ORDER BY b.ord;

CREATE OR REPLACE VIEW token_expiration AS
SELECT * FROM token_expiration_at('-infinity'::TIMESTAMP, (SELECT as_of FROM horizon));
CREATE OR REPLACE VIEW refresh_usage AS
SELECT * FROM refresh_usage_at('-infinity'::TIMESTAMP, (SELECT as_of FROM horizon));
CREATE OR REPLACE VIEW session_durations AS
SELECT * FROM session_durations_at('-infinity'::TIMESTAMP, (SELECT as_of FROM horizon));
CREATE OR REPLACE VIEW session_histogram AS
SELECT * FROM session_histogram_at('-infinity'::TIMESTAMP, (SELECT as_of FROM horizon));
"""

VIEWS = (SESSIONS, REPLAY, REVOCATIONS, METRICS)


def fold_sessions(conn: duckdb.DuckDBPyConnection, after_seq: int = 0, *, cuts: bool = True) -> None:
    """Fold the events with seq > ``after_seq`` into ``session_facts`` (ingest calls it in the
    batch's transaction, so the facts move exactly once, with the rows and the checkpoint).
    ``cuts=False``: ``user_cuts`` holds those events' cuts already (a refold on open)."""
    if cuts:
        conn.execute(FOLD_USER_CUTS, [after_seq])  # first: the sessions' fold reads the cuts
    for statement in FOLD_SESSIONS:
        conn.execute(statement, [after_seq] if "$1" in statement else [])
    for table in FOLD_TEMP:  # the batch's scratch rows: nothing of them outlives the fold
        conn.execute(f"DROP TABLE IF EXISTS temp.{table}")


def create_schema(conn: duckdb.DuckDBPyConnection, *, grace_window_s: float = 30.0) -> None:
    """Create tables if missing and (re)create every view; idempotent. A file made before a
    folded table existed gets that table folded from all its events once, here; so does a
    file whose ``session_facts`` an older fold made (version 2 counted refused rotations)."""
    had = {
        row[0]
        for row in conn.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
        ).fetchall()
    }
    stored = _stored_version(conn) if "analytics_meta" in had else None
    conn.execute(TABLES)
    if "user_cuts" not in had or stored in REFOLD_CUTS_FROM:
        conn.execute("ALTER TABLE user_cuts ADD COLUMN IF NOT EXISTS keep_sid VARCHAR")
        conn.execute("DELETE FROM user_cuts")
        conn.execute(FOLD_USER_CUTS, [0])
    if "session_facts" not in had or stored in REFOLD_FACTS_FROM:
        began = time.monotonic()
        if stored is not None:  # an upgrade: say why opening takes a while (~5 s per million events)
            log.info("analytics: file of schema %s; folding session_facts again from every event", stored)
        conn.execute("BEGIN TRANSACTION")
        conn.execute("DELETE FROM session_facts")
        fold_sessions(conn, 0, cuts=False)
        conn.execute("COMMIT")
        if stored is not None:
            log.info("analytics: session_facts folded again in %.1f s", time.monotonic() - began)
    for ddl in VIEWS:
        conn.execute(ddl)
    conn.execute(
        "INSERT OR REPLACE INTO analytics_meta VALUES ('schema_version', ?), ('grace_window_s', ?)",
        [SCHEMA_VERSION, str(grace_window_s)],
    )


def _stored_version(conn: duckdb.DuckDBPyConnection) -> str | None:
    row = conn.execute("SELECT value FROM analytics_meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else str(row[0])
