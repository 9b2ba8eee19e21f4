"""The AsyncAPI document and JSON Schemas: committed, regenerated here, and equal to the code."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, get_type_hints

import pytest

from ledger.contracts import asyncapi
from ledger.contracts.asyncapi import Answer, Refusal
from ledger.contracts.subjects import COMMANDS, QUERIES, Subjects
from ledger.service.app import command_routes
from ledger.service.handlers import LedgerService
from projections.sessions.queries import SessionQueries

DOCS = Path(__file__).parents[2] / "docs"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return asyncapi.document()


def test_the_committed_documents_are_what_the_code_generates() -> None:
    """Fails when a wire model or subject changed without `python -m ledger.contracts.asyncapi docs`."""
    expected = asyncapi.rendered(DOCS)
    for path, text in expected.items():
        assert path.exists(), f"{path} missing: run python -m ledger.contracts.asyncapi docs"
        assert path.read_text() == text, f"{path} is stale: run python -m ledger.contracts.asyncapi docs"
    assert set((DOCS / "schemas").glob("*.json")) == {p for p in expected if p.parent.name == "schemas"}
    assert asyncapi.main([str(DOCS), "--check"]) == 0


def channel_of(doc: dict[str, Any], address: str) -> tuple[str, dict[str, Any]]:
    [(name, channel)] = [(k, c) for k, c in doc["channels"].items() if c.get("address") == address]
    return name, channel


def request_model(doc: dict[str, Any], name: str) -> str:
    [ref] = [m["$ref"] for m in doc["channels"][name]["messages"].values()]
    payload = doc["components"]["messages"][ref.rsplit("/", 1)[-1]]["payload"]
    return str(payload["$ref"]).rsplit("/", 1)[-1]


def test_every_command_of_the_service_is_documented_with_its_models(doc: dict[str, Any]) -> None:
    fake = SimpleNamespace(
        **{m: getattr(LedgerService, m) for m in dir(LedgerService) if not m.startswith("_")}
    )
    for name, model, call in command_routes(fake):  # type: ignore[arg-type]
        op, _ = channel_of(doc, f"ledger.cmd.{name}")
        assert request_model(doc, op) == model.__name__
        result = get_type_hints(call)["return"]
        assert asyncapi.REPLIES[op] == Answer[result] | Refusal  # type: ignore[valid-type]
        assert doc["operations"][op]["reply"]["channel"]["$ref"] == f"#/channels/{op}_reply"


@pytest.mark.parametrize(
    ("subject", "method"),
    [
        ("ledger.q.sessions", "list_sessions"),
        ("ledger.q.session", "get_session"),
        ("ledger.q.introspect", "introspect"),
    ],
)
def test_every_query_is_documented_with_the_projection_s_models(
    doc: dict[str, Any], subject: str, method: str
) -> None:
    op, channel = channel_of(doc, subject)
    hints = get_type_hints(getattr(SessionQueries, method))
    assert request_model(doc, op) == hints["req"].__name__
    assert asyncapi.REPLIES[op] == Answer[hints["return"]] | Refusal  # type: ignore[name-defined]
    assert channel["bindings"]["nats"]["queue"] == "ledger-queries"


def test_events_notices_heartbeats_and_receipts_are_published_channels(doc: dict[str, Any]) -> None:
    addresses = {c.get("address") for c in doc["channels"].values()}
    for subject, _, _ in asyncapi.EVENTS:
        assert subject in addresses
    assert {
        "ledger.revoked.{kind}.{id}",
        "ledger.heartbeat.broadcast",
        "ledger.receipt.{verifier}",
    } <= addresses
    _, started = channel_of(doc, "ledger.ev.s.{sid}.started")
    assert set(started["parameters"]) == {"sid"}


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        assert isinstance(target, dict), ref


def test_every_wire_model_has_a_json_schema_that_names_its_fields() -> None:
    for name, model in asyncapi.WIRE_MODELS.items():
        schema = json.loads((DOCS / "schemas" / f"{name}.json").read_text())
        if name == "Event":
            assert schema["discriminator"]["propertyName"] == "type"
            continue
        assert set(schema.get("properties", {})) == set(model.model_fields), name
        assert schema.get("additionalProperties") is False or name == "Reply" or not model.model_fields


def test_every_subject_of_the_contract_is_documented(doc: dict[str, Any]) -> None:
    """A subject added to ``Subjects`` without its AsyncAPI channel fails here."""
    addresses = {c.get("address") for c in doc["channels"].values()}
    fixed = {v for v in vars(Subjects("ledger")).values() if isinstance(v, str) and not v.endswith(">")}
    assert fixed - {"ledger"} <= addresses
    assert {f"ledger.cmd.{c}" for c in COMMANDS} | {f"ledger.q.{q}" for q in QUERIES} <= addresses
