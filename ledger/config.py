"""The one settings object. Loaded at the edge (CLI, service start) and passed down."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BeforeValidator, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger.domain.decide import LimitPolicy, ReusePolicy
from ledger.domain.device import IpMode
from ledger.domain.errors import ConfigError

ALLOWED_ALGORITHMS = ("ES256", "EdDSA", "RS256")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: object) -> object:
    """Accept ``30``, ``30s``, ``15m``, ``7d``, ``250ms`` besides what pydantic parses itself."""
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return timedelta(seconds=float(m[1]) * _UNIT_SECONDS[m[2]])
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR"],
    BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v),
]


class Settings(BaseSettings):
    """Every value has a safe default; env vars are ``LEDGER_<NAME>`` (e.g. LEDGER_NATS_URL)."""

    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore", frozen=True)

    nats_url: str = "nats://127.0.0.1:4222"
    stream: str = "LEDGER"
    subject_prefix: str = "ledger"
    replicas: int = Field(default=1, ge=1, le=5)
    duplicate_window: Duration = timedelta(minutes=2)

    access_ttl: Duration = timedelta(minutes=15)
    refresh_idle_ttl: Duration = timedelta(days=7)
    session_absolute_ttl: Duration = timedelta(days=30)
    grace_window: Duration = timedelta(seconds=30)
    reuse_policy: ReusePolicy = ReusePolicy.FAMILY

    algorithm: str = "ES256"
    issuer: str = "session-ledger"
    audience: str = "api"
    data_dir: Path = Path(".ledger")
    key_dir: Path | None = None  # default: <data_dir>/keys
    key_passphrase: str | None = Field(default=None, repr=False)
    # The operator's root public key (a JWK file): verifiers then trust no key on first use;
    # every key event needs a proof by the root or by a key already trusted.
    root_key: Path | None = None
    key_rotation: Duration | None = None  # scheduled rotation of the signing key, e.g. 30d
    key_maintenance_interval: Duration = timedelta(seconds=1)  # activation/retirement checks

    request_timeout: float = Field(default=5.0, gt=0, le=60)
    # Responders answer only to reply subjects under these prefixes (reply-subject injection).
    # With nats.conf's users, narrow it to the users that send requests, e.g. ["_INBOX.app."].
    reply_prefixes: tuple[str, ...] = ("_INBOX.",)
    max_generations: int = Field(default=10_000, ge=1)  # bounds the HMAC chain walk
    # Families whose head each instance remembers to rotate without a read (ledger.service.heads;
    # ~2.3 KB each); 0 turns the hints off.
    rotation_hints: int = Field(default=20_000, ge=0, le=1_000_000)
    # Families whose immutable facts (SessionStarted) each reader keeps (~2.2 KB each).
    facts_cache: int = Field(default=100_000, ge=1, le=10_000_000)

    # What a session keeps of a client IP (ledger.domain.device): truncate | hash | raw | off.
    client_ip: IpMode = IpMode.TRUNCATE
    # Concurrent sessions per user (0: no cap); over it, evict the oldest or refuse the new one.
    max_sessions_per_user: int = Field(default=0, ge=0, le=1000)
    session_limit_policy: LimitPolicy = LimitPolicy.EVICT_OLDEST
    session_limit_scope: Literal["user", "client"] = "user"  # client: N per (user, client_id)

    edge_listen: str = "127.0.0.1:8081"  # forward-auth sidecar (consumers.edge.sidecar)
    edge_max_staleness: Duration = timedelta(seconds=30)  # then fail closed, unless edge_fail_open
    edge_fail_open: bool = False
    # Fail closed also when the revocation broadcaster has been silent for edge_max_staleness
    # (a dead broadcaster means revocations stop arriving). Off only for a verifier without one.
    edge_require_broadcaster: bool = True
    edge_verifier_id: str | None = None  # default edge-<host>-<pid>

    # Prometheus /metrics of this process (host:port; "off" or unset: none; `up` picks a default).
    metrics_listen: str | None = None
    log_level: LogLevel = "INFO"
    log_format: Literal["text", "json"] = "text"
    traces: Literal["off", "console", "otlp"] = "off"  # OpenTelemetry spans (ledger.telemetry.traces)

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Self:
        if self.algorithm not in ALLOWED_ALGORITHMS:
            raise ConfigError(
                f"algorithm {self.algorithm!r} is not allowed; choose one of {ALLOWED_ALGORITHMS}"
            )
        for name in ("access_ttl", "refresh_idle_ttl", "session_absolute_ttl"):
            if getattr(self, name) <= timedelta(0):
                raise ConfigError(f"{name} must be positive")
        if self.grace_window < timedelta(0):
            raise ConfigError("grace_window must be >= 0")
        if self.access_ttl > self.session_absolute_ttl:
            raise ConfigError("access_ttl must not exceed session_absolute_ttl")
        if self.grace_window >= self.refresh_idle_ttl:
            raise ConfigError("grace_window must be shorter than refresh_idle_ttl")
        if self.key_rotation is not None and self.key_rotation <= self.access_ttl + self.edge_max_staleness:
            raise ConfigError("key_rotation must be longer than access_ttl + edge_max_staleness")
        if not self.stream.isalnum():
            raise ConfigError("stream name must be alphanumeric")
        if not self.reply_prefixes or not all(
            p.startswith("_INBOX.") and p.endswith(".") for p in self.reply_prefixes
        ):  # a whole token: "_INBOX.app" would also admit "_INBOX.appx.1"
            raise ConfigError('reply_prefixes must be non-empty, each "_INBOX." or "_INBOX.<user>."')
        if not all(part.isalnum() for part in self.subject_prefix.split(".")):
            raise ConfigError("subject_prefix must be dot-separated alphanumeric tokens")
        return self

    @property
    def keys_path(self) -> Path:
        return self.key_dir if self.key_dir is not None else self.data_dir / "keys"
