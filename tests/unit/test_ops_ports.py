"""`up`'s monitoring ports: the default when free, a free one when taken, refusal when asked
for a taken one; the pending count read from JetStream ack subjects (both layouts)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from ledger.config import Settings
from ledger.domain.errors import ConfigError
from ledger.streaming.consumer import ack_pending, ack_position
from ledger.streaming.embedded import free_port
from session_ledger.cli.up import loopback_port, with_default_metrics


@pytest.fixture
def taken() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_the_default_port_when_it_is_free() -> None:
    port = free_port()
    assert loopback_port(None, port, "--x") == port


def test_another_port_when_the_default_is_taken(taken: int) -> None:
    chosen = loopback_port(None, taken, "--x")
    assert chosen != taken and chosen > 0


def test_an_asked_port_that_answers_is_refused(taken: int) -> None:
    with pytest.raises(ConfigError, match="--nats-monitor-port"):
        loopback_port(taken, 8222, "--nats-monitor-port")
    assert loopback_port(0, 8222, "--nats-monitor-port") == 0  # off


def test_up_serves_metrics_unless_told_otherwise() -> None:
    assert with_default_metrics(Settings()).metrics_listen.startswith("127.0.0.1:")  # type: ignore[union-attr]
    assert with_default_metrics(Settings(metrics_listen="off")).metrics_listen == "off"
    assert with_default_metrics(Settings(metrics_listen="127.0.0.1:1")).metrics_listen == "127.0.0.1:1"


@pytest.mark.parametrize(
    ("reply", "seq", "pending"),
    [
        ("$JS.ACK.LEDGER.analytics.1.42.40.1700000000000000000.7", 42, 7),
        ("$JS.ACK.hub.ACCHASH.LEDGER.analytics.1.42.40.1700000000000000000.7.rAnd0m", 42, 7),
    ],
)
def test_pending_and_position_from_either_ack_layout(reply: str, seq: int, pending: int) -> None:
    assert ack_position(reply)[0] == seq and ack_pending(reply) == pending
