"""``announce`` writes each line in one write, so processes sharing a stdout never interleave
inside a line (Python unbuffered: ``print`` writes the text and the newline separately)."""

from __future__ import annotations

import os
import subprocess
import sys

WRITER = """
import sys
from session_ledger.runtime import announce
for i in range(3000):
    announce(f"ready: worker {sys.argv[1]} line {i} " + "x" * 100)
"""


def test_concurrent_announcers_on_one_pipe_keep_whole_lines() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    read, write = os.pipe()
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(n)], stdout=write, env=env) for n in range(4)
    ]
    os.close(write)
    with os.fdopen(read) as stream:
        lines = stream.read().splitlines()
    assert all(w.wait(60) == 0 for w in writers)
    assert len(lines) == 12000
    assert all(line.startswith("ready: worker ") and line.count("ready:") == 1 for line in lines)
