"""Private keys at rest: 0600, encrypted when a passphrase is set, useless without it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ledger.domain.errors import ConfigError
from ledger.service.keys import (
    ROOT_PRIVATE,
    ROOT_PUBLIC,
    create_root_key,
    create_signing_key,
    load_root_key,
    load_signing_key,
)


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
def test_with_a_passphrase_signing_keys_are_encrypted_and_refuse_a_wrong_one(
    tmp_path: Path, alg: str
) -> None:
    key = create_signing_key(tmp_path, alg, "correct horse")
    pem = (tmp_path / f"{key.kid}.pem").read_bytes()
    assert (
        b"BEGIN ENCRYPTED PRIVATE KEY" in pem
        and oct((tmp_path / f"{key.kid}.pem").stat().st_mode & 0o777) == "0o600"
    )
    assert load_signing_key(tmp_path, key.kid, alg, "correct horse").public_jwk() == key.public_jwk()
    for wrong in ("battery staple", None):
        with pytest.raises(ConfigError, match="passphrase"):
            load_signing_key(tmp_path, key.kid, alg, wrong)


def test_without_a_passphrase_keys_are_plain_pkcs8_but_private_to_the_owner(tmp_path: Path) -> None:
    key = create_signing_key(tmp_path, "ES256", None)
    path = tmp_path / f"{key.kid}.pem"
    assert b"BEGIN PRIVATE KEY" in path.read_bytes() and oct(path.stat().st_mode & 0o777) == "0o600"


def test_the_root_key_is_encrypted_too_and_its_public_half_holds_no_secret(tmp_path: Path) -> None:
    root = create_root_key(tmp_path, "EdDSA", "s3cret")
    assert b"ENCRYPTED" in (tmp_path / ROOT_PRIVATE).read_bytes()
    public = json.loads((tmp_path / ROOT_PUBLIC).read_text())
    assert public == root.public_jwk() and "d" not in public
    loaded = load_root_key(tmp_path, "s3cret")
    assert loaded is not None and (loaded.kid, loaded.alg) == (root.kid, "EdDSA")
    with pytest.raises(ConfigError):
        load_root_key(tmp_path, "wrong")
    assert load_root_key(tmp_path / "elsewhere", "s3cret") is None  # kept offline: no root here
    with pytest.raises(ConfigError, match="one root key"):
        create_root_key(tmp_path, "ES256", None)
