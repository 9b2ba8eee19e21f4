"""Pure answers of the query side: session views and RFC 7662 introspection.

Refresh tokens are judged by the ledger's own decision functions on the projected
family, so the projection cannot disagree with the ledger about a token it has
caught up on, and a forgery gets the same ``{"active": false}`` as an unknown
token (no oracle). Access tokens are judged by ``ledger.domain.access`` (the verifier the
edge uses too) with the key published in ``SigningKeyAdded``; this module adds what
only the projection knows: the session's state.
"""

from __future__ import annotations

import logging
from datetime import datetime

from ledger.contracts.queries import INACTIVE, Introspection, SessionView
from ledger.domain import decide
from ledger.domain.access import AccessClaims, Expectations
from ledger.domain.errors import LedgerError
from ledger.domain.refresh import RefreshToken, TokenKeys
from projections.sessions.fold import SessionRecord, end_reason, is_active, status

log = logging.getLogger("projections.sessions.answers")
DUMMY_IDS = decide.Ids(("0" * 32, "0" * 32))


def session_view(
    session: SessionRecord, now: datetime, user_cut: int | None, *, current: str | None = None
) -> SessionView:
    family, started = session.family(), session.started
    terminal = family.is_terminal
    auth = family.auth
    return SessionView(
        sid=started.sid,
        sub=started.sub,
        client_id=started.client_id,
        scopes=started.scopes,
        status=status(session, now, user_cut),
        active=is_active(session, now, user_cut),
        generation=session.head.generation,
        rotations=session.rotations,
        started_at=started.occurred_at,
        last_rotated_at=session.last_rotated_at,
        idle_expires_at=family.refresh_expires_at,
        expires_at=family.expires_at,
        ended_at=session.head.occurred_at if terminal else None,
        end_reason=end_reason(session, user_cut),
        start_seq=session.start_seq,
        head_seq=session.seq,
        as_of=now,
        last_seen_at=session.last_seen_at,
        device=session.device,
        acr=auth.acr if auth is not None else None,
        current=current == started.sid,
    )


def ledger_accepts(
    session: SessionRecord | None,
    token: RefreshToken,
    *,
    user_cut: int | None,
    keys: TokenKeys,
    policy: decide.Policy,
    now: datetime,
) -> bool:
    """Would the ledger hand out a successor for ``token`` now? (``decide.rotate``, nothing kept.)"""
    family = session.family() if session is not None else None
    try:  # rotate() itself refuses anything not genuinely issued
        outcome = decide.rotate(
            family, token, user_cut_seq=user_cut, keys=keys, policy=policy, now=now, ids=DUMMY_IDS
        )
    except LedgerError:
        return False
    return isinstance(outcome, decide.Rotated | decide.Retried)


def refresh_answer(
    session: SessionRecord | None,
    token: RefreshToken,
    *,
    user_cut: int | None,
    keys: TokenKeys,
    policy: decide.Policy,
    now: datetime,
    issuer: str,
) -> Introspection:
    if session is None or not ledger_accepts(
        session, token, user_cut=user_cut, keys=keys, policy=policy, now=now
    ):
        return INACTIVE
    started, family = session.started, session.family()
    return Introspection(
        active=True,
        token_type="refresh_token",  # noqa: S106 (a token type, not a secret)
        scope=" ".join(started.scopes),
        client_id=started.client_id,
        sub=started.sub,
        sid=started.sid,
        iss=issuer,
        exp=int(family.refresh_expires_at.timestamp()),
        iat=int(family.head_issued_at.timestamp()),  # a step-up issues no refresh token
        generation=token.generation,
    )


def access_answer(
    claims: AccessClaims,
    session: SessionRecord | None,
    *,
    user_cut: int | None,
    now: datetime,
    expect: Expectations,
) -> Introspection:
    """For a token ``ledger.domain.access`` accepted: active iff the session is known, matches,
    and is neither revoked nor past its absolute end."""
    if session is None or session.started.sub != claims.sub or session.start_seq != claims.ssq:
        return INACTIVE  # unknown to the projection (or lagging): fail closed
    family = session.family()
    if family.is_terminal or (user_cut is not None and user_cut > claims.ssq) or now >= family.expires_at:
        return INACTIVE
    return Introspection(
        active=True,
        token_type="access_token",  # noqa: S106
        scope=" ".join(claims.scopes),
        client_id=claims.client_id,
        sub=claims.sub,
        sid=claims.sid,
        iss=expect.issuer,
        aud=expect.audience,
        exp=claims.exp,
        iat=claims.iat,
        nbf=claims.nbf,
        jti=claims.jti,
        acr=claims.acr,
        auth_time=claims.auth_time,
    )
