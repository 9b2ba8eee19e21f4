"""The command service: read state, decide, append, answer. I/O lives here, rules in ``decide``."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from ledger.config import Settings
from ledger.contracts.commands import (
    LogoutRequest,
    Revocation,
    RevokeAccessRequest,
    RevokeSessionRequest,
    RevokeUserRequest,
    RotateRequest,
    StartSessionRequest,
    TokenPair,
)
from ledger.contracts.subjects import Subjects
from ledger.domain import decide, refresh
from ledger.domain.access import Expectations, KeyRing, TokenRejected, check_signature
from ledger.domain.decide import Family, Ids, Policy
from ledger.domain.errors import (
    ConcurrencyConflict,
    ConfigError,
    SessionRevokedError,
    TokenInvalid,
    TokenReused,
    Unavailable,
)
from ledger.domain.events import FamilyEvent, SigningKeyAdded
from ledger.domain.ids import new_event_id, new_sid
from ledger.domain.keys import added_statement
from ledger.domain.refresh import RefreshToken, TokenKeys
from ledger.eventstore.base import BaseEventStore
from ledger.service.keys import ROOT_PRIVATE, SigningKey, load_root_key, sign_statement
from ledger.service.signer import AccessGrant, AccessTokenSigner

log = logging.getLogger("ledger.service.handlers")
MAX_CAS_ATTEMPTS = 8


def utcnow() -> datetime:
    return datetime.now(UTC)


class SignerSource(Protocol):
    """The signer for a moment: fixed (tests) or the key events' active key (``ServiceKeys``)."""

    def current(self, now: datetime) -> AccessTokenSigner: ...


