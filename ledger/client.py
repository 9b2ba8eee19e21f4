"""``LedgerClient``: the typed async client services use to talk to the ledger."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from pydantic import BaseModel, ValidationError

from ledger.contracts.commands import (
    ClientContext,
    LogoutRequest,
    Reply,
    Revocation,
    RevokeAccessRequest,
    RevokeOwnSessionRequest,
    RevokeSessionRequest,
    RevokeUserRequest,
    RotateRequest,
    SignOutOthersRequest,
    StartSessionRequest,
    StepUp,
    StepUpRequest,
    TokenPair,
)
from ledger.contracts.queries import (
    INACTIVE,
    MAX_INTROSPECT_CHARS,
    GetSessionRequest,
    Introspection,
    IntrospectRequest,
    ListSessionsRequest,
    SessionList,
    SessionView,
)
from ledger.contracts.subjects import Subjects
from ledger.domain.errors import BadRequest, LedgerError, Unavailable, error_from_code
from ledger.domain.events import RevokeReason
from ledger.streaming.connection import connect
from ledger.telemetry import traces

__all__ = ["LedgerClient"]


M = TypeVar("M", bound=BaseModel)


def _build(model: type[M], **fields: Any) -> M:
    """Validate locally with the server's own models; a bad value is ``BadRequest``, not a crash."""
    try:
        return model(**fields)
    except (ValidationError, ValueError):
        raise BadRequest(f"invalid {model.__name__} ({', '.join(sorted(fields))})") from None


def _answer(model: type[M], result: dict[str, Any]) -> M:
    """The server's answer as ``model``; anything else is a ``LedgerError``, never a crash."""
    try:
        return model.model_validate(result)
    except ValidationError:
        raise LedgerError(f"malformed {model.__name__} in the answer") from None


DEFAULT_TIMEOUT = 5.0
"""Seconds a request waits for its answer unless ``timeout`` says otherwise (tests on busy
machines raise it; every command is safe to retry after a timeout)."""


