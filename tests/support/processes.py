"""Helpers for tests that run the CLI as a real process."""

from __future__ import annotations

import subprocess
import time


def wait_ready(proc: subprocess.Popen[str], limit: float = 60) -> list[str]:
    """The lines ``up`` (or a component command) prints up to and including ``ready: ...``;
    fails with everything it printed if the process ends or ``limit`` passes first. Reads
    line by line: a process that prints nothing more blocks until it exits."""
    lines: list[str] = []
    deadline = time.monotonic() + limit
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("ready:") or not line:
            break
    assert lines and lines[-1].startswith("ready:"), "".join(lines)
    return lines
