"""The client registry: who may call the OAuth endpoints, and with which secret.

Confidential clients authenticate with ``client_secret_basic`` (RFC 6749 section 2.3.1);
their secrets are stored as salted SHA-256 hashes and compared in constant time. A slow
password hash would add nothing: secrets are 256 random bits (``session-ledger gateway
client-secret`` makes them), and shorter ones are refused. Public clients have no secret
and are bound to their ``client_id``: a refresh token works only for its own client.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Annotated
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consumers.gateway.errors import OAuthError
from ledger.domain.errors import ConfigError

CLIENT_ID = r"^[A-Za-z0-9._:/-]{1,128}$"
SECRET_HASH = r"^sha256\$[A-Za-z0-9_-]{22}\$[0-9a-f]{64}$"
MIN_SECRET_CHARS = 32


class Client(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: Annotated[str, Field(pattern=CLIENT_ID)]
    secret_hash: Annotated[str, Field(pattern=SECRET_HASH)] | None = None  # None: a public client
    introspect: bool = False  # a resource server: may call /oauth/introspect
    start_sessions_for: tuple[Annotated[str, Field(pattern=CLIENT_ID)], ...] = ()  # a trusted backend

    @property
    def confidential(self) -> bool:
        return self.secret_hash is not None


class Registry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    clients: tuple[Client, ...] = ()

    def find(self, client_id: str) -> Client | None:
        return next((c for c in self.clients if c.client_id == client_id), None)


def load_registry(path: Path) -> Registry:
    """The registry file (JSON ``{"clients": [...]}``); none at all means no client may call."""
    try:
        return Registry.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        return Registry()
    except (OSError, ValueError, ValidationError):
        raise ConfigError(f"{path} is not a valid client registry") from None


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(f"a client secret needs at least {MIN_SECRET_CHARS} characters")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.sha256(salt + secret.encode()).hexdigest()
    return f"sha256${base64.urlsafe_b64encode(salt).decode().rstrip('=')}${digest}"


def secret_matches(secret: str, stored: str) -> bool:
    _, salt_b64, digest = stored.split("$")
    salt = base64.urlsafe_b64decode(salt_b64 + "==")
    presented = hashlib.sha256(salt + secret.encode()).hexdigest()
    return hmac.compare_digest(presented, digest)


def basic_credentials(authorization: str) -> tuple[str, str]:
    """``Basic base64(urlencode(id):urlencode(secret))`` (RFC 6749 section 2.3.1)."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise OAuthError("invalid_client", "unsupported authentication scheme", status=401)
    try:
        raw = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError("invalid_client", "malformed Basic credentials", status=401) from None
    client_id, sep, secret = raw.partition(":")
    if not sep:
        raise OAuthError("invalid_client", "malformed Basic credentials", status=401)
    return unquote(client_id), unquote(secret)


def authenticate(registry: Registry, authorization: str | None, form: dict[str, str]) -> Client:
    """The calling client: Basic credentials for confidential clients, ``client_id`` alone for
    public ones. One method per request; every failure is the same ``invalid_client``."""
    if authorization is not None:
        if "client_secret" in form:
            raise OAuthError("invalid_request", "use one client authentication method")
        client_id, secret = basic_credentials(authorization)
        if form.get("client_id", client_id) != client_id:
            raise OAuthError("invalid_request", "client_id differs from the authenticated client")
        client = registry.find(client_id)
        if client is None or client.secret_hash is None or not secret_matches(secret, client.secret_hash):
            raise OAuthError("invalid_client", "client authentication failed", status=401)
        return client
    if "client_secret" in form:
        raise OAuthError("invalid_client", "use client_secret_basic (HTTP Basic)", status=401)
    client = registry.find(form.get("client_id", ""))
    if client is None or client.confidential:
        raise OAuthError("invalid_client", "client authentication failed", status=401)
    return client
