"""Processes that react to ledger events: edge verifier, revocation broadcast, sidecar."""

from consumers.edge.receipts import Receipt
from consumers.edge.verifier import AccessClaims, EdgeVerifier, RejectReason, TokenRejected
from ledger.contracts.notices import Notice

__all__ = ["AccessClaims", "EdgeVerifier", "Notice", "Receipt", "RejectReason", "TokenRejected"]
