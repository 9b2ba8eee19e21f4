"""Where a cold edge verify's time goes, per token, by stage: ``python -m bench.verify_breakdown``.

No NATS: an ``EdgeVerifier`` that knows one key and believes itself fresh. Thread CPU time
(another process's load does not count), min over REPS runs of 2000 distinct tokens, stages
interleaved run by run. Stages 1-5 are cumulative prefixes of ``check_signature`` with the
signature check stubbed: its Python alone. The last line is what is left once the Python and
the signature check alone are taken away: the check runs slower amid Python than in a loop of
its own (its code and tables are no longer in the caches).
"""

from __future__ import annotations

import base64
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.verify import ALGS, COLD_TOKENS, _raw_verifier
from consumers.edge.verifier import EdgeVerifier
from ledger.config import Settings
from ledger.domain import access
from ledger.service.keys import SigningKey, generate, key_id
from ledger.service.signer import AccessGrant, AccessTokenSigner

REPS = 25
_DATA = tempfile.TemporaryDirectory(prefix="ledger-bench-")  # removed at exit (mkdtemp leaked one per run)


def _setup(alg: str) -> tuple[SigningKey, EdgeVerifier, list[str]]:
    key = SigningKey(key_id((private := generate(alg)).public_key()), alg, private)
    settings = Settings(data_dir=Path(_DATA.name))
    verifier = EdgeVerifier(settings)
    verifier.keys.add(key.kid, alg, key.public_jwk())
    verifier._fresh_at = verifier._broadcaster_at = time.monotonic() + 86_400  # fresh, no NATS
    signer = AccessTokenSigner(
        key, issuer=settings.issuer, audience=settings.audience, ttl=timedelta(minutes=15)
    )
    now = datetime.now(UTC)
    grant = AccessGrant(
        sub="alice", sid="S" * 22, scopes=("read",), session_started_at=now, session_start_seq=1
    )
    return (
        key,
        verifier,
        [signer.sign(grant, now=now, cap=now + timedelta(days=1))[0] for _ in range(COLD_TOKENS)],
    )


def _stages(verifier: EdgeVerifier, stub: access.VerifyingKey, tokens: list[str]) -> list[Callable[[], None]]:
    keys, expect, now, table = verifier.keys, verifier.expect, time.time(), access.TO_STANDARD_B64

    def prefix(depth: int) -> Callable[[], None]:
        def run() -> None:
            for token in tokens:
                text = token.encode("ascii")
                standard = text.translate(table)
                if b"!" in standard:
                    raise ValueError(token)
                head, body, sig = standard.split(b".")
                if depth < 2:
                    continue
                kid, alg, fault = access._header(head)
                key = keys.keys.get(kid or "")
                if key is None or kid in keys.retired or alg != key.alg or fault is not None:
                    raise ValueError(token)
                if depth < 3:
                    continue
                stub.check(text[: len(head) + 1 + len(body)], access._b64(sig))
                if depth < 4:
                    continue
                data = access._json_object(access._b64(body))
                if depth < 5:
                    continue
                access._claims(data, stub.kid, expect, now)

        return run

    return [prefix(n) for n in range(1, 6)]


def breakdown(alg: str) -> None:
    key, verifier, tokens = _setup(alg)
    real = verifier.keys.keys[key.kid]
    stub = dataclasses.replace(real, check=lambda data, sig: True)
    keys, expect = verifier.keys, verifier.expect
    signatures = [
        (t.rpartition(".")[0].encode(), base64.urlsafe_b64decode(t.rpartition(".")[2] + "==")) for t in tokens
    ]
    raw_once = _raw_verifier(key, tokens[0])

    def stubbed(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            keys.keys[key.kid] = stub
            try:
                fn()
            finally:
                keys.keys[key.kid] = real

        return run

    def check_signature() -> None:
        now = time.time()
        for token in tokens:
            access.check_signature(token, keys, expect, now=now)

    def verify_cold() -> None:
        verifier._cache.clear()
        for token in tokens:
            verifier.verify(token)

    def raw_same() -> None:
        for _ in tokens:
            raw_once()

    def check_alone() -> None:
        for data, sig in signatures:
            real.check(data, sig)

    named = {
        "1 size, ASCII, base64url -> base64 translate, charset, split": None,
        "2 + header memo, kid -> key, alg == key's alg, typ/crit": None,
        "3 + signature base64, signing-input slice, check call": None,
        "4 + payload base64, depth bound, JSON (orjson)": None,
        "5 + claims: required, iss/aud, types/ranges, times, AccessClaims": None,
    }
    runs: dict[str, Callable[[], None]] = dict(zip(named, _stages(verifier, stub, tokens), strict=True))
    runs |= {
        "check_signature, signature stubbed": stubbed(check_signature),
        "EdgeVerifier.verify cold, signature stubbed": stubbed(verify_cold),
        "raw verify, same token (the bench's baseline)": raw_same,
        "signature check alone, the 2000 distinct tokens": check_alone,
        "EdgeVerifier.verify cold": verify_cold,
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(REPS):
        for name, fn in runs.items():
            started = time.thread_time()
            fn()
            times[name].append((time.thread_time() - started) / len(tokens) * 1e6)
    best = {name: min(t) for name, t in times.items()}
    print(f"{alg}: us per token (min of {REPS}; median)")
    previous = 0.0
    for name in named:
        print(f"  {name:66} {best[name] - previous:6.2f}")
        previous = best[name]
    for name in list(runs)[5:]:
        print(f"  {name:66} {best[name]:6.2f}  ({statistics.median(times[name]):.2f})")
    python = best["EdgeVerifier.verify cold, signature stubbed"]
    wrapper = python - best["check_signature, signature stubbed"]
    left = best["EdgeVerifier.verify cold"] - python - best["signature check alone, the 2000 distinct tokens"]
    raw, cold = times["raw verify, same token (the bench's baseline)"], times["EdgeVerifier.verify cold"]
    ratios = [r / c for r, c in zip(raw, cold, strict=True)]
    print(f"  {'  of it the edge (staleness, cache, revocations, counters)':66} {wrapper:6.2f}")
    print(f"  {'left: the signature check slower amid Python than alone':66} {left:6.2f}")
    print(f"  cold / raw: {statistics.median(ratios):.3f} (median of same-run pairs)")


if __name__ == "__main__":
    for alg in sys.argv[1].split(",") if len(sys.argv) > 1 else ALGS:
        breakdown(alg)
