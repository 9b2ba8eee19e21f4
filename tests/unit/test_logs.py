"""Log lines: level and format from the settings, component and ids in JSON, never a token."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from ledger.config import Settings
from ledger.telemetry import logs
from session_ledger.cli import build_parser
from session_ledger.cli.common import configure_logging

REFRESH = "rt1.AAAAAAAAAAAAAAAAAAAAAA.3.c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0cw"
JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    yield out
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_carry_component_and_ids(captured: io.StringIO) -> None:
    logs.configure("INFO", "json", captured)
    log = logging.getLogger("ledger.audit")

    async def in_component() -> None:
        log.info("revoked: %s", "session", extra={"event_id": "e1", "sid": "s1", "seq": 7})

    async def main() -> None:
        label = logs.COMPONENT.set("ledger-service")
        try:
            task = asyncio.create_task(in_component())  # tasks copy the context, as the runtime's do
        finally:
            logs.COMPONENT.reset(label)
        await task
        log.debug("not shown at INFO")

    asyncio.run(main())
    [line] = lines(captured)
    assert line["component"] == "ledger-service" and line["logger"] == "ledger.audit"
    assert (line["event_id"], line["sid"], line["seq"], line["level"]) == ("e1", "s1", 7, "INFO")
    assert line["msg"] == "revoked: session" and str(line["ts"]).endswith("+00:00")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_token_reaches_a_line_whatever_the_format(captured: io.StringIO, fmt: str) -> None:
    logs.configure("DEBUG", fmt, captured)
    log = logging.getLogger("anything")
    log.warning("presented %s", REFRESH)
    log.warning(f"header Bearer {JWT}")
    try:
        raise ValueError(REFRESH)
    except ValueError:
        log.exception("failed")
    text = captured.getvalue()
    assert REFRESH not in text and JWT not in text
    assert text.count("[redacted]") >= 2


def test_exceptions_in_json_name_the_type_only(captured: io.StringIO) -> None:
    logs.configure("INFO", "json", captured)
    try:
        raise ValueError(REFRESH)
    except ValueError:
        logging.getLogger("x").exception("boom")
    [line] = lines(captured)
    assert line["error"] == "ValueError" and REFRESH not in captured.getvalue()


def test_level_applies_and_library_info_stays_quiet(captured: io.StringIO) -> None:
    logs.configure("INFO", "text", captured)
    logging.getLogger("ledger.x").info("ours")
    logging.getLogger("nats.aio.client").info("theirs")
    logging.getLogger("ledger.x").debug("too fine")
    assert "ours" in captured.getvalue()
    assert "theirs" not in captured.getvalue() and "too fine" not in captured.getvalue()
    assert "[cli] ledger.x: ours" in captured.getvalue()


def test_settings_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_LOG_LEVEL", "debug")
    monkeypatch.setenv("LEDGER_LOG_FORMAT", "json")
    assert (Settings().log_level, Settings().log_format) == ("DEBUG", "json")
    monkeypatch.setenv("LEDGER_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.delenv("LEDGER_LOG_FORMAT")
    args = build_parser().parse_args(
        ["sessions", "show", "x", "--log-level", "warning", "--log-format", "json"]
    )
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(args)  # the flag wins over the environment
        assert root.level == logging.WARNING
        [ours] = [h for h in root.handlers if h.get_name() == logs.HANDLER_NAME]
        assert isinstance(ours.formatter, logs.JsonFormatter)
        assert ours.stream is sys.stderr  # whatever stderr is when a line goes out
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_every_revoking_event_is_counted_by_kind() -> None:
    """A revocation kind the audit forgot (the gateway's single-token one was) is invisible on
    the dashboard."""
    from datetime import UTC, datetime

    from ledger.domain.events import AccessTokenRevoked
    from ledger.telemetry.audit import revocation_of

    token = AccessTokenRevoked(event_id="e" * 32, occurred_at=datetime.now(UTC), jti="j1", sid="S" * 22,
                               sub="ann", expires_at=datetime.now(UTC))  # fmt: skip
    assert revocation_of(token) == ("token", "revoked")
