"""Client context, minimised: what the ledger keeps of a user agent and an IP address.

A raw user agent is fingerprinting material and an IP address is personal data; a
session list needs neither. Kept instead: a device class and a coarse "browser on OS"
family (from a fixed table, so the values are bounded and never echo the input), the
user's own label, and an IP hint chosen by the operator (``IpMode``): the network
(``/24`` for IPv4, ``/48`` for IPv6) by default, a keyed hash, the raw address (opt-in),
or nothing. Pure: the hash key is an argument.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from enum import StrEnum

from ledger.domain.events import DeviceClass, DeviceInfo

MAX_USER_AGENT = 1024
MAX_LABEL = 64
IP_HASH_HEX = 16  # 64 bits: enough to tell devices apart in one user's list, not a lookup key

# (needle in the user agent, name); first match wins, so specific names come before generic ones.
_BROWSERS = (
    ("Edg/", "Edge"), ("OPR/", "Opera"), ("SamsungBrowser", "Samsung Internet"), ("Firefox/", "Firefox"),
    ("FxiOS", "Firefox"), ("CriOS", "Chrome"), ("Chrome/", "Chrome"), ("Safari/", "Safari"),
    ("curl/", "curl"), ("okhttp", "OkHttp"), ("python-requests", "Python"),
)  # fmt: skip
_SYSTEMS = (
    ("iPad", "iPadOS"), ("iPhone", "iOS"), ("Android", "Android"), ("Windows", "Windows"),
    ("CrOS", "ChromeOS"), ("Mac OS X", "macOS"), ("Macintosh", "macOS"), ("Linux", "Linux"),
)  # fmt: skip
_BOTS = ("bot", "crawler", "spider", "curl/", "python-requests", "okhttp")


class IpMode(StrEnum):
    TRUNCATE = "truncate"  # the network: 203.0.113.0/24, 2001:db8:1::/48
    HASH = "hash"  # a keyed hash: tells devices apart, reveals nothing without the key
    RAW = "raw"  # the address itself (only if the operator must, e.g. for fraud review)
    OFF = "off"  # nothing


def _first(ua: str, table: tuple[tuple[str, str], ...]) -> str | None:
    return next((name for needle, name in table if needle in ua), None)


def device_class(ua: str) -> DeviceClass:
    lowered = ua.lower()
    if any(word in lowered for word in _BOTS):
        return "bot"
    if "ipad" in lowered or "tablet" in lowered:
        return "tablet"
    if "mobile" in lowered or "iphone" in lowered or "android" in lowered:
        return "mobile"
    if any(word in ua for word in ("Windows", "Macintosh", "X11", "CrOS", "Linux")):
        return "desktop"
    return "other"


def ua_family(ua: str) -> str | None:
    browser, system = _first(ua, _BROWSERS), _first(ua, _SYSTEMS)
    if browser and system:
        return f"{browser} on {system}"
    return browser or system


def ip_hint(ip: str, mode: IpMode, key: bytes) -> str | None:
    """The IP hint the operator's mode allows; ``ip`` must already be a valid address."""
    addr = ipaddress.ip_address(ip)
    if mode is IpMode.OFF:
        return None
    if mode is IpMode.RAW:
        return str(addr)
    if mode is IpMode.HASH:
        digest = hmac.new(key, addr.packed, hashlib.sha256).hexdigest()
        return "h:" + digest[:IP_HASH_HEX]
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def minimise(
    *, user_agent: str | None, ip: str | None, label: str | None, mode: IpMode, key: bytes
) -> DeviceInfo | None:
    """The ``DeviceInfo`` an event may hold, or None when nothing was given."""
    if user_agent is None and ip is None and label is None:
        return None
    ua = (user_agent or "")[:MAX_USER_AGENT]
    return DeviceInfo(
        device_class=device_class(ua) if ua else "other",
        ua_family=ua_family(ua) if ua else None,
        label=label,
        ip_hint=ip_hint(ip, mode, key) if ip else None,
    )
