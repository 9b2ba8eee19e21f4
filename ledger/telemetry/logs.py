"""Log lines: level and format (``text`` or ``json``) from the settings, and no token ever.

JSON lines carry ``ts``, ``level``, ``logger``, ``component`` (the component of ``up``
whose task logged it, set by the runtime through a context variable), ``msg``, and the
ids a call passed as ``extra`` (``event_id``, ``sid``, ``seq``, ...). As defence in depth
a filter replaces anything shaped like a refresh token or a JWT by ``[redacted]`` in
every line, whatever the format.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import TextIO

COMPONENT: contextvars.ContextVar[str] = contextvars.ContextVar("ledger_component", default="cli")
FIELDS = ("event_id", "event_type", "sid", "kid", "seq", "verifier", "command", "outcome", "reason")
TOKEN_SHAPES = re.compile(
    r"rt1\.[A-Za-z0-9_-]+\.\d+\.[A-Za-z0-9_-]+"  # refresh token
    r"|eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"  # JWT (JOSE header starts with {")
)
NOISY = ("nats", "faststream", "aiohttp", "asyncio")  # their INFO is not ours to show
HANDLER_NAME = "session-ledger"
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(component)s] %(name)s: %(message)s"


def redact(text: str) -> str:
    return TOKEN_SHAPES.sub("[redacted]", text)


class ContextFilter(logging.Filter):
    """Adds ``component`` and scrubs token-shaped text from the message and its arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.component = COMPONENT.get()
        message = record.getMessage()
        if TOKEN_SHAPES.search(message):
            record.msg, record.args = redact(message), None
        return True


class TextFormatter(logging.Formatter):
    """The classic line; tracebacks too are scrubbed (an exception's text may quote input)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "component": getattr(record, "component", COMPONENT.get()),
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            if (value := record.__dict__.get(name)) is not None:
                line[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__  # the type only: a message may quote input
        return redact(json.dumps(line, default=str))


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is emitted (a test may swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """One handler on stderr (or ``stream``) with this level and format, replacing the one a
    previous call installed; handlers installed by others (pytest's) stay."""
    handler = logging.StreamHandler(stream) if stream is not None else StderrHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in NOISY:
        logging.getLogger(name).setLevel(level if level == "DEBUG" else max(logging.WARNING, root.level))
    return handler
