"""Security headers on every response, CORS for an allow-list, and the CSRF rule, as pure
functions of the request's headers (the app applies them)."""

from __future__ import annotations

from collections.abc import Mapping

CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-site",
}
HSTS = "max-age=63072000; includeSubDomains"
PREFLIGHT_MAX_AGE = "600"


def security_headers(existing: Mapping[str, str], *, hsts: bool) -> dict[str, str]:
    """What to add to a response: the fixed set, HSTS, and ``no-store`` unless it chose a cache
    policy itself (only the JWKS, the metadata and the JS helper do)."""
    out = {k: v for k, v in SECURITY.items() if k not in existing}
    if hsts:
        out["Strict-Transport-Security"] = HSTS
    if "Cache-Control" not in existing:
        out["Cache-Control"] = "no-store"
    return out


def cors_headers(origin: str | None, allowed: tuple[str, ...], *, credentials: bool) -> dict[str, str]:
    """``Access-Control-Allow-Origin`` for an allowed origin only (exact match, never ``*``
    with credentials); nothing at all for any other origin."""
    if origin is None or origin not in allowed:
        return {"Vary": "Origin"}
    out = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if credentials:
        out["Access-Control-Allow-Credentials"] = "true"
    return out


def preflight_headers(
    origin: str | None, allowed: tuple[str, ...], csrf_header: str
) -> dict[str, str] | None:
    if origin is None or origin not in allowed:
        return None
    return {
        **cors_headers(origin, allowed, credentials=True),
        "Access-Control-Allow-Methods": "POST",
        "Access-Control-Allow-Headers": f"Content-Type, {csrf_header}",
        "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
    }


def csrf_refusal(
    headers: Mapping[str, str], *, own_origin: str, allowed: tuple[str, ...], csrf_header: str
) -> str | None:
    """Why a cookie-authenticated POST must be refused, or None.

    Three independent checks: the custom header (a cross-site form cannot set it, and a
    cross-origin fetch that sets it needs a preflight the CORS allow-list answers), the
    ``Origin`` (when the browser sends one: ours or allow-listed), and ``Sec-Fetch-Site``
    (never ``cross-site``). SameSite=Strict on the cookie is the fourth.
    """
    if headers.get(csrf_header) != "1":
        return "missing_csrf_header"
    origin = headers.get("Origin")
    if origin is not None and origin != own_origin and origin not in allowed:
        return "origin_not_allowed"
    if headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "same-site", "none"):
        return "cross_site"
    return None
