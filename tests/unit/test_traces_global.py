"""An application's own global OpenTelemetry provider is noticed (within the recheck period),
in a child process: a global provider cannot be unset, and this test process must not keep one."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import time
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from ledger.telemetry import traces

assert not traces.recording()
trace.set_tracer_provider(TracerProvider())
deadline = time.monotonic() + 30
while not traces.recording() and time.monotonic() < deadline:
    time.sleep(0.05)
assert traces.recording(), "the global provider was not noticed"
with traces.client_span("ledger.cmd.rotate") as headers:
    assert headers and "traceparent" in headers
print("ok")
"""


def test_a_global_provider_set_later_is_noticed() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
