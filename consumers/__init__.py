"""Processes that react to ledger events: edge verifier, revocation broadcast, sidecar."""

__all__: list[str] = []
