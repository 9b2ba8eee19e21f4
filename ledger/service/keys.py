"""Server-held key material: the token master secret and the access-token signing key.

Private keys stay on disk under the key directory (0600, encrypted with
``LEDGER_KEY_PASSPHRASE`` when set) and never enter the stream: only the public
JWK is published, as a ``SigningKeyAdded`` event.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from ledger.domain.errors import ConfigError

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey

MASTER_FILE = "ledger.secret"
JWK_MEMBERS = ("kty", "crv", "x", "y", "n", "e", "kid", "alg", "use")
ACTIVE_FILE = "active"
ROOT_PRIVATE, ROOT_PUBLIC = "root.pem", "root.jwk"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: PrivateKey = field(repr=False)

    @property
    def public(self) -> PublicKey:
        return self.private.public_key()

    def public_jwk(self) -> dict[str, str]:
        return public_jwk(self.public, self.kid, self.alg)


def public_jwk(key: PublicKey, kid: str, alg: str) -> dict[str, str]:
    jwk: dict[str, Any]
    if isinstance(key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(key, as_dict=True)
    else:
        jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
    jwk.update(kid=kid, alg=alg, use="sig")
    # RFC 7517 members only, each a string: PyJWT adds key_ops as a *list* for RSA, which the
    # event's dict[str, str] turned into the string "['verify']" and `jose` then refused.
    return {k: v for k, v in jwk.items() if k in JWK_MEMBERS and isinstance(v, str)}


def generate(alg: str) -> PrivateKey:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ConfigError(f"unsupported algorithm {alg!r}")


def key_id(key: PublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()[:12]).decode().rstrip("=")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def load_or_create_master(key_dir: Path) -> bytes:
    """The 32-byte secret all service instances share (rotation HMAC and token hashes)."""
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = key_dir / MASTER_FILE
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another instance created it first
            _write_private(path, secrets.token_bytes(32))
    data = path.read_bytes()
    if len(data) < 32:
        raise ConfigError(f"{path} holds fewer than 32 bytes")
    return data


def load_or_create_signing_key(key_dir: Path, alg: str, passphrase: str | None) -> SigningKey:
    """The key directory's first key for ``alg`` (``active.<alg>`` names it), made on first start."""
    active = key_dir / f"{ACTIVE_FILE}.{alg}"
    if active.exists():
        return load_signing_key(key_dir, active.read_text().strip(), alg, passphrase)
    key = create_signing_key(key_dir, alg, passphrase)
    active.write_text(key.kid)
    return key


def load_signing_key(key_dir: Path, kid: str, alg: str, passphrase: str | None) -> SigningKey:
    """The private key ``<kid>.pem`` of the key directory (FileNotFoundError when absent)."""
    pem = (key_dir / f"{kid}.pem").read_bytes()
    password = passphrase.encode() if passphrase else None
    try:
        private = serialization.load_pem_private_key(pem, password=password)
    except (TypeError, ValueError):
        raise ConfigError(f"cannot load signing key {kid}: wrong or missing passphrase") from None
    return SigningKey(kid, alg, private)  # type: ignore[arg-type]


def create_signing_key(key_dir: Path, alg: str, passphrase: str | None) -> SigningKey:
    """A new key written to ``<kid>.pem`` (0600, encrypted when a passphrase is set)."""
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = generate(alg)
    kid = key_id(private.public_key())
    _write_private(key_dir / f"{kid}.pem", _pem(private, passphrase))
    return SigningKey(kid, alg, private)


def _pem(private: PrivateKey, passphrase: str | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def create_root_key(key_dir: Path, alg: str, passphrase: str | None) -> SigningKey:
    """The operator's root key: ``root.pem`` (private, 0600, encrypted with a passphrase) and
    ``root.jwk`` (public; verifiers are configured with it as ``LEDGER_ROOT_KEY``). It signs
    the ledger's first key and recovery keys only: keep ``root.pem`` offline otherwise."""
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (key_dir / ROOT_PRIVATE).exists():
        raise ConfigError(f"{key_dir / ROOT_PRIVATE} exists: a ledger has one root key")
    private = generate(alg)
    root = SigningKey(key_id(private.public_key()), alg, private)
    _write_private(key_dir / ROOT_PRIVATE, _pem(private, passphrase))
    (key_dir / ROOT_PUBLIC).write_text(json.dumps(root.public_jwk(), indent=2) + "\n")
    return root


def load_root_key(key_dir: Path, passphrase: str | None) -> SigningKey | None:
    """The root private key when it is in the key directory (None: kept offline)."""
    path = key_dir / ROOT_PRIVATE
    if not path.exists():
        return None
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=_password(passphrase))
    except (TypeError, ValueError):
        raise ConfigError("cannot load the root key: wrong or missing passphrase") from None
    if not isinstance(private, PrivateKey):
        raise ConfigError("the root key is not an ES256, EdDSA or RS256 key")
    return SigningKey(key_id(private.public_key()), alg_of(private), private)


def alg_of(private: PrivateKey) -> str:
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return "ES256"
    return "EdDSA" if isinstance(private, ed25519.Ed25519PrivateKey) else "RS256"


def _password(passphrase: str | None) -> bytes | None:
    return passphrase.encode() if passphrase else None


def sign_statement(statement: bytes, key: SigningKey) -> str:
    """A compact JWS of a key statement (``ledger.domain.keys``) by ``key``: the proof."""
    return jwt.api_jws.encode(statement, key.private, algorithm=key.alg, headers={"kid": key.kid})
