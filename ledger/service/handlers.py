"""The command service: read state, decide, append, answer. I/O lives here, rules in ``decide``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from ledger.config import Settings
from ledger.contracts.commands import (
    ClientContext,
    LogoutRequest,
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
from ledger.contracts.subjects import Subjects
from ledger.domain import decide, device, refresh
from ledger.domain.access import Expectations, KeyRing, TokenRejected, check_signature
from ledger.domain.decide import Family, Ids, Policy
from ledger.domain.errors import (
    ConcurrencyConflict,
    ConfigError,
    LedgerError,
    SessionRevokedError,
    TokenInvalid,
    TokenReused,
    Unavailable,
)
from ledger.domain.events import DeviceInfo, FamilyEvent, RevokeReason, SigningKeyAdded
from ledger.domain.ids import new_event_id, new_sid
from ledger.domain.keys import added_statement
from ledger.domain.refresh import RefreshToken, TokenKeys
from ledger.eventstore.base import BaseEventStore
from ledger.service.heads import Heads, Hint
from ledger.service.keys import ROOT_PRIVATE, SigningKey, load_root_key, sign_statement
from ledger.service.limits import SessionLimiter
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
        self.limiter = SessionLimiter(store, settings, clock, self._evict)
        self.heads = Heads(settings.rotation_hints)  # each family's head as last written or read here

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
        """A new session; with an idempotency key, a retry lands on the same one (the family's
        compare-and-set decides). Under a session cap, it is admitted before any token leaves."""
        now = self.clock()
        if req.idempotency_key is not None:
            first = self.keys.idempotent_first(req.sub, req.idempotency_key)
        else:
            first = self.keys.first(new_sid(), self.random_bytes(refresh.SECRET_BYTES))
        event = decide.start_session(
            sid=first.sid,
            sub=req.sub,
            client_id=req.client_id,
            scopes=req.scopes,
            first=first,
            keys=self.keys,
            idle_ttl=self.settings.refresh_idle_ttl,
            absolute_ttl=self.settings.session_absolute_ttl,
            now=now,
            event_id=new_event_id(),
            auth=req.auth(),
            device=self._device(req.client),
        )
        try:
            seq = await self.store.append(
                self.subjects.family_event(first.sid, "started"),
                event,
                expect=(self.subjects.family_filter(first.sid), 0),
            )
            family = decide.evolve(None, event, seq)
            self.store.remember_start(event, seq)
            self.heads.put(family, None, known_to=seq)  # no cut before its start can apply
        except ConcurrencyConflict:
            if req.idempotency_key is None:
                raise Unavailable("session id collision; retry") from None
            family = await self._replay_start(req, first.sid, now)
        if self.settings.max_sessions_per_user:
            await self.limiter.admit(family)
        return self._pair(family, first, now)

    async def _replay_start(self, req: StartSessionRequest, sid: str, now: datetime) -> Family:
        family, cut = await self._read(sid)
        if family is None:
            raise Unavailable("the session of this idempotency key is not readable yet; retry")
        decide.replay_start(family, client_id=req.client_id, scopes=req.scopes)
        decide.check_alive(family, cut, now)
        return family

    def _device(self, client: ClientContext | None) -> DeviceInfo | None:
        if client is None:
            return None
        return device.minimise(
            user_agent=client.user_agent,
            ip=client.ip,
            label=client.label,
            mode=self.settings.client_ip,
            key=self.keys.ip_key,
        )

    async def _evict(self, sid: str) -> None:
        await self.revoke_session(RevokeSessionRequest(sid=sid, reason=RevokeReason.SESSION_LIMIT))

    async def rotate(self, req: RotateRequest) -> TokenPair:
        token = refresh.parse(req.refresh_token)
        client = self._device(req.client)
        hint = self.heads.get(token.sid)
        if hint is not None:
            pair = await self._rotate_on_hint(hint, token, req.client_id, client)
            if pair is not None:
                return pair
        for _ in range(MAX_CAS_ATTEMPTS):
            family, cut, complete_to = await self.store.family_and_cut(token.sid)
            _check_client(family, req.client_id)
            now = self.clock()
            outcome = self._decide_rotation(family, token, cut, now, client)
            assert family is not None
            try:
                if isinstance(outcome, decide.Retried):
                    self.heads.put(family, cut, complete_to)
                    return self._pair(family, outcome.successor, now)
                if isinstance(outcome, decide.Rotated):
                    seq = await self._append_family(family, outcome.events)
                    cut = await self._cut_after(family, outcome, seq, cut, complete_to)
                    return self._rotated(family, outcome, seq, cut, now)
                for event in outcome.user_events:  # widest revocation first: a crash can't narrow it
                    await self.store.append(self.subjects.user(event.sub), event)
                await self._append_family(family, outcome.family_events)
                log.warning(
                    "refresh token reuse: sid=%s presented_generation=%d head=%d",
                    family.started.sid,
                    token.generation,
                    family.head.generation,
                    extra={"sid": family.started.sid},
                )
                raise TokenReused("refresh token reuse detected; session revoked")
            except ConcurrencyConflict:
                continue  # another writer extended the family first: re-read, decide again
        raise Unavailable("too much contention on this session; retry")

    async def _rotate_on_hint(
        self, hint: Hint, token: RefreshToken, client_id: str | None, client: DeviceInfo | None
    ) -> TokenPair | None:
        """Rotate from what this instance last knew of the family (``heads``), or None: then
        the caller decides on a fresh read. Only a rotation is acted on; its compare-and-set
        proves the head was current, and the cut is checked after the append (invariant 8)."""
        family = hint.family
        if client_id is not None and family.started.client_id != client_id:
            return None
        now = self.clock()
        try:
            outcome = self._decide_rotation(family, token, hint.cut, now, client)
        except LedgerError:
            return None  # an error is never answered from a hint
        if not isinstance(outcome, decide.Rotated):
            return None
        try:
            seq = await self._append_family(family, outcome.events)
        except ConcurrencyConflict:
            return None
        cut = await self._cut_after(family, outcome, seq, hint.cut, hint.known_to)
        return self._rotated(family, outcome, seq, cut, now)

    async def _cut_after(
        self, family: Family, rotated: decide.Rotated, seq: int, cut: int | None, known_to: int | None
    ) -> int | None:
        """The user's cut once the rotation's append landed at ``seq``: the one known up to
        ``known_to`` if the append landed right after it (nothing came between), else read
        again, refusing the rotation if a revoke-all came first (invariant 8). Either way the
        answer is complete up to ``seq`` (a read after the ack sees at least that far)."""
        if known_to is not None and seq == known_to + len(rotated.events):
            return cut
        return await self._check_user_cut_after(family, seq)

    def _decide_rotation(
        self,
        family: Family | None,
        token: RefreshToken,
        cut: int | None,
        now: datetime,
        client: DeviceInfo | None,
    ) -> decide.RotateOutcome:
        return decide.rotate(
            family,
            token,
            user_cut_seq=cut,
            keys=self.keys,
            policy=self.policy,
            now=now,
            ids=Ids((new_event_id(), new_event_id())),
            device=client,
        )

    def _rotated(
        self, family: Family, outcome: decide.Rotated, seq: int, cut: int | None, now: datetime
    ) -> TokenPair:
        rotated = decide.evolve(family, outcome.events[0], seq)
        self.heads.put(rotated, cut, known_to=seq)
        return self._pair(rotated, outcome.successor, now)

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

    async def step_up(self, req: StepUpRequest) -> StepUp:
        """Raise the family's authentication context; its next access tokens carry it."""
        for _ in range(MAX_CAS_ATTEMPTS):
            family, cut = await self._read(req.sid)
            now = self.clock()
            event = decide.step_up(
                family, sub=req.sub, auth=req.auth(), user_cut_seq=cut, now=now, event_id=new_event_id()
            )
            assert family is not None
            try:
                seq = await self._append_family(family, (event,))
            except ConcurrencyConflict:
                continue
            await self._check_user_cut_after(family, seq)
            auth = event.auth
            return StepUp(seq=seq, sid=req.sid, acr=req.acr, amr=auth.amr, auth_time=auth.auth_time)
        raise Unavailable("too much contention on this session; retry")

    async def revoke_own(self, req: RevokeOwnSessionRequest) -> Revocation:
        """Self-service: revoke one of the user's sessions, from a live session of the same user.
        Another user's session is ``not_found``, exactly like an unknown one."""
        current, cut = await self._read(req.current_sid)
        decide.check_alive(decide.check_owner(current, req.sub), cut, self.clock())
        decide.check_owner(await self.store.family(req.sid), req.sub)
        return await self.revoke_session(RevokeSessionRequest(sid=req.sid, reason=RevokeReason.USER_REQUEST))

    async def sign_out_others(self, req: SignOutOthersRequest) -> Revocation:
        """One revoke-all that keeps ``current_sid``: compare-and-set on the user's events, so a
        revoke-all landing in between makes us re-read (and find this session dead)."""
        user_filter = self.subjects.user_filter(req.sub)
        for _ in range(MAX_CAS_ATTEMPTS):
            (family, cut), (_, position) = await asyncio.gather(
                self._read(req.current_sid), self.store.head(user_filter)
            )
            now = self.clock()
            event = decide.revoke_others(
                family, sub=req.sub, user_cut_seq=cut, reason=RevokeReason.USER_REQUEST, now=now,
                event_id=new_event_id(),
            )  # fmt: skip
            try:
                seq = await self.store.append(
                    self.subjects.user(req.sub), event, expect=(user_filter, position)
                )
            except ConcurrencyConflict:
                continue
            return Revocation(seq=seq, sub=req.sub, kept_sid=req.current_sid, revoked_at=now)
        raise Unavailable("too much contention on this user; retry")

    async def _read(self, sid: str) -> tuple[Family | None, int | None]:
        """The family and the user cut that applies to it (one batch read when possible)."""
        family, cut, _ = await self.store.family_and_cut(sid)
        return family, cut

    async def _append_family(self, family: Family, events: tuple[FamilyEvent, ...]) -> int:
        """Append with a compare-and-set on the family; its hint is dropped (a rotation puts
        the new head back once it is sure of it)."""
        sid = family.started.sid
        self.heads.drop(sid)
        return await self.store.append_chain(
            lambda e: self.subjects.family_event(sid, _KIND[type(e).__name__]),
            events,
            self.subjects.family_filter(sid),
            family.head_seq,
        )

    async def _check_user_cut_after(self, family: Family, seq: int) -> int | None:
        """A revoke-all committed before our rotation wins, even if we read before it (inv. 8)."""
        cut = await self.store.user_cut(family.started.sub, family.started.sid)
        if cut is not None and family.start_seq < cut < seq:
            raise SessionRevokedError("session was revoked")
        return cut

    def _pair(self, family: Family, token: RefreshToken, now: datetime) -> TokenPair:
        started = family.started
        grant = AccessGrant(
            sub=started.sub,
            sid=started.sid,
            scopes=started.scopes,
            session_started_at=started.occurred_at,
            session_start_seq=family.start_seq,
            client_id=started.client_id,
            auth=family.auth,
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
    "SessionSteppedUp": "stepup",
}
