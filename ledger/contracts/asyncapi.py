"""The wire contract as a FastStream app: the source of ``docs/asyncapi.json`` and ``docs/schemas``.

A module-level ``app`` whose broker declares every subject session-ledger answers or
publishes on, with the pydantic models that travel there: commands and queries
(request/reply), ledger events, revocation notices, the broadcaster's heartbeat and
edge receipts, the verifiers' key acknowledgements. It is never started: the running service
answers on plain nats-py subscriptions with the same models (``ledger.service.app``, where
FastStream's per-message path cost more than a rotation), and a test checks that both list the
same commands and that every subject of ``Subjects`` is here. Default prefix ``ledger``.

    python -m ledger.contracts.asyncapi docs            # write docs/asyncapi.json + docs/schemas/
    python -m ledger.contracts.asyncapi docs --check    # exit 1 when they drift from the code
    faststream docs serve ledger.contracts.asyncapi:app # browse it (needs faststream[cli])
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, get_type_hints

from faststream import FastStream
from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI
from pydantic import BaseModel, ConfigDict, TypeAdapter

from ledger.contracts.commands import (
    ClientContext,
    ErrorBody,
    LogoutRequest,
    Reply,
    Revocation,
    RevokeAccessRequest,
    RevokeOwnSessionRequest,
    RevokeSessionRequest,
    RevokeUserRequest,
    RotateRequest,
    SignOutOthersRequest,
    StartSessionRequest,
    StepUp,
    StepUpRequest,
    TokenPair,
)
from ledger.contracts.notices import Notice
from ledger.contracts.queries import (
    GetSessionRequest,
    Introspection,
    IntrospectRequest,
    ListSessionsRequest,
    SessionList,
    SessionView,
)
from ledger.contracts.receipts import KeyAck, Receipt
from ledger.domain.events import (
    Event,
    ReuseDetected,
    SessionAdmitted,
    SessionRevoked,
    SessionStarted,
    SessionSteppedUp,
    SigningKeyActivated,
    SigningKeyAdded,
    SigningKeyRetired,
    TokenRotated,
    UserSessionsRevoked,
)

R = TypeVar("R", bound=BaseModel)
VERSION = "1"  # the wire contract's version (events carry their own schema_version)


class Answer(BaseModel, Generic[R]):
    """A successful reply: ``{"ok": true, "result": ...}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ok: Literal[True]
    result: R


class Refusal(BaseModel):
    """A refused request: ``{"ok": false, "error": {"code", "message"}}``; codes: invalid_token,
    token_reused, session_revoked, session_expired, not_found, bad_request, unavailable."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ok: Literal[False]
    error: ErrorBody


class Heartbeat(BaseModel):
    """The broadcaster's liveness beat (every 250 ms while its consumer goes through)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    at: float


class Ping(BaseModel):
    """The key-acknowledgement ping: an empty body (every live verifier answers a ``KeyAck``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class RebuildRequest(BaseModel):
    """Ask the running analytics projection to rebuild its DuckDB file (an empty object)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class RebuildAnswer(BaseModel):
    """``ok`` plus what the rebuild loaded (or ``error``)."""

    model_config = ConfigDict(extra="allow")
    ok: bool


broker = NatsBroker("nats://127.0.0.1:4222", apply_types=True)
Handler = Callable[..., Awaitable[Any]]


REPLIES: dict[str, Any] = {}  # operation title -> the reply's type (FastStream documents requests only)


def _documented(subject: str, title: str, description: str, queue: str) -> Callable[[Handler], Handler]:
    """Declare a request/reply subject; the handler's annotations give the message schemas."""
    subscriber = broker.subscriber(subject, queue=queue, title=title, description=description)

    def declare(handler: Handler) -> Handler:
        REPLIES[title] = get_type_hints(handler)["return"]
        return subscriber(handler)

    return declare


def _no_body() -> Any:
    raise NotImplementedError("documentation only: the ledger service answers this subject")


# -- commands (ledger service, queue group ledger-service) ---------------------------------
SERVICE = "ledger-service"


@_documented(
    "ledger.cmd.start", "start", "Start a session (token family) for an authenticated user.", SERVICE
)
async def start(request: StartSessionRequest) -> Answer[TokenPair] | Refusal:
    return _no_body()  # type: ignore[no-any-return]


@_documented(
    "ledger.cmd.rotate",
    "rotate",
    "Exchange a refresh token for a new pair. A retry (or a second tab) inside the grace window "
    "gets the same successor; an older genuine token is reuse and revokes the family.",
    SERVICE,
)
async def rotate(request: RotateRequest) -> Answer[TokenPair] | Refusal:
    return _no_body()  # type: ignore[no-any-return]


@_documented("ledger.cmd.revoke", "revoke", "Revoke one session by id (admin action).", SERVICE)
async def revoke(request: RevokeSessionRequest) -> Answer[Revocation] | Refusal:
    return _no_body()  # type: ignore[no-any-return]


