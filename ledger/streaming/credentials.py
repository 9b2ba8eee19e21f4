"""Local credentials: the embedded ``up`` runs the same users and permissions as production.

On first start ``up`` writes one random password per nats.conf user to
``<data-dir>/nats-credentials.json`` (0600) and runs nats-server with those users; the CLI
and the components it starts read the file and connect as their role. Nothing on the machine
that cannot read the data directory can talk to the ledger.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from pathlib import Path
from urllib.parse import quote, urlsplit

from ledger.domain.errors import ConfigError
from ledger.streaming.permissions import ROLES, render_permissions, render_users

FILE = "nats-credentials.json"
_PASSWORD = re.compile(r"^p[A-Za-z0-9_-]{16,128}$")
USERS = tuple(role.user for role in ROLES)


def credentials_path(data_dir: Path) -> Path:
    return data_dir / FILE


def load(data_dir: Path) -> dict[str, str] | None:
    """The passwords ``up`` generated for ``data_dir``, or None when it never ran there."""
    data = _read(credentials_path(data_dir), users=USERS)
    return None if data is None else {user: data[user] for user in USERS}


def _read(path: Path, users: tuple[str, ...]) -> dict[str, str] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise ConfigError(f"{path} is unreadable; delete it and restart `session-ledger up`") from None
    if not isinstance(data, dict) or not all(_PASSWORD.fullmatch(str(data.get(u, ""))) for u in users):
        # the passwords go into the server's config verbatim: nothing but what load_or_create makes
        raise ConfigError(f"{path} lacks a user or holds an odd password; delete it and restart `up`")
    return {str(k): str(v) for k, v in data.items()}


def _add_missing_users(data_dir: Path) -> None:
    """A data dir from before a role existed (the ``gateway`` user) gets that user's password
    added (atomic replace, 0600); the other passwords stay."""
    path = credentials_path(data_dir)
    data = _read(path, users=tuple(u for u in USERS if u != "gateway"))
    if data is None or all(u in data for u in USERS):
        return
    data.update({u: "p" + secrets.token_urlsafe(24) for u in USERS if u not in data})
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)
    os.replace(tmp, path)


def load_or_create(data_dir: Path) -> dict[str, str]:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _add_missing_users(data_dir)
    found = load(data_dir)
    if found is not None:
        return found
    # A leading letter: nats-server would parse an all-digit or date-like value as a number.
    passwords = {user: "p" + secrets.token_urlsafe(24) for user in USERS}
    with contextlib.suppress(FileExistsError):  # another process won the race: use its file
        fd = os.open(credentials_path(data_dir), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(passwords, out)
    return load(data_dir) or passwords


def has_credentials(url: str) -> bool:
    return any(urlsplit(p.strip() if "://" in p else f"nats://{p.strip()}").username for p in url.split(","))


def with_user(url: str, user: str, password: str) -> str:
    """Every server of ``url`` with ``user:password@`` (quoted)."""
    parts = []
    for raw in (p.strip() for p in url.split(",") if p.strip()):
        split = urlsplit(raw if "://" in raw else f"nats://{raw}")
        host = split.netloc.rsplit("@", 1)[-1]
        parts.append(f"{split.scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}")
    return ",".join(parts)


def role_url(url: str, data_dir: Path, user: str) -> str:
    """``url`` as ``user`` with the local credentials, when ``url`` carries none and they exist."""
    if has_credentials(url):
        return url
    passwords = load(data_dir)
    return url if passwords is None else with_user(url, user, passwords[user])


def server_auth(passwords: dict[str, str]) -> str:
    """The users, permissions and account for an embedded nats-server (same rules as nats.conf)."""
    return (
        render_permissions()
        + "accounts {\n  LEDGER {\n    jetstream: enabled\n    users: [\n"
        + render_users(passwords)
        + "\n    ]\n  }\n}\n"
    )
