"""The trust model as data: what each NATS user may publish and subscribe to.

``nats.conf`` holds these blocks verbatim (a unit test compares them) and the embedded
``session-ledger up`` renders them with its generated passwords, so a laptop runs the
same boundaries as production. Every durable consumer is named: a role may create, read
from or delete only its own, and nobody but ``ledger`` can touch the broadcaster's.
Streams likewise: the projector owns three KV buckets by name, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STREAM, NOTICES, RECEIPTS = "LEDGER", "LEDGER_REVOCATIONS", "LEDGER_RECEIPTS"
RATE = "LEDGER_GATEWAY_RATE"  # the gateways' shared rate-limit counters (created by the ledger)
BUCKETS = ("LEDGER_PROJECTIONS", "LEDGER_SESSIONS_1", "LEDGER_SESSIONS_2")
BROADCASTER = "ledger-revocation-broadcast"
PROJECTOR_DURABLES = {
    STREAM: (
        "projection_LEDGER_SESSIONS_1",
        "projection_LEDGER_SESSIONS_2",
        "analytics",
        "analytics_rebuild",
    ),
    RECEIPTS: ("analytics_receipts", "analytics_rebuild_receipts"),
}
PROJECTOR_NAMES = PROJECTOR_DURABLES


@dataclass(frozen=True)
class Role:
    user: str
    block: str  # the variable name in nats.conf
    purpose: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False
    deny_publish: tuple[str, ...] = field(default=())


def stream_admin(stream: str, *ops: str) -> list[str]:
    return [f"$JS.API.STREAM.{op}.{stream}" for op in ops]


def ephemeral_readers(stream: str) -> list[str]:
    """Ordered consumers created through the unnamed API subject (trusted roles, KV buckets)."""
    return [f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.FC.{stream}.>", f"$JS.API.CONSUMER.INFO.{stream}.*"]


def named_readers(stream: str) -> list[str]:
    """Ordered consumers created with their (random) name in the API subject, never through
    ``CONSUMER.CREATE.<stream>``: that subject takes the name from the request body and would
    let the requester redefine any consumer, the broadcaster's included. With the name in
    the subject the server ignores the body's; ``protected_names`` are denied."""
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}.*", f"$JS.API.CONSUMER.CREATE.{stream}.*.>",
        f"$JS.FC.{stream}.>", f"$JS.API.CONSUMER.INFO.{stream}.*",
    ]  # fmt: skip


def protected(stream: str, *names: str) -> list[str]:
    api = "$JS.API.CONSUMER.CREATE"
    return [rule for name in names for rule in (f"{api}.{stream}.{name}", f"{api}.{stream}.{name}.>")]


def durable(stream: str, name: str) -> list[str]:
    """Everything a pull consumer named ``name`` needs, and only for that name."""
    api = "$JS.API.CONSUMER"
    return [
        f"{api}.CREATE.{stream}.{name}", f"{api}.CREATE.{stream}.{name}.>",
        f"{api}.DURABLE.CREATE.{stream}.{name}", f"{api}.DELETE.{stream}.{name}",
        f"{api}.INFO.{stream}.{name}", f"{api}.MSG.NEXT.{stream}.{name}",
    ]  # fmt: skip


