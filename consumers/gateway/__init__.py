"""The HTTP gateway: OAuth 2.0 endpoints for services, a cookie flow for browsers, JWKS.

It talks to the ledger over NATS like any client (``ledger.client.LedgerClient``, NATS user
``gateway``), judges nothing itself that the ledger or ``ledger.domain.access`` judges, and
never exposes NATS to a browser.
"""
