"""Processes that react to ledger events: edge verifier, revocation broadcast, sidecar."""

from consumers.edge.verifier import AccessClaims, EdgeVerifier, RejectReason, TokenRejected
from ledger.contracts.notices import Notice
from ledger.contracts.receipts import Receipt

__all__ = ["AccessClaims", "EdgeVerifier", "Notice", "Receipt", "RejectReason", "TokenRejected"]
