"""Real nats-servers running the repository's own nats.conf / nats-cluster.conf.

Only what cannot work on a test machine is rewritten: listen addresses, the store
directory, the monitoring port and (for the cluster) the route host names.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from nats.aio.client import Client as NATS

from ledger.streaming.connection import connect, flush_to_server
from ledger.streaming.embedded import NatsServer, free_port

REPO = Path(__file__).resolve().parents[2]
USERS = {
    "ledger": "LEDGER_SERVICE_PASSWORD",
    "app": "LEDGER_APP_PASSWORD",
    "edge": "LEDGER_EDGE_PASSWORD",
    "gateway": "LEDGER_GATEWAY_PASSWORD",
    "projector": "LEDGER_PROJECTOR_PASSWORD",
    "analyst": "LEDGER_ANALYST_PASSWORD",
    "sys": "NATS_SYS_PASSWORD",
}
CLUSTER_ENV = {"NATS_SERVER_NAME": "overridden-per-node", "NATS_ROUTE_PASSWORD": "pwroutesecret"}


def set_passwords(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fresh random passwords in the environment, where nats.conf reads them.

    nats-server parses an environment value like a config value: "2026-..." would be a
    date and "12345" a number. A leading letter keeps it a string (the README says so).
    """
    passwords = {user: f"pw{secrets.token_hex(16)}" for user in USERS}
    for user, env in USERS.items():
        monkeypatch.setenv(env, passwords[user])
    for env, value in CLUSTER_ENV.items():
        monkeypatch.setenv(env, value)
    return passwords


@dataclass
class ConfServer(NatsServer):
    """nats-server loading ``conf`` from the repository (copied, with ``replace`` applied)."""

    conf: str = "nats.conf"
    files: tuple[str, ...] = ("nats.conf",)
    replace: dict[str, str] = field(default_factory=dict)

    def config_text(self) -> str:
        for name in self.files:
            text = (REPO / name).read_text()
            for old, new in self.replace.items():
                text = text.replace(old, new)
            (self.store_dir.parent / name).write_text(text)
        return (
            f'include "{self.conf}"\n'
            f'server_name: "{self.name}"\n'
            f'listen: "{self.host}:{self.port}"\n'
            f'http: "127.0.0.1:{free_port()}"\n'
            f'jetstream {{ store_dir: "{self.store_dir}", max_memory_store: 256MB, max_file_store: 20GB }}\n'
            + self.extra_config
        )


def conf_cluster(base: Path, monkeypatch: pytest.MonkeyPatch, size: int = 3) -> list[ConfServer]:
    """``size`` nodes from nats-cluster.conf; NATS_ROUTES points at loopback ports."""
    cluster_ports = [free_port() for _ in range(size)]
    password = CLUSTER_ENV["NATS_ROUTE_PASSWORD"]
    routes = ", ".join(f"nats-route://route:{password}@127.0.0.1:{p}" for p in cluster_ports)
    monkeypatch.setenv("NATS_ROUTES", f"[{routes}]")
    return [
        ConfServer(
            store_dir=base / f"nats-{i}" / "jetstream",
            port=free_port(),
            name=f"nats-{i}",
            conf="nats-cluster.conf",
            files=("nats.conf", "nats-cluster.conf"),
            replace={"0.0.0.0:6222": f"127.0.0.1:{port}"},
        )
        for i, port in enumerate(cluster_ports, start=1)
    ]


@dataclass
class Secured:
    server: NatsServer
    passwords: dict[str, str]
    errors: dict[str, list[str]] = field(default_factory=dict)

    def url(self, user: str) -> str:
        return f"nats://{user}:{self.passwords[user]}@127.0.0.1:{self.server.port}"

    def recorder(self, user: str) -> Any:
        seen = self.errors.setdefault(user, [])

        async def on_error(exc: Exception) -> None:
            seen.append(str(exc))

        return on_error

    async def connect(self, user: str) -> NATS:
        return await connect(self.url(user), f"test-{user}", error_cb=self.recorder(user))


async def violation(sec: Secured, user: str, action: str, subject: str, queue: str = "") -> None:
    """Wait until the server reported a permissions violation for ``subject`` (and consume it)."""
    needle = f'permissions violation for {action} to "{subject.lower()}"'
    needle += f' using queue "{queue}"' if queue else ""
    errors = sec.errors.setdefault(user, [])
    for _ in range(100):
        for i, error in enumerate(errors):
            if error.lower().endswith(needle):
                del errors[i]
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no violation for {user} {action} {subject}: {sec.errors.get(user)}")


async def refused_publish(sec: Secured, nc: NATS, user: str, subject: str) -> None:
    await nc.publish(subject, b"{}")
    await flush_to_server(nc)
    await violation(sec, user, "publish", subject)


async def refused_subscribe(sec: Secured, nc: NATS, user: str, subject: str, queue: str = "") -> None:
    await nc.subscribe(subject, queue=queue)
    await flush_to_server(nc)
    await violation(sec, user, "subscription", subject, queue)


def documented_tls_block(cert_dir: Path) -> str:
    """nats.conf's commented-out ``tls {}`` block, uncommented, files taken from ``cert_dir``."""
    lines = (REPO / "nats.conf").read_text().splitlines()
    start = lines.index("# tls {")
    end = start + lines[start:].index("# }")
    block = "\n".join(line.removeprefix("# ") for line in lines[start : end + 1])
    return block.replace("/etc/nats/tls/", f"{cert_dir}/") + "\n"


def write_test_certificates(cert_dir: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1 (ca.pem, server.pem, server-key.pem)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "session-ledger test CA")])
    ca = _certificate(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = _certificate(name, ca_name, key.public_key(), ca_key, ca=False)
    cert_dir.mkdir(parents=True, exist_ok=True)
    (cert_dir / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (cert_dir / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (cert_dir / "server-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _certificate(
    subject: x509.Name, issuer: x509.Name, public: Any, signer: Any, *, ca: bool
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(signer, hashes.SHA256())
