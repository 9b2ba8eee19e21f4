"""Which key signs now: the newest trusted, activated, unretired key in the ledger's key
events whose private key this instance holds. Every instance follows the key events, so a
rotation or a retirement takes effect everywhere within milliseconds, without a restart."""

from __future__ import annotations

from datetime import datetime

from ledger.config import Settings
from ledger.domain.errors import ConfigError, Unavailable
from ledger.service.keys import load_signing_key
from ledger.service.signer import AccessTokenSigner
from ledger.streaming.keys import KeyFollower


class ServiceKeys:
    def __init__(
        self, follower: KeyFollower, settings: Settings, bootstrap: AccessTokenSigner | None
    ) -> None:
        self.follower = follower
        self.settings = settings
        self.bootstrap = bootstrap  # the key directory's first key, until the stream names one
        self._signers: dict[str, AccessTokenSigner] = {}
        self._missing: set[str] = set()

    def current(self, now: datetime) -> AccessTokenSigner:
        for event in self.follower.book.activated(now):
            signer = self._signer(event.kid, event.alg)
            if signer is not None:
                return signer
        if not self.follower.book.added and self.bootstrap is not None:
            return self.bootstrap
        raise Unavailable("no active signing key of the ledger is in this instance's key directory")

    def _signer(self, kid: str, alg: str) -> AccessTokenSigner | None:
        if kid in self._signers:
            return self._signers[kid]
        if kid in self._missing:
            return None
        s = self.settings
        try:
            key = load_signing_key(s.keys_path, kid, alg, s.key_passphrase)
        except (FileNotFoundError, ConfigError):
            self._missing.add(kid)
            return None
        self._signers[kid] = AccessTokenSigner(key, issuer=s.issuer, audience=s.audience, ttl=s.access_ttl)
        return self._signers[kid]
