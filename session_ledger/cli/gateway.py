"""``session-ledger gateway`` (the HTTP gateway) and ``session-ledger gateway-secret``
(a new confidential client's secret and the hash the registry stores)."""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

from consumers.gateway.app import run_gateway
from consumers.gateway.clients import hash_secret, new_secret
from consumers.gateway.settings import GatewaySettings
from session_ledger.cli.common import COMMON, settings_from
from session_ledger.components import GATEWAY
from session_ledger.runtime import run_one


def register(sub: Any) -> None:
    gateway = sub.add_parser(
        "gateway",
        parents=[COMMON],
        help="run the HTTP gateway: OAuth endpoints, JWKS, the browser cookie flow",
        description="OAuth 2.0 (refresh, revoke, introspect), JWKS and RFC 8414 metadata, backend "
        "session start and the browser cookie flow over HTTP, talking to the ledger over NATS as "
        "the `gateway` user. Every option also reads LEDGER_GATEWAY_<NAME>.",
    )
    gateway.add_argument("--listen", help="host:port to serve (default 127.0.0.1:8082)")
    gateway.add_argument("--public-url", help="the URL clients use, behind a proxy (default http://LISTEN)")
    gateway.add_argument(
        "--clients", type=Path, help="client registry JSON (default DATA_DIR/gateway-clients.json)"
    )
    gateway.add_argument(
        "--cors-origin", action="append", help="a browser origin allowed to call /session/* (repeatable)"
    )
    gateway.add_argument("--browser-client-id", help="the client whose sessions the cookie flow serves")
    gateway.add_argument(
        "--trusted-proxy", action="append", help="a proxy address whose X-Real-IP is believed"
    )
    gateway.add_argument(
        "--self-service-acr",
        action="append",
        help="an acr value the self-service actions (revoke a device, sign out the others) accept "
        "(repeatable; default: any level); a lower one gets the RFC 9470 challenge",
    )
    gateway.add_argument(
        "--self-service-max-age", help="the self-service actions need auth_time within this (e.g. 10m)"
    )
    gateway.set_defaults(func=cmd_gateway)
    secret = sub.add_parser(
        "gateway-secret",
        help="make a confidential client's secret and its registry hash",
        description="Prints a new 256-bit client secret (give it to the client) and the registry "
        "entry holding only its salted hash (put it in the client registry).",
    )
    secret.add_argument("client_id", help="the client's id")
    secret.add_argument("--introspect", action="store_true", help="the client may call /oauth/introspect")
    secret.add_argument(
        "--start-sessions-for", action="append", help="a client id it may start sessions for (repeatable)"
    )
    secret.set_defaults(func=cmd_secret, json=True)


def gateway_config(args: argparse.Namespace) -> GatewaySettings:
    update: dict[str, Any] = {
        "listen": args.listen,
        "public_url": args.public_url,
        "clients_file": args.clients,
        "cors_origins": tuple(args.cors_origin) if args.cors_origin else None,
        "browser_client_id": args.browser_client_id,
        "trusted_proxies": tuple(args.trusted_proxy) if args.trusted_proxy else None,
        "self_service_acr": tuple(args.self_service_acr) if args.self_service_acr else None,
        "self_service_max_age": args.self_service_max_age,
    }
    base = GatewaySettings()
    return GatewaySettings(**{**base.model_dump(), **{k: v for k, v in update.items() if v is not None}})


def cmd_gateway(args: argparse.Namespace) -> None:
    runner = functools.partial(run_gateway, config=gateway_config(args))
    run_one(GATEWAY._replace(runner=runner), settings_from(args, "gateway"))


def cmd_secret(args: argparse.Namespace) -> None:
    secret = new_secret()
    entry = {"client_id": args.client_id, "secret_hash": hash_secret(secret), "introspect": args.introspect,
             "start_sessions_for": args.start_sessions_for or []}  # fmt: skip
    print(json.dumps({"client_secret": secret, "registry_entry": entry}, indent=2))