@_documented(
    "ledger.cmd.logout", "logout", "Revoke the session of a refresh token (proof of possession).", SERVICE
)
async def logout(request: LogoutRequest) -> Answer[Revocation] | Refusal:
    return _no_body()  # type: ignore[no-any-return]


@_documented(
    "ledger.cmd.revoke_user",
    "revoke_user",
    "Log a user out everywhere: every session started before this event is dead.",
    SERVICE,
)
async def revoke_user(request: RevokeUserRequest) -> Answer[Revocation] | Refusal:
    return _no_body()  # type: ignore[no-any-return]


@_documented(
    "ledger.cmd.step_up",
    "step_up",
    "The backend re-authenticated the user of a session (e.g. MFA): its next access tokens carry acr/amr.",
    SERVICE,
)
async def step_up(request: StepUpRequest) -> Answer[StepUp] | Refusal:
    return _no_body()  # type: ignore[no-any-return]


@_documented(
    "ledger.cmd.revoke_own",
    "revoke_own",
    "Self-service: the user revokes another of their own sessions.",
    SERVICE,
)
async def revoke_own(request: RevokeOwnSessionRequest) -> Answer[Revocation] | Refusal:
    return _no_body()  # type: ignore[no-any-return]


@_documented(
    "ledger.cmd.sign_out_others",
    "sign_out_others",
    "Self-service: revoke every session of the user except the current one (this device).",
    SERVICE,
)
async def sign_out_others(request: SignOutOthersRequest) -> Answer[Revocation] | Refusal:
    return _no_body()  # type: ignore[no-any-return]


@_documented(
    "ledger.cmd.revoke_access",
    "revoke_access",
    "Revoke one access token alone (RFC 7009 through the gateway): proof of possession, its jti "
    "is broadcast to the edges as a token notice.",
    SERVICE,
)
async def revoke_access(request: RevokeAccessRequest) -> Answer[Revocation] | Refusal:
    return _no_body()  # type: ignore[no-any-return]


# -- queries (sessions projection, queue group ledger-queries) -------------------------------
QUERIES = "ledger-queries"


@_documented("ledger.q.sessions", "list_sessions", "A user's sessions (active only by default).", QUERIES)
async def list_sessions(request: ListSessionsRequest) -> Answer[SessionList] | Refusal:
    return _no_body()  # type: ignore[no-any-return]


@_documented("ledger.q.session", "get_session", "One session's state, or error not_found.", QUERIES)
async def get_session(request: GetSessionRequest) -> Answer[SessionView] | Refusal:
    return _no_body()  # type: ignore[no-any-return]


@_documented(
    "ledger.q.introspect", "introspect", "RFC 7662 introspection of a refresh or access token.", QUERIES
)
async def introspect(request: IntrospectRequest) -> Answer[Introspection] | Refusal:
    return _no_body()  # type: ignore[no-any-return]


@_documented(
    "ledger.analytics.rebuild",
    "analytics_rebuild",
    "Ask the running analytics projection to rebuild its DuckDB file from sequence 1.",
    "",
)
async def analytics_rebuild(request: RebuildRequest) -> RebuildAnswer:
    return _no_body()  # type: ignore[no-any-return]


@_documented(
    "ledger.verifiers.ping",
    "verifiers_ping",
    "Sent by the ledger service (only it may): every live edge verifier answers with the key ids it "
    "trusts; a new signing key starts signing once all of them list it.",
    "",
)
async def verifiers_ping(request: Ping) -> KeyAck:
    return _no_body()  # type: ignore[no-any-return]


# -- what is published: events, notices, heartbeats, receipts --------------------------------
def _publishes(subject: str, title: str, description: str, schema: Any) -> None:
    broker.publisher(subject, title=title, description=description, schema=schema)


EVENTS: tuple[tuple[str, type[BaseModel], str], ...] = (
    ("ledger.ev.s.{sid}.started", SessionStarted, "A session began (generation 0, keyed token hash)."),
    ("ledger.ev.s.{sid}.rotated", TokenRotated, "The family advanced one generation."),
    ("ledger.ev.s.{sid}.stepup", SessionSteppedUp, "The user re-authenticated: new acr/amr for the family."),
    ("ledger.ev.s.{sid}.reuse", ReuseDetected, "A superseded token was presented outside the grace window."),
    ("ledger.ev.s.{sid}.revoked", SessionRevoked, "The session was revoked (logout, reuse, admin, ...)."),
    ("ledger.ev.u.{sub_b64}.revoked", UserSessionsRevoked, "Every session of the user before this is dead."),
    ("ledger.ev.u.{sub_b64}.admitted", SessionAdmitted, "The per-user session cap admitted a session."),
    ("ledger.ev.k.{kid}.added", SigningKeyAdded, "A signing key's public JWK, signed by a trusted key."),
    (
        "ledger.ev.k.{kid}.activated",
        SigningKeyActivated,
        "A published key signs from now on (all verifiers have it).",
    ),
    ("ledger.ev.k.{kid}.retired", SigningKeyRetired, "A signing key no longer signs nor verifies."),
)
for _subject, _model, _about in EVENTS:
    _publishes(_subject, _model.__name__, f"LEDGER stream (append-only). {_about}", _model)
