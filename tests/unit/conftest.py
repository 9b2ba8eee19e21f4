"""Fixtures shared by the unit tests (no server)."""

from __future__ import annotations

import pytest

from ledger.service.signer import AccessTokenSigner
from tests.support.memory_service import new_signer


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> AccessTokenSigner:
    """An ES256 access-token signer (issuer ``i``, audience ``a``) for in-memory services."""
    return new_signer(tmp_path_factory.mktemp("keys"))
