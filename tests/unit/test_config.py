"""Settings: safe defaults, env loading, unsafe values refused at start-up."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ledger.config import ReusePolicy, Settings
from ledger.domain.errors import ConfigError


def test_safe_defaults() -> None:
    s = Settings()
    assert s.algorithm == "ES256" and s.access_ttl == timedelta(minutes=15)
    assert s.refresh_idle_ttl == timedelta(days=7) and s.session_absolute_ttl == timedelta(days=30)
    assert s.grace_window == timedelta(seconds=30) and s.reuse_policy is ReusePolicy.FAMILY
    assert s.nats_url.startswith("nats://127.0.0.1")


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_NATS_URL", "nats://127.0.0.1:5222")
    monkeypatch.setenv("LEDGER_GRACE_WINDOW", "0")
    monkeypatch.setenv("LEDGER_REUSE_POLICY", "user")
    monkeypatch.setenv("LEDGER_ACCESS_TTL", "5m")
    monkeypatch.setenv("LEDGER_REFRESH_IDLE_TTL", "2d")
    s = Settings()
    assert s.nats_url.endswith(":5222") and s.grace_window == timedelta(0)
    assert s.access_ttl == timedelta(minutes=5) and s.refresh_idle_ttl == timedelta(days=2)
    assert s.reuse_policy is ReusePolicy.USER


@pytest.mark.parametrize(
    "overrides",
    [
        {"algorithm": "none"},
        {"algorithm": "HS256"},
        {"algorithm": "es256"},
        {"access_ttl": timedelta(0)},
        {"refresh_idle_ttl": timedelta(0)},
        {"session_absolute_ttl": timedelta(seconds=-1)},
        {"grace_window": timedelta(seconds=-1)},
        {"grace_window": timedelta(days=8)},
        {"access_ttl": timedelta(days=31)},
        {"stream": "BAD.NAME"},
        {"subject_prefix": "a.*"},
    ],
)
def test_unsafe_values_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Settings(**overrides)  # type: ignore[arg-type]


def test_key_passphrase_is_not_in_repr() -> None:
    assert "hunter2" not in repr(Settings(key_passphrase="hunter2"))
