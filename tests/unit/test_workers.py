"""The worker supervisor with real (tiny) child processes: exit codes, restarts, stopping."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from ledger.domain.errors import ConfigError
from session_ledger import workers
from session_ledger.workers import restart_delay, supervise, worker_env


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_worker_refusing_its_configuration_stops_the_group_at_once() -> None:
    said: list[str] = []
    code = supervise(2, _py("import sys; sys.exit(2)"), lambda i: dict(os.environ), say=said.append)
    assert code == 2 and not any("restarted" in x for x in said)


def test_a_crash_loop_gives_up_after_backing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "restart_delay", lambda n: 0.0)
    said: list[str] = []
    code = supervise(1, _py("import sys; sys.exit(1)"), lambda i: dict(os.environ), say=said.append)
    assert code == 1
    assert sum("restarted" in x for x in said) == workers.MAX_QUICK_FAILURES - 1
    assert [restart_delay(n) for n in (1, 2, 3, 4, 5, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_sigterm_stops_every_worker_and_returns_0(tmp_path: Path) -> None:
    marker = tmp_path / "pids"
    child = _py(f"import os, time; open({str(marker)!r}, 'a').write(f'{{os.getpid()}}\\n'); time.sleep(60)")

    def terminate_once_all_run() -> None:  # SIGTERM to ourselves once each worker wrote its pid
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(marker.read_text().split() if marker.exists() else []) < 3:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    def started(_line: str) -> None:  # said once the workers run (the handlers are installed)
        threading.Thread(target=terminate_once_all_run, daemon=True).start()

    code = supervise(3, child, lambda i: dict(os.environ), grace=10, say=started)
    assert code == 0
    pids = [int(x) for x in marker.read_text().split()]
    assert len(pids) == 3 and not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back


def test_each_worker_gets_its_own_metrics_port_and_index() -> None:
    env = worker_env({"A": "1"}, 2, "127.0.0.1:9464")
    assert env == {
        "A": "1", "LEDGER_WORKER": "2", "LEDGER_METRICS_LISTEN": "127.0.0.1:9466",
        "LEDGER_SUPERVISOR_PID": str(os.getpid()),
    }  # fmt: skip
    assert worker_env({}, 1, "[::1]:9464")["LEDGER_METRICS_LISTEN"] == "[::1]:9465"
    for off in ("off", "none", "0", None):
        assert "LEDGER_METRICS_LISTEN" not in worker_env({}, 1, off)
    with pytest.raises(ConfigError, match="host:port"):
        supervise(2, _py("pass"), lambda i: worker_env({}, i, "localhost"), say=lambda _: None)


def test_a_signal_during_the_restart_back_off_stops_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "restart_delay", lambda n: 60.0)  # a long back-off

    def terminate_soon(_line: str) -> None:
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()

    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)
        if "exited" in line:
            terminate_soon(line)

    code = supervise(1, _py("import sys; sys.exit(1)"), lambda i: dict(os.environ), say=say)
    assert code == 0 and not any("restarted" in x for x in said)  # a slept-out back-off restarts
