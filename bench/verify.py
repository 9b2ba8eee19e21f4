"""Edge verification per core, per algorithm: cold (each token once) and warm (same token again),
against the raw ``cryptography`` verify of the same signing input, in the same run."""

from __future__ import annotations

import asyncio
import base64
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from bench.common import Report, Row, Stat, nats_server, rate, repeat_sync
from consumers.edge.verifier import EdgeVerifier
from ledger.config import Settings
from ledger.contracts.subjects import Subjects
from ledger.domain.events import SigningKeyAdded
from ledger.domain.ids import new_event_id
from ledger.domain.keys import added_statement
from ledger.service.keys import SigningKey, generate, key_id, sign_statement
from ledger.service.signer import AccessGrant, AccessTokenSigner
from ledger.streaming.connection import connect
from ledger.streaming.store import EventStore
from ledger.streaming.streams import ensure_streams

ALGS = ("ES256", "EdDSA", "RS256")
COLD_TOKENS = 2000


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _raw_verifier(key: SigningKey, token: str) -> Callable[[], None]:
    """The bare signature check PyJWT would do for this token, nothing else."""
    signing_input, _, sig_b64 = token.rpartition(".")
    data, sig, public = signing_input.encode(), _unb64(sig_b64), key.public
    if isinstance(public, ec.EllipticCurvePublicKey):
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        return lambda: public.verify(der, data, ec.ECDSA(hashes.SHA256()))
    if isinstance(public, ed25519.Ed25519PublicKey):
        return lambda: public.verify(sig, data)
    assert isinstance(public, rsa.RSAPublicKey)
    return lambda: public.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())


def _timed(fn: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        fn()
    return rate(count, time.perf_counter() - started)


async def _publish_keys(url: str, settings: Settings, keys: list[SigningKey]) -> None:
    nc = await connect(url, "bench-keys")
    store = EventStore(nc, settings)
    await ensure_streams(nc, settings)  # what the ledger service makes: edges only wait for it
    for i, key in enumerate(keys):  # the first is trusted on first use, each later one signed by it
        jwk = key.public_jwk()
        proof = sign_statement(added_statement(key.kid, key.alg, jwk, None), keys[0]) if i else None
        event = SigningKeyAdded(
            event_id=new_event_id(),
            occurred_at=datetime.now(UTC),
            kid=key.kid,
            alg=key.alg,
            public_jwk=jwk,
            proof=proof,
        )
        await store.append(Subjects().key(key.kid, "added"), event)
    await nc.drain()


def run(report: Report, reps: int, seconds: float) -> None:
    keys = [SigningKey(key_id((p := generate(alg)).public_key()), alg, p) for alg in ALGS]
    with nats_server() as server, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(nats_url=server.url, data_dir=Path(tmp))
        asyncio.run(_publish_keys(server.url, settings, keys))
        for key in keys:
            asyncio.run(_bench_alg(report, reps, settings, key))


async def _bench_alg(report: Report, reps: int, settings: Settings, key: SigningKey) -> None:
    signer = AccessTokenSigner(
        key, issuer=settings.issuer, audience=settings.audience, ttl=timedelta(minutes=15)
    )
    now = datetime.now(UTC)
    grant = AccessGrant(
        sub="alice", sid="S" * 22, scopes=("read",), session_started_at=now, session_start_seq=1
    )
    tokens = [signer.sign(grant, now=now, cap=now + timedelta(days=1))[0] for _ in range(COLD_TOKENS)]
    verifier = await EdgeVerifier(settings).start()
    try:
        raw_once = _raw_verifier(key, tokens[0])

        def cold() -> float:
            verifier._cache.clear()  # each token seen for the first time
            started = time.perf_counter()
            for token in tokens:
                verifier.verify(token)
            return rate(len(tokens), time.perf_counter() - started)

        # Raw and cold alternate, repetition by repetition: on a shared machine the load moves
        # within seconds, and two blocks measured one after the other compared two loads.
        pairs = [(_timed(raw_once, COLD_TOKENS), cold()) for _ in range(max(reps, 7))]
        raw, cold_stat = Stat.of([r for r, _ in pairs]), Stat.of([c for _, c in pairs])
        warm_stat = repeat_sync(lambda: _timed(lambda: verifier.verify(tokens[0]), COLD_TOKENS * 10), reps)
    finally:
        await verifier.close()
    alg = key.alg
    report.add(Row("verify", f"{alg} raw cryptography verify", "ops/s", raw))
    report.add(
        Row(
            "verify",
            f"{alg} edge verify, cold",
            "ops/s",
            cold_stat,
            "raw verify",
            raw,
            ">= 0.85x",
            cold_stat.median >= 0.85 * raw.median,
        )
    )
    report.add(
        Row(
            "verify",
            f"{alg} edge verify, warm (revocation checked)",
            "ops/s",
            warm_stat,
            "raw verify",
            raw,
            ">= 20x",
            warm_stat.median >= 20 * raw.median,
        )
    )
