"""``session-ledger keys list|jwks|rotate|retire``: the signing-key lifecycle.

Runs as the ``ledger`` user with the key directory at hand (a new private key is written
there; every service instance must share it). Each change is one signed key event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS

from ledger.config import Settings, parse_duration
from ledger.domain.errors import ConfigError, Unavailable
from ledger.service.keyops import follow, jwks, key_rows, retire_key, rotate_key
from ledger.service.keys import ROOT_PRIVATE, ROOT_PUBLIC, create_root_key, load_root_key
from session_ledger.cli.common import COMMON, emit, run_nats, settings_from


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="signing keys: list, JWKS, rotate, retire").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    keys.add_parser("list", parents=[COMMON], help="every key and its status").set_defaults(func=cmd_list)
    keys.add_parser("jwks", parents=[COMMON], help="the JWKS (RFC 7517) of every usable key").set_defaults(
        func=cmd_jwks
    )
    rotate = keys.add_parser("rotate", parents=[COMMON], help="publish a new key now; it signs after a delay")
    rotate.add_argument(
        "--activate-in",
        default=None,
        help="delay before the new key signs, e.g. 30s (default: LEDGER_EDGE_MAX_STALENESS, so every "
        "serving verifier has it first)",
    )
    rotate.add_argument(
        "--root", action="store_true",
        help="recovery: sign the new key with the root key (root.pem in the key directory) instead of "
        "the active key, e.g. when every key is compromised or the active key's file is lost",
    )  # fmt: skip
    rotate.add_argument(
        "--wait", action="store_true",
        help="wait until the new key signs (every live verifier acknowledged it, or the delay passed)",
    )  # fmt: skip
    rotate.set_defaults(func=cmd_rotate)
    retire = keys.add_parser("retire", parents=[COMMON], help="retire a key (after its tokens expired)")
    retire.add_argument("kid")
    retire.add_argument(
        "--now", action="store_true", help="compromise: retire at once (a new key takes over first)"
    )
    retire.set_defaults(func=cmd_retire)
    root = keys.add_parser(
        "root-init", parents=[COMMON],
        help="create the operator's root key (root.pem + root.jwk in the key directory); verifiers "
        "given LEDGER_ROOT_KEY=<key dir>/root.jwk then trust no key on first use",
    )  # fmt: skip
    root.add_argument("--alg", default=None, help="ES256, EdDSA or RS256 (default: LEDGER_ALGORITHM)")
    root.set_defaults(func=cmd_root_init)


def cmd_list(args: argparse.Namespace) -> None:
    settings = settings_from(args, "ledger")

    async def go(nc: NATS) -> None:
        follower = await follow(nc, settings)
        rows = key_rows(follower.book, datetime.now(UTC))
        await follower.stop()
        human = "\n".join(
            f"{r['kid']:<18} {r['alg']:<6} {r['status']:<9} added {r['added_at']:%Y-%m-%d %H:%M:%S}"
            + (f"  signs from {r['activates_at']:%Y-%m-%d %H:%M:%S}" if r["activates_at"] else "")
            for r in rows
        )
        emit(args, {"keys": [{k: _jsonable(v) for k, v in r.items()} for r in rows]}, human or "no keys")

    run_nats(args, settings, go)


def cmd_jwks(args: argparse.Namespace) -> None:
    settings = settings_from(args, "ledger")

    async def go(nc: NATS) -> None:
        follower = await follow(nc, settings)
        print(json.dumps(jwks(follower.book), indent=None if args.json else 2))
        await follower.stop()

    run_nats(args, settings, go)


def cmd_rotate(args: argparse.Namespace) -> None:
    settings = settings_from(args, "ledger")
    delay = parse_duration(args.activate_in) if args.activate_in else settings.edge_max_staleness

    async def go(nc: NATS) -> None:
        started = time.monotonic()
        root = load_root_key(settings.keys_path, settings.key_passphrase) if args.root else None
        if args.root and root is None:
            raise ConfigError(f"--root: no {ROOT_PRIVATE} in {settings.keys_path}")
        now = datetime.now(UTC)
        event = await rotate_key(nc, settings, now=now, activate_in=delay, by_root=root)  # type: ignore[arg-type]
        when = event.activates_at.isoformat() if event.activates_at else "now"
        out: dict[str, Any] = {"kid": event.kid, "activates_at": when}
        human = f"new key {event.kid}: published, signs at the latest from {when}"
        if args.wait:
            print(
                f"waiting for {event.kid} to sign (verifier acknowledgements or {when})...", file=sys.stderr
            )
            out["active_after_s"] = round(await wait_active(nc, settings, event.kid, started), 3)
            human += f"\n{event.kid} signs now ({out['active_after_s']} s after rotate)"
        emit(args, out, human)

    run_nats(args, settings, go)


def cmd_retire(args: argparse.Namespace) -> None:
    settings = settings_from(args, "ledger")

    async def go(nc: NATS) -> None:
        event = await retire_key(nc, settings, args.kid, now=datetime.now(UTC), immediately=args.now)
        emit(args, {"kid": event.kid, "reason": event.reason}, f"retired {event.kid} ({event.reason})")

    run_nats(args, settings, go)


async def wait_active(nc: NATS, settings: Settings, kid: str, started: float) -> float:
    """Seconds from ``started`` until ``kid`` is the active key (bounded by its deadline)."""
    follower = await follow(nc, settings)
    try:
        limit = time.monotonic() + settings.edge_max_staleness.total_seconds() + 30
        while time.monotonic() < limit:
            active = follower.book.active(datetime.now(UTC))
            if active is not None and active.kid == kid:
                return time.monotonic() - started
            await asyncio.sleep(0.02)
        raise Unavailable(f"{kid} is not active yet: is a ledger service running?")
    finally:
        await follower.stop()


def cmd_root_init(args: argparse.Namespace) -> None:
    settings = settings_from(args, "ledger")
    root = create_root_key(settings.keys_path, args.alg or settings.algorithm, settings.key_passphrase)
    public = settings.keys_path / ROOT_PUBLIC
    emit(
        args,
        {
            "kid": root.kid,
            "alg": root.alg,
            "public_jwk": str(public),
            "private": str(settings.keys_path / ROOT_PRIVATE),
        },
        f"root key {root.kid} ({root.alg})\n"
        f"  public : {public}  -> set LEDGER_ROOT_KEY={public} on every service, edge and projection\n"
        f"  private: {settings.keys_path / ROOT_PRIVATE}  -> needed for the ledger's first start only;"
        " then keep it offline",
    )


def _jsonable(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value
