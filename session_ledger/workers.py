"""``session-ledger service --workers N``: N service processes on one machine, one supervisor.

A service instance is one Python process, so it uses one core; the instances of a queue
group share the commands between them, so N processes use N cores with nothing shared but
NATS. The supervisor starts them, passes each a copy of its environment (the NATS URL goes
there, never on a command line), restarts one that exits, and on SIGINT or SIGTERM stops
them all (SIGTERM, then SIGKILL after the grace period). A worker refusing its configuration
(exit 2) stops the group at once with that code, and so does one that keeps failing right
after each start (a crash loop is not a service); the restarts in between back off.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType

from ledger.telemetry.endpoint import metrics_enabled, split_listen
from session_ledger.runtime import announce

STARTUP_SECONDS = 15.0  # a worker that exits sooner after its start failed quickly
MAX_QUICK_FAILURES = 5  # in a row, for one worker: then the group stops
EXIT_CONFIG = 2  # the CLI's exit code for bad input or configuration: restarting cannot help
POLL_SECONDS = 0.2
SUPERVISOR_ENV = "LEDGER_SUPERVISOR_PID"


@dataclass
class Worker:
    index: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    quick_failures: int = 0  # consecutive exits within STARTUP_SECONDS of a start


def restart_delay(quick_failures: int) -> float:
    """Seconds before a restart: 0.5 s, doubling with each quick failure in a row (max 8 s)."""
    return float(min(8.0, 0.5 * 2 ** max(0, quick_failures - 1)))


def worker_env(base: Mapping[str, str], index: int, metrics_listen: str | None) -> dict[str, str]:
    """Worker ``index``'s environment: the supervisor's, with its own metrics port (base + i).
    A malformed listen address is the ``ConfigError`` the metrics endpoint itself would raise."""
    env = dict(base)
    env["LEDGER_WORKER"] = str(index)
    env[SUPERVISOR_ENV] = str(os.getpid())
    if metrics_listen is not None and metrics_enabled(metrics_listen):
        host, port = split_listen(metrics_listen)
        host = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
        env["LEDGER_METRICS_LISTEN"] = f"{host}:{port + index}"
    return env


def supervise(
    count: int,
    command: list[str],
    env_of: Callable[[int], dict[str, str]],
    *,
    grace: float = 15.0,
    say: Callable[[str], None] = announce,
) -> int:
    """Run ``count`` workers until a signal; the exit code (0, 130 after SIGINT, or a failed
    worker's)."""
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    envs = [env_of(i) for i in range(count)]  # a configuration error surfaces before any start
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    workers: dict[int, Worker] = {}
    code = 0
    try:
        for i in range(count):
            workers[i] = Worker(i, subprocess.Popen(command, env=envs[i]))
        say(f"service: {count} workers (pids {', '.join(str(w.process.pid) for w in workers.values())})")
        while not received:
            time.sleep(POLL_SECONDS)
            for i, worker in list(workers.items()):
                rc = worker.process.poll()
                if rc is None or received:
                    continue
                quick = time.monotonic() - worker.started < STARTUP_SECONDS
                failures = worker.quick_failures + 1 if quick else 0
                say(f"service: worker {i} (pid {worker.process.pid}) exited with {rc}")
                if rc == EXIT_CONFIG or failures >= MAX_QUICK_FAILURES:
                    code = rc or 1
                    received.append(0)
                    break
                if _waited_out(restart_delay(failures), received):
                    break  # a signal during the back-off: stop, do not restart
                workers[i] = Worker(i, subprocess.Popen(command, env=envs[i]), quick_failures=failures)
                say(f"service: worker {i} restarted (pid {workers[i].process.pid})")
    finally:
        stop_all(list(workers.values()), grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if signal.SIGINT in received:
        return 130
    return code


def _waited_out(seconds: float, received: list[int]) -> bool:
    """Sleep ``seconds`` in short steps; True as soon as a signal has been received."""
    deadline = time.monotonic() + seconds
    while not received and time.monotonic() < deadline:
        time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
    return bool(received)


def stop_all(workers: list[Worker], grace: float) -> None:
    """SIGTERM each worker we started, then SIGKILL whichever is still running after ``grace``."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for worker in workers:
        try:
            worker.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()


def follow_supervisor(environ: Mapping[str, str] = os.environ) -> None:
    """In a worker: stop (SIGTERM to itself, the clean path) once its supervisor is gone, even
    if the supervisor was killed with SIGKILL and could not stop it: no orphaned workers."""
    supervisor = environ.get(SUPERVISOR_ENV)
    if not supervisor or not supervisor.isdigit():
        return

    def watch() -> None:
        while os.getppid() == int(supervisor):
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="follow-supervisor", daemon=True).start()


def worker_command() -> list[str]:
    """One worker: ``session-ledger service`` with its options from the environment."""
    return [sys.executable, "-m", "session_ledger.cli", "service"]


def default_workers() -> int:
    return os.cpu_count() or 1
