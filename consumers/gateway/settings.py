"""The gateway's own settings (``LEDGER_GATEWAY_*``), beside the ledger's ``Settings``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger.config import Duration
from ledger.domain.errors import ConfigError
from ledger.domain.stepup import BadRequirement, Requirement, parse_requirement

HEADER_NAME = r"^[A-Za-z][A-Za-z0-9-]{0,63}$"


class GatewaySettings(BaseSettings):
    """Every value has a safe default: loopback, no CORS origin, Secure cookies, HSTS on."""

    model_config = SettingsConfigDict(env_prefix="LEDGER_GATEWAY_", extra="ignore", frozen=True)

    listen: str = "127.0.0.1:8082"
    public_url: str | None = None  # what clients see (behind a proxy); default http://<listen>
    clients_file: Path | None = None  # the client registry (JSON); default <data_dir>/gateway-clients.json
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call /session/* (exact match)
    browser_client_id: str | None = None  # the cookie flow serves sessions of this client only
    cookie_name: str = "__Secure-ledger-rt"
    csrf_header: str = Field(default="X-Session-Ledger", pattern=HEADER_NAME)
    hsts: bool = True
    rate_window: Duration = timedelta(seconds=60)
    rate_per_ip: int = Field(default=600, ge=1)
    rate_per_session: int = Field(default=60, ge=1)
    trusted_proxies: tuple[str, ...] = ()  # peers whose X-Real-IP names the client (nginx)
    # the level the self-service actions (revoke a device, sign out the others) require of the
    # presenting access token (RFC 9470): acceptable acr values, and/or a max age of auth_time
    self_service_acr: tuple[str, ...] = ()
    self_service_max_age: Duration | None = None

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Self:
        if not self.cookie_name.startswith("__Secure-") and not self.cookie_name.isidentifier():
            raise ConfigError("cookie_name must be a plain token (the __Secure- prefix is recommended)")
        if any(o == "*" or not o.startswith(("https://", "http://")) for o in self.cors_origins):
            raise ConfigError("cors_origins are exact origins such as https://app.example.com, never *")
        if not timedelta(seconds=1) <= self.rate_window <= timedelta(minutes=30):
            raise ConfigError("rate_window must be between 1 s and 30 min")
        try:
            self.self_service_requirement()
        except BadRequirement as err:
            raise ConfigError(f"self_service_acr / self_service_max_age: {err}") from None
        return self

    def self_service_requirement(self) -> Requirement:
        age = self.self_service_max_age
        return parse_requirement(
            " ".join(self.self_service_acr), None if age is None else str(int(age.total_seconds()))
        )

    def base_url(self) -> str:
        return (self.public_url or f"http://{self.listen}").rstrip("/")

    def clients_path(self, data_dir: Path) -> Path:
        return self.clients_file if self.clients_file is not None else data_dir / "gateway-clients.json"