class LedgerService:
    def __init__(
        self,
        store: BaseEventStore,
        keys: TokenKeys,
        signer: SignerSource,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        ring: KeyRing | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.signer = signer
        self.settings = settings
        self.subjects = Subjects(settings.subject_prefix)
        self.clock = clock
        self.random_bytes = random_bytes
        self.policy = Policy(settings.grace_window, settings.reuse_policy, settings.max_generations)
        self.ring = ring  # the trusted public keys (the key events), to judge revoke_access tokens
        self.expect = Expectations(settings.issuer, settings.audience)

    async def publish_signing_key(self, seen: int) -> None:
        """The ledger's first key: publish the key directory's key when no trusted key event
        exists (``seen``: the last key-event sequence, untrusted ones included). Without a
        root key it is trusted on first use; with one, it carries the root's proof."""
        keys_filter = self.subjects.keys_filter()
        key = self.signer.current(self.clock()).key
        subject = self.subjects.key(key.kid, "added")
        event = SigningKeyAdded(
            event_id=hashlib.sha256(key.kid.encode()).hexdigest()[:32],  # same id on every instance
            occurred_at=self.clock(),
            kid=key.kid,
            alg=key.alg,
            public_jwk=key.public_jwk(),
            proof=self._root_proof(key),
        )
        with contextlib.suppress(ConcurrencyConflict):  # another instance published one first
            await self.store.append(subject, event, expect=(keys_filter, seen))

    def _root_proof(self, key: SigningKey) -> str | None:
        """With a root key configured, verifiers trust nothing on first use: the first key
        needs the root's signature (``root.pem`` in the key directory for the first start)."""
        s = self.settings
        if s.root_key is None:
            return None
        root = load_root_key(s.keys_path, s.key_passphrase)
        if root is None:
            raise ConfigError(
                f"LEDGER_ROOT_KEY is set: the ledger's first key needs a proof by the root key; "
                f"put {ROOT_PRIVATE} in {s.keys_path} for the first start (then take it offline)"
            )
        return sign_statement(added_statement(key.kid, key.alg, key.public_jwk(), None), root)

    async def start_session(self, req: StartSessionRequest) -> TokenPair:
        now = self.clock()
        sid = new_sid()
        first = self.keys.first(sid, self.random_bytes(refresh.SECRET_BYTES))
        event = decide.start_session(
            sid=sid,
            sub=req.sub,
            client_id=req.client_id,
            scopes=req.scopes,
            first=first,
            keys=self.keys,
            idle_ttl=self.settings.refresh_idle_ttl,
            absolute_ttl=self.settings.session_absolute_ttl,
            now=now,
            event_id=new_event_id(),
        )
        seq = await self.store.append(
            self.subjects.family_event(sid, "started"),
            event,
            expect=(self.subjects.family_filter(sid), 0),
        )
        return self._pair(decide.evolve(None, event, seq), first, now)

    async def rotate(self, req: RotateRequest) -> TokenPair:
        token = refresh.parse(req.refresh_token)
        for _ in range(MAX_CAS_ATTEMPTS):
            family, cut, complete_to = await self.store.family_and_cut(token.sid)
            _check_client(family, req.client_id)
            now = self.clock()
            outcome = decide.rotate(
                family,
                token,
                user_cut_seq=cut,
                keys=self.keys,
                policy=self.policy,
                now=now,
                ids=Ids((new_event_id(), new_event_id())),
            )
            assert family is not None
            try:
                if isinstance(outcome, decide.Retried):
                    return self._pair(family, outcome.successor, now)
                if isinstance(outcome, decide.Rotated):
                    seq = await self._append_family(family, outcome.events)
                    if complete_to is None or seq != complete_to + len(outcome.events):
                        await self._check_user_cut_after(family, seq)  # something came between
                    rotated = decide.evolve(family, outcome.events[0], seq)
                    return self._pair(rotated, outcome.successor, now)
                for event in outcome.user_events:  # widest revocation first: a crash can't narrow it
                    await self.store.append(self.subjects.user(event.sub), event)
                await self._append_family(family, outcome.family_events)
                log.warning(
                    "refresh token reuse: sid=%s presented_generation=%d head=%d",
                    family.started.sid,
                    token.generation,
                    family.head.generation,
                )
                raise TokenReused("refresh token reuse detected; session revoked")
            except ConcurrencyConflict:
                continue  # another writer extended the family first: re-read, decide again
        raise Unavailable("too much contention on this session; retry")

    async def logout(self, req: LogoutRequest) -> Revocation:
        """Revoke the session of a presented refresh token (proof of possession, not just a sid)."""
        token = refresh.parse(req.refresh_token)
        family, _, _ = await self.store.family_and_cut(token.sid)
        _check_client(family, req.client_id)
        decide.check_genuine(family, token, self.keys, self.settings.max_generations)
        return await self.revoke_session(RevokeSessionRequest(sid=token.sid))

    async def revoke_session(self, req: RevokeSessionRequest) -> Revocation:
        requested_at = self.clock()
        for _ in range(MAX_CAS_ATTEMPTS):
            family = await self.store.family(req.sid)
            now = self.clock()
            event = decide.revoke_session(
                family,
                reason=req.reason,
                requested_at=requested_at,
                now=now,
                event_id=new_event_id(),
            )
            assert family is not None
            if event is None:
                return Revocation(seq=None, already_revoked=True, sid=req.sid, revoked_at=now)
            try:
                seq = await self._append_family(family, (event,))
            except ConcurrencyConflict:
                continue
            return Revocation(seq=seq, sid=req.sid, sub=event.sub, revoked_at=now)
        raise Unavailable("too much contention on this session; retry")

    async def revoke_user(self, req: RevokeUserRequest) -> Revocation:
        now = self.clock()
        event = decide.revoke_user(
            req.sub, reason=req.reason, requested_at=now, now=now, event_id=new_event_id()
        )
        seq = await self.store.append(self.subjects.user(req.sub), event)
        return Revocation(seq=seq, sub=req.sub, revoked_at=now)

    async def revoke_access(self, req: RevokeAccessRequest) -> Revocation:
        """Revoke one access token (RFC 7009): judged by the one verifier, then its ``jti`` is
        appended once (compare-and-set on its own subject; a repeat is ``already_revoked``)."""
        now = self.clock()
        if self.ring is None:
            raise Unavailable("this instance follows no key events")
        try:
            claims = check_signature(req.access_token, self.ring, self.expect, now=now.timestamp())
        except TokenRejected:
            raise TokenInvalid("invalid access token") from None
        if req.client_id is not None and claims.client_id != req.client_id:
            raise TokenInvalid("invalid access token")
        event_id = hashlib.sha256(claims.jti.encode()).hexdigest()[:32]  # a retry is deduplicated
        event = decide.revoke_access(claims, now=now, event_id=event_id)
        if event is None:
            return Revocation(seq=None, already_revoked=True, sid=claims.sid, sub=claims.sub, revoked_at=now)
        subject = self.subjects.access_token(claims.jti)
        try:
            seq = await self.store.append(subject, event, expect=(subject, 0))
        except ConcurrencyConflict:
            return Revocation(seq=None, already_revoked=True, sid=claims.sid, sub=claims.sub, revoked_at=now)
        return Revocation(seq=seq, sid=claims.sid, sub=claims.sub, revoked_at=now)

    async def _append_family(self, family: Family, events: tuple[FamilyEvent, ...]) -> int:
        sid = family.started.sid
        return await self.store.append_chain(
            lambda e: self.subjects.family_event(sid, _KIND[type(e).__name__]),
            events,
            self.subjects.family_filter(sid),
            family.head_seq,
        )

    async def _check_user_cut_after(self, family: Family, seq: int) -> None:
        """A revoke-all committed before our rotation wins, even if we read before it (inv. 8)."""
        cut = await self.store.user_cut(family.started.sub)
        if cut is not None and family.start_seq < cut < seq:
            raise SessionRevokedError("session was revoked")

    def _pair(self, family: Family, token: RefreshToken, now: datetime) -> TokenPair:
        started = family.started
        grant = AccessGrant(
            sub=started.sub,
            sid=started.sid,
            scopes=started.scopes,
            session_started_at=started.occurred_at,
            session_start_seq=family.start_seq,
            client_id=started.client_id,
        )
        access, access_exp = self.signer.current(now).sign(grant, now=now, cap=family.expires_at)
        return TokenPair(
            access_token=access,
            refresh_token=str(token),
            sid=started.sid,
            sub=started.sub,
            generation=token.generation,
            access_expires_at=access_exp,
            refresh_expires_at=family.refresh_expires_at,
            session_expires_at=family.expires_at,
        )


def _check_client(family: Family | None, client_id: str | None) -> None:
    """A client presents only its own sessions' tokens; a mismatch looks like any bad token."""
    if client_id is not None and family is not None and family.started.client_id != client_id:
        raise TokenInvalid("invalid refresh token")


_KIND = {
    "SessionStarted": "started",
    "TokenRotated": "rotated",
    "ReuseDetected": "reuse",
    "SessionRevoked": "revoked",
}
