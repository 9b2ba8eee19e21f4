"""``session-ledger``: the command line for people.

Exit codes: 0 success; 1 the ledger refused (invalid, reused, revoked, expired,
not found); 2 bad input or usage; 3 unavailable (NATS or the service not reachable);
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.errors import BadRequest, ConfigError, LedgerError, Unavailable

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# Modules that add sub-commands: each has ``register(subparsers)``.
COMMAND_MODULES = [
    "ledger.cli_commands",
    "ledger.up",
    "projections.analytics_cli",
    "projections.cli",
    "consumers.cli",
]


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        k: v
        for k, v in {"nats_url": args.nats_url, "data_dir": getattr(args, "data_dir", None)}.items()
        if v is not None
    }
    return Settings(**overrides)


def emit(args: argparse.Namespace, result: BaseModel | dict[str, Any], human: str) -> None:
    if args.json:
        data = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
        print(json.dumps(data, sort_keys=True))
    else:
        print(human)


def run_client(args: argparse.Namespace, action: Callable[[LedgerClient], Awaitable[None]]) -> None:
    async def go() -> None:
        client = await LedgerClient.connect(settings_from(args).nats_url, timeout=args.timeout)
        try:
            await action(client)
        finally:
            await client.close()

    asyncio.run(go())


def exit_code(err: BaseException) -> int:
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(err, (BadRequest, ConfigError, ValidationError)):
        return EXIT_USAGE
    if isinstance(err, Unavailable):
        return EXIT_UNAVAILABLE
    return EXIT_REFUSED


def common_options() -> argparse.ArgumentParser:
    """Options every leaf command accepts (so ``--json`` can go at the end of a line)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--nats-url", help="NATS server URL (env LEDGER_NATS_URL; default nats://127.0.0.1:4222)"
    )
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")
    common.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    return common


COMMON = common_options()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="session-ledger",
        description="Event-sourced JWT refresh-token rotation on NATS JetStream.",
        epilog="Exit codes: 0 ok, 1 refused by the ledger, 2 bad input, 3 unavailable, 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (LedgerError, ValidationError) as err:
        code = getattr(err, "code", "bad_request")
        message = getattr(err, "message", None) or _validation_summary(err)
        if args.json:
            print(
                json.dumps({"ok": False, "error": {"code": code, "message": message}}),
                file=sys.stderr,
            )
        else:
            print(f"error: {code}: {message}", file=sys.stderr)
        return exit_code(err)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


def _validation_summary(err: BaseException) -> str:
    if isinstance(err, ValidationError):
        fields = sorted({".".join(str(p) for p in e["loc"]) or "input" for e in err.errors()})
        return f"invalid value for {', '.join(fields)}"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
