"""Request/reply queries on ``<prefix>.q.<name>``, served by the projection process.

``sessions``    a user's sessions (active ones unless ``include_inactive``)
``session``     one session's state
``introspect``  RFC 7662 introspection of a refresh token or an access token

Replies use the command service's envelope (``ledger.contracts.commands.Reply``). Time is read
once per request and passed down: expiry is decided here, never written.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel

from ledger.config import Settings
from ledger.contracts.commands import Reply, fail, internal_error, ok, parse_request
from ledger.contracts.queries import (
    INACTIVE,
    GetSessionRequest,
    Introspection,
    IntrospectRequest,
    ListSessionsRequest,
    SessionList,
    SessionView,
)
from ledger.contracts.subjects import Subjects, is_safe_reply
from ledger.domain import decide, refresh
from ledger.domain.access import Expectations, KeyRing, TokenRejected, check_signature
from ledger.domain.errors import LedgerError, SessionNotFound, TokenInvalid
from ledger.domain.ids import is_sid
from ledger.domain.refresh import TokenKeys
from ledger.streaming.connection import flush_to_server
from projections.sessions.answers import (
    access_answer,
    refresh_answer,
    session_view,
)
from projections.sessions.store import SessionStore

log = logging.getLogger("projections.sessions.queries")
QUEUE_GROUP = "ledger-queries"
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class SessionQueries:
    """The answers, over whichever bucket is live (``source`` follows rebuilds)."""

    def __init__(
        self,
        source: Callable[[], SessionStore],
        keys: TokenKeys,
        settings: Settings,
        key_ring: Callable[[], KeyRing],
        clock: Clock = utcnow,
    ) -> None:
        self.source = source
        self.key_ring = key_ring
        self.keys = keys
        self.settings = settings
        self.clock = clock
        self.policy = decide.Policy(settings.grace_window, settings.reuse_policy, settings.max_generations)
        self.expect = Expectations(settings.issuer, settings.audience)

    async def list_sessions(self, req: ListSessionsRequest) -> SessionList:
        """The user's sessions, oldest first; ``current`` marks ``req.current_sid`` ("this device")."""
        store, now = self.source(), self.clock()
        record = await store.user_cut_record(req.sub)
        views = [
            session_view(s, now, record.cut_for(s.started.sid) if record else None, current=req.current_sid)
            for s in await store.user_sessions(req.sub)
        ]
        chosen = tuple(v for v in views if v.active or req.include_inactive or v.current)
        return SessionList(sub=req.sub, sessions=chosen, as_of=now)

    async def get_session(self, req: GetSessionRequest) -> SessionView:
        store, now = self.source(), self.clock()
        session = await store.session(req.sid)
        if session is None:
            raise SessionNotFound("no such session")
        return session_view(session, now, await store.user_cut(session.started.sub, req.sid))

    async def introspect(self, req: IntrospectRequest) -> Introspection:
        if req.token.startswith(refresh.PREFIX + "."):
            return await self._refresh(req.token)
        return await self._access(req.token)

    async def _refresh(self, raw: str) -> Introspection:
        try:
            token = refresh.parse(raw)
        except TokenInvalid:
            return INACTIVE
        store, now = self.source(), self.clock()
        session = await store.session(token.sid)
        cut = await store.user_cut(session.started.sub, token.sid) if session is not None else None
        return refresh_answer(
            session,
            token,
            user_cut=cut,
            keys=self.keys,
            policy=self.policy,
            now=now,
            issuer=self.settings.issuer,
        )

    async def _access(self, raw: str) -> Introspection:
        store, now = self.source(), self.clock()
        try:  # the keys as the key events say, forged ones ignored (the edge's rule)
            claims = check_signature(raw, self.key_ring(), self.expect, now=now.timestamp())
        except TokenRejected as err:
            log.debug("access token inactive: %s", err.reason.value)
            return INACTIVE
        session = await store.session(claims.sid) if is_sid(claims.sid) else None
        cut = await store.user_cut(claims.sub, claims.sid)
        if await store.token_revoked(claims.jti):
            return INACTIVE  # revoked alone (RFC 7009), the session goes on
        return access_answer(claims, session, user_cut=cut, now=now, expect=self.expect)


class QueryServer:
    """Subscribes the query subjects (queue group, so several projection processes share them)."""

    def __init__(self, nc: NATS, queries: SessionQueries, prefix: str) -> None:
        self.nc = nc
        self.queries = queries
        self.prefix = prefix
        self.subs: list[Subscription] = []

    async def start(self) -> None:
        q = self.queries
        routes: list[tuple[str, type[BaseModel], Callable[..., Awaitable[BaseModel]]]] = [
            ("sessions", ListSessionsRequest, q.list_sessions),
            ("session", GetSessionRequest, q.get_session),
            ("introspect", IntrospectRequest, q.introspect),
        ]
        prefixes = self.queries.settings.reply_prefixes
        for name, model, call in routes:
            self.subs.append(
                await self.nc.subscribe(
                    Subjects(self.prefix).query(name),
                    queue=QUEUE_GROUP,
                    cb=_handler(model, call, prefixes),
                )
            )
        await flush_to_server(self.nc)  # the server has them before anyone is told we are ready

    async def stop(self) -> None:
        for sub in self.subs:
            await sub.unsubscribe()
        self.subs.clear()


def _handler(
    model: type[BaseModel], call: Callable[..., Awaitable[BaseModel]], prefixes: tuple[str, ...]
) -> Callable[[Msg], Awaitable[None]]:
    async def handle(msg: Msg) -> None:
        if not is_safe_reply(msg.reply, prefixes):  # never answer into a stream or a bucket
            log.warning("query refused: its reply subject is not an inbox (%d chars)", len(msg.reply or ""))
            return
        await msg.respond(await answer(model, call, msg.data))

    return handle


async def answer(model: type[BaseModel], call: Callable[..., Awaitable[BaseModel]], body: bytes) -> bytes:
    try:
        result = await call(parse_request(model, body))
    except LedgerError as err:
        return fail(err)
    except Exception as exc:
        return internal_error(log, "answering a query", exc)
    if isinstance(result, Introspection):  # RFC 7662: absent claims are omitted, not null
        return Reply(ok=True, result=result.wire()).model_dump_json().encode()
    return ok(result)
