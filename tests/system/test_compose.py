"""docker-compose.yml checked without Docker: structure, mounted configs, ports, and
credentials wired consistently with nats.conf. The NATS configs are also loaded by a real
nats-server (``-t``) with the environment compose would give them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from ledger.streaming.embedded import find_binary
from session_ledger.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
SINGLE = {"nats", "ledger", "broadcaster", "projections", "edge"}
CLUSTER = {"nats-1", "nats-2", "nats-3", "ledger-r3", "broadcaster-r3", "projections-r3", "edge-r3"}
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?[?-][^}]*)?\}")
# Which nats.conf user each role must connect as.
ROLE_USER = {"service": "ledger", "broadcast": "ledger", "up": "projector", "edge": "edge"}


def dummy_env() -> dict[str, str]:
    names = re.findall(r"^([A-Z0-9_]+)=", (REPO / ".env.example").read_text(), re.M)
    return {name: f"pw{name.lower().replace('_', '')}" for name in names}


def interpolate(value: str, env: dict[str, str]) -> str:
    return INTERPOLATION.sub(lambda m: env[m[1]], value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def conf_users() -> dict[str, str]:
    """nats.conf user -> the environment variable holding its password."""
    text = (REPO / "nats.conf").read_text()
    return dict(re.findall(r"\{\s*user:\s*([\w-]+),\s*password:\s*\$([A-Z0-9_]+)", text))


def conf_env_refs(*names: str) -> set[str]:
    """``$VAR`` references a config reads from the environment (not defined in the file)."""
    refs: set[str] = set()
    defined: set[str] = set()
    for name in names:
        text = "\n".join(line.split("#", 1)[0] for line in (REPO / name).read_text().splitlines())
        refs |= set(re.findall(r'(?<!")\$([A-Z][A-Z0-9_]*)', text))
        defined |= set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*=", text, re.M))
    return refs - defined


def nats_services(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if str(s.get("image", "")).startswith("nats:")}


def app_services(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if name not in nats_services(services)}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source, for ``source:target[:mode]`` volume strings."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def test_profiles_hold_a_single_node_and_a_cluster_stack(services: dict[str, Any]) -> None:
    by_profile: dict[str, set[str]] = {}
    for name, service in services.items():
        assert len(service["profiles"]) == 1, name
        by_profile.setdefault(service["profiles"][0], set()).add(name)
    assert by_profile == {"single": SINGLE, "cluster": CLUSTER}


def test_nats_runs_the_official_image_with_the_mounted_configs(services: dict[str, Any]) -> None:
    nodes = nats_services(services)
    assert set(nodes) == {"nats", "nats-1", "nats-2", "nats-3"}
    for name, node in nodes.items():
        assert node["image"].startswith("nats:2.")
        flag, conf = node["command"]
        assert flag == "--config"
        files = {target: source for target, source in mounts(node).items() if source.startswith("./")}
        assert conf in files, f"{name} loads a config it does not mount"
        for target, source in files.items():
            assert (REPO / source).is_file(), source
            assert Path(target).parent == Path(conf).parent  # `include` is relative
        assert mounts(node)["/data"].endswith("-data")  # named volume for store_dir
    assert 'store_dir: "/data/jetstream"' in (REPO / "nats.conf").read_text()
    for name in ("nats-1", "nats-2", "nats-3"):
        assert set(mounts(nodes[name]).values()) >= {"./nats.conf", "./nats-cluster.conf"}


def test_nats_gets_every_variable_its_config_reads(services: dict[str, Any]) -> None:
    env = dummy_env()
    for name, node in nats_services(services).items():
        files = [Path(s).name for s in mounts(node).values() if s.startswith("./")]
        missing = conf_env_refs(*files) - set(node["environment"])
        assert not missing, f"{name} lacks {missing}"
    names = {services[n]["environment"]["NATS_SERVER_NAME"] for n in ("nats-1", "nats-2", "nats-3")}
    assert names == {"nats-1", "nats-2", "nats-3"}  # the host names the routes dial
    routes = interpolate(services["nats-1"]["environment"]["NATS_ROUTES"], env)
    for node in sorted(names):
        assert f"nats-route://route:{env['NATS_ROUTE_PASSWORD']}@{node}:6222" in routes


@pytest.mark.parametrize("node", ["nats", "nats-1"])
def test_real_nats_server_accepts_the_configs(services: dict[str, Any], node: str, tmp_path: Path) -> None:
    env = dummy_env()
    service = services[node]
    for target, source in mounts(service).items():
        if source.startswith("./"):
            shutil.copy(REPO / source, tmp_path / Path(target).name)
    server_env = {k: interpolate(str(v), env) for k, v in service["environment"].items()}
    conf = tmp_path / Path(service["command"][1]).name
    done = subprocess.run(
        [find_binary(), "-c", str(conf), "-t"], env=server_env, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr + done.stdout


def test_each_process_connects_as_its_own_user(services: dict[str, Any]) -> None:
    users = conf_users()
    assert set(users) == {"ledger", "app", "edge", "gateway", "projector", "analyst", "sys"}
    for name, app in app_services(services).items():
        url = app["environment"]["LEDGER_NATS_URL"]
        first = urlsplit(url.split(",")[0])
        assert first.username == ROLE_USER[app["command"][1]], name
        assert first.password == f"${{{users[first.username]}}}", f"{name}: password of another user"
        hosts = [first.netloc.split("@")[1], *url.split(",")[1:]]
        profile = app["profiles"][0]
        for host in hosts:
            node, port = host.split(":")
            assert port == "4222" and services[node]["profiles"] == [profile], name
            assert app["depends_on"][node] == {"condition": "service_healthy"}, name


def test_no_secret_is_written_in_the_repository(services: dict[str, Any]) -> None:
    example = (REPO / ".env.example").read_text()
    for name, service in services.items():
        for key, value in service.get("environment", {}).items():
            if "PASSWORD" in key or "PASSPHRASE" in key:
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", str(value)), f"{name}.{key}"
    used = set(INTERPOLATION.findall((REPO / "docker-compose.yml").read_text()))
    declared = set(re.findall(r"^([A-Z0-9_]+)=$", example, re.M))
    assert used <= declared, f"not in .env.example: {used - declared}"
    assert re.search(r"^\.env$", (REPO / ".gitignore").read_text(), re.M)
    assert ".env" in (REPO / ".dockerignore").read_text().split()


def test_ports(services: dict[str, Any]) -> None:
    for name, node in nats_services(services).items():
        published = {p.rsplit(":", 1)[1]: p for p in node["ports"]}
        assert set(published) == {"4222", "8222"}, name  # clients, monitoring; never 6222
        assert published["8222"].startswith("127.0.0.1:"), "monitoring stays on the host"
    for name in ("edge", "edge-r3"):
        listen = services[name]["command"][-1]
        assert services[name]["ports"] == [f"{listen.split(':')[1]}:{listen.split(':')[1]}"]
    assert all("ports" not in s for n, s in app_services(services).items() if not n.startswith("edge"))


def test_replicas_match_the_profile(services: dict[str, Any]) -> None:
    for app in app_services(services).values():
        expected = "3" if app["profiles"] == ["cluster"] else "1"
        assert app["environment"]["LEDGER_REPLICAS"] == expected


def test_keys_are_shared_by_the_writer_and_read_only_for_projections(services: dict[str, Any]) -> None:
    for suffix in ("", "-r3"):
        ledger, projections = services[f"ledger{suffix}"], services[f"projections{suffix}"]
        key_dir = ledger["environment"]["LEDGER_KEY_DIR"]
        assert projections["environment"]["LEDGER_KEY_DIR"] == key_dir
        assert f"ledger-keys:{key_dir}" in ledger["volumes"]
        assert f"ledger-keys:{key_dir}:ro" in projections["volumes"]
        assert "LEDGER_KEY_PASSPHRASE" in ledger["environment"]


def test_app_image_and_commands_exist(services: dict[str, Any]) -> None:
    assert (REPO / "Dockerfile").is_file()
    parser = build_parser()
    for name, app in app_services(services).items():
        assert app["build"] == "." and app["command"][0] == "session-ledger", name
        parser.parse_args(app["command"][1:])  # exits (fails the test) on an unknown command