_publishes(
    "ledger.revoked.{kind}.{id}",
    "revocation_notice",
    "LEDGER_REVOCATIONS: one compact notice per revoking event, kept as long as the tokens it concerns.",
    Notice,
)
_publishes("ledger.heartbeat.broadcast", "broadcaster_heartbeat", Heartbeat.__doc__ or "", Heartbeat)
_publishes(
    "ledger.receipt.{verifier}",
    "edge_receipt",
    "LEDGER_RECEIPTS: an edge verifier applied a notice (revoke-to-edge times in analytics).",
    Receipt,
)

app = FastStream(
    broker,
    specification=AsyncAPI(
        title="session-ledger",
        version=VERSION,
        description="JWT refresh-token rotation on NATS JetStream: commands, queries, ledger events, "
        "revocation notices and edge receipts. Every payload is JSON.",
    ),
)

# Every model that travels on a subject, for docs/schemas/<name>.json.
_MODELS: tuple[type[BaseModel], ...] = (
        StartSessionRequest, RotateRequest, RevokeSessionRequest, LogoutRequest, RevokeUserRequest,
        StepUpRequest, StepUp, RevokeOwnSessionRequest, SignOutOthersRequest, ClientContext,
        TokenPair, Revocation, ErrorBody, Reply, ListSessionsRequest, GetSessionRequest, IntrospectRequest,
        SessionView, SessionList, Introspection, Notice, Receipt, KeyAck, Heartbeat, RebuildRequest, Ping,
        *(model for _, model, _ in EVENTS),
)  # fmt: skip
WIRE_MODELS: dict[str, Any] = {model.__name__: model for model in _MODELS}
WIRE_MODELS["Event"] = Event  # the discriminated union a consumer decodes


PARAMETERS = {
    "sid": "session id (128 random bits, base64url)",
    "sub_b64": "the user id, base64url (user input never reaches a subject unencoded)",
    "kid": "signing key id",
    "kind": "session, user or key",
    "id": "the revoked sid, base64url sub or kid",
    "verifier": "the edge verifier's id",
}


def document() -> dict[str, Any]:
    """FastStream's AsyncAPI 3.0 document, plus what it does not generate: the replies of the
    request/reply subjects and the parameters of templated subjects."""
    spec: dict[str, Any] = app.schema.to_specification().to_jsonable()
    for title, answer in REPLIES.items():
        _add_reply(spec, title, answer)
    for channel in spec["channels"].values():
        names = re.findall(r"{(\w+)}", channel.get("address") or "")
        if names:
            channel["parameters"] = {name: {"description": PARAMETERS[name]} for name in names}
    return spec


def _add_reply(spec: dict[str, Any], name: str, answer: Any) -> None:
    """Operation ``name`` answers on the request's reply subject (an ``_INBOX.`` the caller owns)."""
    schema = TypeAdapter(answer).json_schema(
        ref_template="#/components/schemas/{model}", mode="serialization"
    )
    spec["components"]["schemas"].update(schema.pop("$defs", {}))
    message = f"{name}:Reply"
    spec["components"]["messages"][message] = {"title": message, "payload": schema}
    spec["channels"][f"{name}_reply"] = {
        "address": None,
        "description": f"The reply to {name}, on the requester's inbox.",
        "messages": {"Reply": {"$ref": f"#/components/messages/{message}"}},
    }
    spec["operations"][name]["reply"] = {
        "channel": {"$ref": f"#/channels/{name}_reply"},
        "messages": [{"$ref": f"#/channels/{name}_reply/messages/Reply"}],
    }


def schemas() -> dict[str, dict[str, Any]]:
    return {name: TypeAdapter(model).json_schema(mode="serialization") for name, model in WIRE_MODELS.items()}


def rendered(out: Path) -> dict[Path, str]:
    """Every file this module generates under ``out``, with its text."""
    files = {out / "asyncapi.json": _dump(document())}
    files |= {out / "schemas" / f"{name}.json": _dump(schema) for name, schema in schemas().items()}
    return files


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ledger.contracts.asyncapi", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out", type=Path, help="directory for asyncapi.json and schemas/")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on any difference")
    args = parser.parse_args(argv)
    stale = [p for p, text in rendered(args.out).items() if not p.exists() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"out of date: {path}", file=sys.stderr)
        return 1 if stale else 0
    for path, text in rendered(args.out).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {args.out / 'asyncapi.json'} and {len(WIRE_MODELS)} schemas")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
