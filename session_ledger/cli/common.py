"""What every CLI command shares: options, settings, output, exit codes, a client call.

Exit codes: 0 success; 1 the ledger refused (invalid, reused, revoked, expired,
not found); 2 bad input or usage; 3 unavailable (NATS or the service not reachable);
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from nats.aio.client import Client as NATS
from pydantic import BaseModel, ValidationError

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.domain.errors import BadRequest, ConfigError, Unavailable
from ledger.streaming.connection import connect
from ledger.streaming.credentials import role_url
from ledger.telemetry import logs, traces

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def settings_from(args: argparse.Namespace, role: str | None = None) -> Settings:
    """The settings for this command; connecting as ``role`` (a nats.conf user) with the
    credentials the embedded ``up`` generated in the data dir, when the URL has none."""
    given = {"nats_url": getattr(args, "nats_url", None), "data_dir": getattr(args, "data_dir", None)}
    given |= {name: getattr(args, name, None) for name in ("log_level", "log_format", "metrics_listen")}
    overrides = {k: v for k, v in given.items() if v is not None}
    settings = Settings(**overrides)
    if role is None:
        return settings
    return settings.model_copy(update={"nats_url": role_url(settings.nats_url, settings.data_dir, role)})


def emit(args: argparse.Namespace, result: BaseModel | dict[str, Any], human: str) -> None:
    if args.json:
        data = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
        print(json.dumps(data, sort_keys=True))
    else:
        print(human)


def run_client(args: argparse.Namespace, action: Callable[[LedgerClient], Awaitable[None]]) -> None:
    async def go() -> None:
        client = await LedgerClient.connect(settings_from(args, "app").nats_url, timeout=args.timeout)
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
    common.add_argument(
        "--data-dir",
        type=Path,
        help="state dir: keys, DuckDB, credentials made by `up` (env LEDGER_DATA_DIR; default ./.ledger)",
    )
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")
    common.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    common.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr (env LEDGER_LOG_LEVEL; default INFO)",
    )
    common.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log lines as text or JSON lines (env LEDGER_LOG_FORMAT; default text)",
    )
    return common


def serving_options() -> argparse.ArgumentParser:
    """Options of the long-running commands (up, service, edge, broadcast, projections/analytics run)."""
    serving = argparse.ArgumentParser(add_help=False)
    serving.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics there, or `off` (env LEDGER_METRICS_LISTEN; default: off, "
        "except `up`: 127.0.0.1:9464, or a free port when that one is taken)",
    )
    return serving


COMMON = common_options()
SERVING = serving_options()


def configure_logging(args: argparse.Namespace) -> None:
    """Level and format from the flags, else the environment (every command, before it runs);
    traces too (``LEDGER_TRACES``), flushed when the command ends."""
    settings = settings_from(args)
    logs.configure(settings.log_level, settings.log_format)
    if (provider := traces.configure(settings.traces)) is not None:
        atexit.register(provider.shutdown)


def validation_summary(err: BaseException) -> str:
    if isinstance(err, ValidationError):
        fields = sorted({".".join(str(p) for p in e["loc"]) or "input" for e in err.errors()})
        return f"invalid value for {', '.join(fields)}"
    return str(err)


def run_nats(args: argparse.Namespace, settings: Settings, action: Callable[[NATS], Awaitable[None]]) -> None:
    """Run ``action`` with a plain NATS connection (commands that read streams or buckets)."""

    async def go() -> None:
        nc = await connect(settings.nats_url, "ledger-cli", deadline=args.timeout)
        try:
            await action(nc)
        finally:
            await nc.drain()

    asyncio.run(go())


class ProgressBar:
    """A one-line bar on stderr, redrawn at most ten times a second."""

    def __init__(self, label: str, out: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.out = out or sys.stderr
        self.width = width
        self._last_draw = 0.0
        self._drawn = False

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        share = done / total if total else 1.0
        filled = int(share * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        self.out.write(f"\r{self.label} [{bar}] {share:6.1%} {done}/{total}")
        self.out.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self.out.write("\n")
            self.out.flush()