def direct_get(stream: str) -> list[str]:
    return [f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>"]


def bucket(name: str) -> list[str]:
    kv = f"KV_{name}"
    return [
        *stream_admin(kv, "INFO", "PURGE"), f"$JS.API.STREAM.MSG.GET.{kv}",
        *direct_get(kv), *ephemeral_readers(kv), f"$JS.API.CONSUMER.DELETE.{kv}.*", f"$KV.{name}.>",
    ]  # fmt: skip


SERVICE = Role(
    user="ledger",
    block="LEDGER_SERVICE",
    purpose="the command service and the revocation broadcaster: append events, answer commands "
    "in its queue group, own the LEDGER, LEDGER_REVOCATIONS and LEDGER_RECEIPTS streams (never "
    "delete or purge), create the projections' three KV buckets, read by direct or leader get, "
    "run the broadcaster's durable, publish notices and the broadcaster's heartbeat; the "
    "traffic simulator (`up --demo`, `simulate`) serves its own clock on ledger.sim.*; it hears "
    "the revoke-alls it and its peers append (to forget its rotation hints)",
    publish=(
        "ledger.sim.*.cmd.*",
        "ledger.ev.>",
        "ledger.revoked.>",
        "ledger.heartbeat.>",
        "ledger.verifiers.ping",
        "$JS.API.INFO",
        *stream_admin(STREAM, "CREATE", "UPDATE", "INFO"),
        *stream_admin(NOTICES, "CREATE", "UPDATE", "INFO"),
        *stream_admin(RECEIPTS, "CREATE", "UPDATE", "INFO"),
        *direct_get(STREAM),
        f"$JS.API.STREAM.MSG.GET.{STREAM}",
        *ephemeral_readers(STREAM),
        *named_readers(STREAM),
        *durable(STREAM, BROADCASTER),
        f"$JS.ACK.{STREAM}.{BROADCASTER}.>",
        *(rule for name in BUCKETS for rule in stream_admin(f"KV_{name}", "CREATE", "INFO")),
        *stream_admin(RATE, "CREATE", "UPDATE", "INFO"),
    ),
    subscribe=(
        "ledger.cmd.* ledger-service",
        "ledger.sim.*.cmd.*",
        "ledger.ev.u.*.revoked",
        "_INBOX.ledger.>",
    ),
    allow_responses=True,
)

APP = Role(
    user="app",
    block="LEDGER_APP",
    purpose="application backends: send commands and queries, read their own answers; nothing "
    "else. Give each backend its own user (copy this entry: user `app-billing` reads "
    "`_INBOX.app-billing.>`)",
    publish=("ledger.cmd.*", "ledger.q.*"),
    subscribe=("_INBOX.app.>",),
)

EDGE = Role(
    user="edge",
    block="LEDGER_EDGE",
    purpose="edge verifiers: read keys (ordered consumers on LEDGER) and revocation notices (live, "
    "and replayed from LEDGER_REVOCATIONS), hear the broadcaster's heartbeat, publish receipts, "
    "answer the ledger's key pings (which keys it trusts). Never an event, a command, a notice, "
    "a stream, or a named (durable) consumer",
    publish=(
        "ledger.receipt.>",
        "$JS.API.INFO",
        *stream_admin(STREAM, "INFO"),
        *stream_admin(NOTICES, "INFO"),
        *stream_admin(RECEIPTS, "INFO"),
        *direct_get(STREAM),
        *direct_get(NOTICES),
        *named_readers(STREAM),
        *named_readers(NOTICES),
    ),
    subscribe=("ledger.revoked.>", "ledger.heartbeat.>", "ledger.verifiers.ping", "_INBOX.edge.>"),
    allow_responses=True,
    deny_publish=(*protected(STREAM, BROADCASTER, *PROJECTOR_NAMES[STREAM]),),
)

GATEWAY = Role(
    user="gateway",
    block="LEDGER_GATEWAY",
    purpose="HTTP gateways (OAuth endpoints, browser cookie flow, self-service): start sessions for "
    "authenticated backends, rotate, log out and revoke single access tokens (each with proof of "
    "possession), introspect, list a user's sessions and revoke them as that user from one of "
    "their live sessions (self-service: the gateway names the user and session an introspected "
    "access token carries; no more than it could do by starting a session for that user), read "
    "key events for the JWKS, count requests in the shared rate-limit stream. Never revoke by sid "
    "or by user, read one session by sid, read or write an event, a notice or a stream",
    publish=(
        "ledger.cmd.start",
        "ledger.cmd.rotate",
        "ledger.cmd.logout",
        "ledger.cmd.revoke_access",
        "ledger.cmd.revoke_own",
        "ledger.cmd.sign_out_others",
        "ledger.q.introspect",
        "ledger.q.sessions",
        "ledger.rate.>",
        f"$JS.API.DIRECT.GET.{RATE}.ledger.rate.>",
        "$JS.API.INFO",
        *stream_admin(STREAM, "INFO"),
        f"$JS.API.DIRECT.GET.{STREAM}.ledger.ev.k.>",  # key events only: the JWKS
        f"$JS.API.CONSUMER.CREATE.{STREAM}.*.ledger.ev.k.>",
        f"$JS.FC.{STREAM}.>",
        f"$JS.API.CONSUMER.INFO.{STREAM}.*",
    ),
    subscribe=("_INBOX.gateway.>",),
    deny_publish=(*protected(STREAM, BROADCASTER, *PROJECTOR_NAMES[STREAM]),),
)

PROJECTOR = Role(
    user="projector",
    block="LEDGER_PROJECTOR",
    purpose="read side (sessions projection, analytics): its own named consumers, the three KV "
    "buckets the ledger created for it (read, write, empty; rebuilds alternate between "
    "LEDGER_SESSIONS_1 and _2), query answers on ledger.q.* in its queue group, rebuild "
    "requests. It creates, changes and deletes no stream: a stream's subjects are its own "
    "choice, and one on ledger.cmd.> would capture refresh tokens",
    publish=(
        "ledger.analytics.rebuild",
        "$JS.API.INFO",
        "$JS.API.STREAM.NAMES",
        "$JS.API.STREAM.LIST",
        "$JS.API.STREAM.INFO.*",
        *direct_get(STREAM),
        f"$JS.API.STREAM.MSG.GET.{STREAM}",
        *named_readers(STREAM),
        *named_readers(RECEIPTS),
        *(
            rule
            for stream, names in PROJECTOR_DURABLES.items()
            for name in names
            for rule in durable(stream, name)
        ),
        *(f"$JS.ACK.{stream}.{name}.>" for stream, names in PROJECTOR_DURABLES.items() for name in names),
        *(rule for name in BUCKETS for rule in bucket(name)),
    ),
    subscribe=("ledger.q.* ledger-queries", "ledger.analytics.rebuild", "_INBOX.projector.>"),
    allow_responses=True,
    deny_publish=(*protected(STREAM, BROADCASTER),),
)

ANALYST = Role(
    user="analyst",
    block="LEDGER_ANALYST",
    purpose="analysts and audit tools: read the event log and receipts through ordered "
    "(ephemeral) consumers and direct gets, ask the analytics projection to rebuild. No named "
    "consumer: nothing of theirs can be taken over, paused or drained",
    publish=(
        "$JS.API.INFO",
        "$JS.API.STREAM.NAMES",
        *stream_admin(STREAM, "INFO"),
        *stream_admin(RECEIPTS, "INFO"),
        *direct_get(STREAM),
        *named_readers(STREAM),
        *named_readers(RECEIPTS),
        "ledger.analytics.rebuild",
    ),
    subscribe=("_INBOX.analyst.>",),
    deny_publish=(
        *protected(STREAM, BROADCASTER, *PROJECTOR_NAMES[STREAM]),
        *protected(RECEIPTS, *PROJECTOR_NAMES[RECEIPTS]),
    ),
)

ROLES = (SERVICE, APP, EDGE, GATEWAY, PROJECTOR, ANALYST)
PASSWORD_ENV = {
    "ledger": "LEDGER_SERVICE_PASSWORD",
    "app": "LEDGER_APP_PASSWORD",
    "edge": "LEDGER_EDGE_PASSWORD",
    "gateway": "LEDGER_GATEWAY_PASSWORD",
    "projector": "LEDGER_PROJECTOR_PASSWORD",
    "analyst": "LEDGER_ANALYST_PASSWORD",
}


def _list(items: tuple[str, ...], indent: str) -> str:
    lines, line = [], indent
    for item in items:
        quoted = f'"{item}", '
        if len(line) + len(quoted) > 100 and line.strip():
            lines.append(line.rstrip())
            line = indent
        line += quoted
    lines.append(line.rstrip().rstrip(","))
    return "\n".join(lines)


def render_role(role: Role) -> str:
    words = role.purpose.split()
    comment, line = [], "#"
    for word in words:
        if len(line) + len(word) + 1 > 96:
            comment.append(line)
            line = "#"
        line += " " + word
    comment.append(line)
    text = "\n".join(comment) + f"\n{role.block} = {{\n  publish: {{\n    allow: [\n"
    text += _list(role.publish, "      ") + "\n    ]\n"
    if role.deny_publish:
        text += "    deny: [\n" + _list(role.deny_publish, "      ") + "\n    ]\n"
    text += "  }\n"
    subscribe = ", ".join(f'"{s}"' for s in role.subscribe)
    text += f"  subscribe: {{ allow: [{subscribe}] }}\n"
    if role.allow_responses:
        text += "  allow_responses: true\n"
    return text + "}\n"


def render_permissions() -> str:
    """The permission blocks of nats.conf, between its BEGIN/END markers."""
    return "\n".join(render_role(role) for role in ROLES)


def render_users(passwords: dict[str, str] | None = None) -> str:
    """The LEDGER account's users: ``$ENV`` references (nats.conf) or literal passwords (embedded)."""
    rows = []
    for role in ROLES:
        secret = f'"{passwords[role.user]}"' if passwords else f"${PASSWORD_ENV[role.user]}"
        rows.append(f"      {{ user: {role.user}, password: {secret}, permissions: ${role.block} }}")
    return "\n".join(rows)


BEGIN = "# --- BEGIN permission sets (ledger/streaming/permissions.py; keep in sync) ---"
END = "# --- END permission sets ---"

if __name__ == "__main__":
    print(f"{BEGIN}\n{render_permissions()}{END}")
