"""nats.conf carries exactly the permission sets of ``ledger.streaming.permissions`` (the
embedded ``up`` renders the same ones), and each role's rules keep the trust model's shape."""

from __future__ import annotations

from pathlib import Path

from ledger.streaming.permissions import (
    ANALYST,
    BEGIN,
    BROADCASTER,
    EDGE,
    END,
    PROJECTOR,
    ROLES,
    SERVICE,
    render_permissions,
    render_users,
)

CONF = (Path(__file__).resolve().parents[2] / "nats.conf").read_text()


def test_nats_conf_holds_the_rendered_permission_sets() -> None:
    assert f"{BEGIN}\n{render_permissions()}{END}" in CONF, "run: python -m ledger.streaming.permissions"
    assert render_users() in CONF


def test_only_the_ledger_touches_the_broadcasters_consumer() -> None:
    for role in ROLES:
        touches = [rule for rule in role.publish if BROADCASTER in rule or rule.endswith("CONSUMER.>")]
        assert bool(touches) == (role is SERVICE), (role.user, touches)


def test_only_the_ledger_creates_or_changes_streams_and_nobody_deletes_the_ledgers() -> None:
    for role in ROLES:
        for rule in role.publish:
            assert not rule.startswith("$JS.API.STREAM.DELETE.LEDGER"), (role.user, rule)
            assert not rule.startswith("$JS.API.STREAM.PURGE.LEDGER"), (role.user, rule)
            if "STREAM.CREATE." in rule:
                assert "*" not in rule and ">" not in rule, (role.user, rule)  # streams by name only
            if rule.startswith(("$JS.API.STREAM.CREATE.", "$JS.API.STREAM.UPDATE.")):
                assert role is SERVICE, (role.user, rule)  # a stream's subjects are its creator's choice
    purgeable = {r.split(".")[-1] for r in PROJECTOR.publish if r.startswith("$JS.API.STREAM.PURGE.")}
    assert purgeable == {"KV_LEDGER_PROJECTIONS", "KV_LEDGER_SESSIONS_1", "KV_LEDGER_SESSIONS_2"}


def test_edges_analysts_and_projectors_name_their_consumers_and_never_the_protected_ones() -> None:
    """``CONSUMER.CREATE.<stream>`` takes the consumer's name from the request body (it could
    redefine the broadcaster's); only the named subject is granted, the protected names denied."""
    for role in (EDGE, ANALYST, PROJECTOR):
        for rule in role.publish:
            if rule.startswith("$JS.API.CONSUMER.CREATE.") and not rule.startswith(
                "$JS.API.CONSUMER.CREATE.KV_"
            ):
                assert rule.count(".") >= 5, (role.user, rule)
        assert f"$JS.API.CONSUMER.CREATE.LEDGER.{BROADCASTER}" in role.deny_publish
        assert f"$JS.API.CONSUMER.CREATE.LEDGER.{BROADCASTER}.>" in role.deny_publish
    for name in ("analytics", "projection_LEDGER_SESSIONS_1"):
        assert f"$JS.API.CONSUMER.CREATE.LEDGER.{name}" in EDGE.deny_publish + ANALYST.deny_publish
