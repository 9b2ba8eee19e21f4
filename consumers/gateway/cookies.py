"""The refresh-token cookie: HttpOnly (JavaScript never sees it), Secure, SameSite=Strict,
Path=/session (sent to the refresh and logout endpoints only), expiring with the session's
idle timeout."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

PATH = "/session"


def set_refresh_cookie(
    response: web.StreamResponse, name: str, token: str, *, expires_at: datetime, now: datetime
) -> None:
    max_age = max(0, int((expires_at - now).total_seconds()))
    response.set_cookie(
        name, token, max_age=max_age, path=PATH, secure=True, httponly=True, samesite="Strict"
    )


def clear_refresh_cookie(response: web.StreamResponse, name: str) -> None:
    response.set_cookie(name, "", max_age=0, path=PATH, secure=True, httponly=True, samesite="Strict")
