"""``session-ledger keys list|jwks|rotate|retire``: the signing-key lifecycle.

Runs as the ``ledger`` user with the key directory at hand (a new private key is written
there; every service instance must share it). Each change is one signed key event.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS

from ledger.config import parse_duration
from ledger.service.keyops import follow, jwks, key_rows, retire_key, rotate_key
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
    rotate.set_defaults(func=cmd_rotate)
    retire = keys.add_parser("retire", parents=[COMMON], help="retire a key (after its tokens expired)")
    retire.add_argument("kid")
    retire.add_argument(
        "--now", action="store_true", help="compromise: retire at once (a new key takes over first)"
    )
    retire.set_defaults(func=cmd_retire)


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
        event = await rotate_key(nc, settings, now=datetime.now(UTC), activate_in=delay)  # type: ignore[arg-type]
        when = event.activates_at.isoformat() if event.activates_at else "now"
        emit(
            args,
            {"kid": event.kid, "activates_at": when},
            f"new key {event.kid}: published, signs from {when}",
        )

    run_nats(args, settings, go)


def cmd_retire(args: argparse.Namespace) -> None:
    settings = settings_from(args, "ledger")

    async def go(nc: NATS) -> None:
        event = await retire_key(nc, settings, args.kid, now=datetime.now(UTC), immediately=args.now)
        emit(args, {"kid": event.kid, "reason": event.reason}, f"retired {event.kid} ({event.reason})")

    run_nats(args, settings, go)


def _jsonable(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value