class LedgerClient:
    """Commands over NATS request/reply. Errors are ``ledger.domain.errors.LedgerError`` subclasses.

    ``rotate`` is safe to retry after a timeout: the same presented token yields the
    same successor inside the grace window.
    """

    def __init__(self, nc: NATS, *, prefix: str = "ledger", timeout: float | None = None, owns: bool = False):
        self.nc = nc
        self.subjects = Subjects(prefix)
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        self._owns = owns

    @classmethod
    async def connect(
        cls,
        url: str = "nats://127.0.0.1:4222",
        *,
        prefix: str = "ledger",
        timeout: float | None = None,
        connect_timeout: float = 10.0,
        **options: Any,
    ) -> LedgerClient:
        """``timeout`` bounds each request; ``connect_timeout`` bounds the first connect.

        They are separate so that an impatient request deadline never makes the
        connect itself fail on a busy machine.
        """
        nc = await connect(url, options.pop("name", "ledger-client"), deadline=connect_timeout, **options)
        return cls(nc, prefix=prefix, timeout=timeout, owns=True)

    async def close(self) -> None:
        if self._owns:
            await self.nc.drain()

    async def __aenter__(self) -> LedgerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start_session(
        self,
        sub: str,
        *,
        client_id: str | None = None,
        scopes: Sequence[str] = (),
        acr: str | None = None,
        amr: Sequence[str] = (),
        auth_time: datetime | None = None,
        client: ClientContext | None = None,
        idempotency_key: str | None = None,
    ) -> TokenPair:
        """Start a session. ``acr``/``amr``/``auth_time`` go into every access token of it;
        ``client`` (user agent, IP, label) is stored minimised; a retry with the same
        ``idempotency_key`` (8-128 of ``[A-Za-z0-9._:-]``) answers the same session."""
        req = _build(
            StartSessionRequest,
            sub=sub,
            client_id=client_id,
            scopes=tuple(scopes),
            acr=acr,
            amr=tuple(amr),
            auth_time=auth_time,
            client=client,
            idempotency_key=idempotency_key,
        )
        return _answer(TokenPair, await self._call("start", req))

    async def rotate(
        self, refresh_token: str, *, client: ClientContext | None = None, client_id: str | None = None
    ) -> TokenPair:
        """``client_id``: refuse (``invalid_token``) a token of another client's session."""
        req = _build(RotateRequest, refresh_token=refresh_token, client=client, client_id=client_id)
        return _answer(TokenPair, await self._call("rotate", req))

    async def step_up(
        self, sid: str, *, sub: str, acr: str, amr: Sequence[str] = (), auth_time: datetime | None = None
    ) -> StepUp:
        """After re-authenticating ``sub`` on session ``sid``: its next access tokens carry ``acr``."""
        req = _build(StepUpRequest, sid=sid, sub=sub, acr=acr, amr=tuple(amr), auth_time=auth_time)
        return _answer(StepUp, await self._call("step_up", req))

    async def revoke_own_session(self, sid: str, *, sub: str, current_sid: str) -> Revocation:
        """Self-service: user ``sub``, on live session ``current_sid``, revokes their session ``sid``."""
        req = _build(RevokeOwnSessionRequest, sub=sub, current_sid=current_sid, sid=sid)
        return _answer(Revocation, await self._call("revoke_own", req))

    async def sign_out_others(self, *, sub: str, current_sid: str) -> Revocation:
        """Self-service: revoke every session of ``sub`` except ``current_sid`` (one event)."""
        req = _build(SignOutOthersRequest, sub=sub, current_sid=current_sid)
        return _answer(Revocation, await self._call("sign_out_others", req))

    async def revoke_session(self, sid: str, reason: RevokeReason | str = RevokeReason.LOGOUT) -> Revocation:
        req = _build(RevokeSessionRequest, sid=sid, reason=reason)
        return _answer(Revocation, await self._call("revoke", req))

    async def logout(self, refresh_token: str, *, client_id: str | None = None) -> Revocation:
        req = _build(LogoutRequest, refresh_token=refresh_token, client_id=client_id)
        return _answer(Revocation, await self._call("logout", req))

    async def revoke_access(self, access_token: str, *, client_id: str | None = None) -> Revocation:
        """Revoke one access token alone (its ``jti``); every edge rejects it within milliseconds."""
        req = _build(RevokeAccessRequest, access_token=access_token, client_id=client_id)
        return _answer(Revocation, await self._call("revoke_access", req))

    async def revoke_user(self, sub: str, reason: RevokeReason | str = RevokeReason.ADMIN) -> Revocation:
        req = _build(RevokeUserRequest, sub=sub, reason=reason)
        return _answer(Revocation, await self._call("revoke_user", req))

    async def list_sessions(
        self, sub: str, *, include_inactive: bool = False, current_sid: str | None = None
    ) -> SessionList:
        """A user's sessions from the sessions projection (active ones unless asked otherwise),
        with device and last-seen; ``current_sid`` marks "this device" (``current``)."""
        req = _build(ListSessionsRequest, sub=sub, include_inactive=include_inactive, current_sid=current_sid)
        return _answer(SessionList, await self._query("sessions", req))

    async def get_session(self, sid: str) -> SessionView:
        return _answer(SessionView, await self._query("session", GetSessionRequest(sid=sid)))

    async def introspect(self, token: str) -> Introspection:
        """RFC 7662: ``active`` plus claims, for a refresh token or an access token.

        A token longer than any the ledger issues is inactive without asking anyone.
        """
        if len(token) > MAX_INTROSPECT_CHARS:
            return INACTIVE
        return _answer(Introspection, await self._query("introspect", IntrospectRequest(token=token)))

    async def _query(self, name: str, req: BaseModel) -> dict[str, Any]:
        return await self._send_to(self.subjects.query(name), req.model_dump_json().encode())

    async def request_raw(self, command: str, body: bytes) -> dict[str, Any]:
        """Send raw bytes to a command (tests and tools use it to probe input validation)."""
        return await self._send(command, body)

    async def _call(self, command: str, req: BaseModel) -> dict[str, Any]:
        return await self._send(command, req.model_dump_json().encode())

    async def _send(self, command: str, body: bytes) -> dict[str, Any]:
        return await self._send_to(self.subjects.command(command), body)

    async def _send_to(self, subject: str, body: bytes) -> dict[str, Any]:
        try:
            with traces.client_span(subject) as headers:  # the service's spans join this trace
                msg = await self.nc.request(subject, body, timeout=self.timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise Unavailable(f"nothing answers on {subject}: is the ledger running?") from None
        except nats.errors.TimeoutError:
            raise Unavailable("the ledger did not answer in time; retrying is safe") from None
        except nats.errors.ConnectionClosedError:
            raise Unavailable("not connected to NATS") from None
        try:
            reply = Reply.model_validate_json(msg.data)
        except ValidationError:
            raise LedgerError(f"the answer on {subject} is not a ledger reply") from None
        if reply.ok and reply.result is not None:
            return reply.result
        if reply.error is None:
            raise LedgerError("malformed reply")
        raise error_from_code(reply.error.code, reply.error.message)
