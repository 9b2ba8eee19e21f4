"""``session-ledger``: the command line for people. One module per command group.

Exit codes: 0 success; 1 the ledger refused (invalid, reused, revoked, expired,
not found); 2 bad input or usage; 3 unavailable (NATS or the service not reachable);
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pydantic import ValidationError

from ledger.domain.errors import LedgerError
from ledger.domain.ids import is_generated_id
from session_ledger.cli import analytics, edge, gateway, keys, projections, session, sessions, up
from session_ledger.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    configure_logging,
    exit_code,
    validation_summary,
)

# The command groups, in the order ``--help`` lists them. Each has ``register(subparsers)``.
GROUPS = (session, up, analytics, sessions, projections, edge, gateway, keys)


class DefaultsFormatter(argparse.HelpFormatter):
    """Append a default to an option's help, unless it has none or the help names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.default in (None, False, argparse.SUPPRESS)
            or "default" in text
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Every command's ``--help`` shows the defaults (sub-commands inherit the class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="session-ledger",
        description="Event-sourced JWT refresh-token rotation on NATS JetStream.",
        epilog="Exit codes: 0 ok, 1 refused by the ledger, 2 bad input, 3 unavailable, 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def _options(parser: argparse.ArgumentParser) -> dict[str, bool]:
    """Every option string in the whole command tree, and whether it takes a value."""
    found: dict[str, bool] = {}
    for action in parser._actions:
        found.update((option, action.nargs != 0) for option in action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found.update(_options(child))
    return found


def protect_dashed_ids(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Let a session or key id that begins with ``-`` (one in 64: they are base64url) parse.

    argparse takes such a value for an unknown option. An option's value is joined to its
    option (``--current=-Ab…``); a positional one moves behind ``--``. Only words shaped like
    the ids the service makes (22 or 16 characters of base64url) that are no option's name
    are touched, and nothing when the user wrote a ``--`` already.
    """
    if "--" in argv:
        return argv
    options = _options(parser)
    out: list[str] = []
    tail: list[str] = []
    for word in argv:
        if word.startswith("-") and word not in options and is_generated_id(word):
            if out and options.get(out[-1]):
                out[-1] = f"{out[-1]}={word}"
            else:
                tail.append(word)
            continue
        out.append(word)
    return [*out, "--", *tail] if tail else out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(protect_dashed_ids(parser, sys.argv[1:] if argv is None else argv))
    try:
        configure_logging(args)
        args.func(args)
    except (LedgerError, ValidationError) as err:
        code = getattr(err, "code", "bad_request")
        message = getattr(err, "message", None) or validation_summary(err)
        if args.json:
            print(json.dumps({"ok": False, "error": {"code": code, "message": message}}), file=sys.stderr)
        else:
            print(f"error: {code}: {message}", file=sys.stderr)
        return exit_code(err)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


__all__ = ["build_parser", "main"]
