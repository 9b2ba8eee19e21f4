"""Processes that react to ledger events: edge verifier, revocation broadcast, sidecar."""

from consumers.edge import AccessClaims, EdgeVerifier, RejectReason, TokenRejected
from consumers.notices import Notice
from consumers.receipts import Receipt

__all__ = ["AccessClaims", "EdgeVerifier", "Notice", "Receipt", "RejectReason", "TokenRejected"]
