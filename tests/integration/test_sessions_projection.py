"""The sessions projection against a real nats-server: determinism, exactly-once, agreement, lag."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import APIError

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.domain.errors import LedgerError, SessionExpired, Unavailable
from ledger.domain.events import Event
from ledger.domain.refresh import TokenKeys
from ledger.streaming.connection import connect
from ledger.streaming.store import EventStore
from projections.sessions.fold import SessionRecord, decode, fold, snapshot
from projections.sessions.rebuild import rebuild_sessions
from projections.sessions.runner import RunnerOptions, SessionsRunner, run_sessions
from projections.sessions.store import SessionStore, live_bucket, sessions_checkpoint
from session_ledger.cli import main as cli_main
from session_ledger.cli.up import COMPONENTS
from tests.support.sessions_history import generate, recorded

FAST = RunnerOptions(batch=64, ack_wait=1.0, fetch_timeout=0.2, pointer_check=0.2, restart_delay=0.2)


class Crash(Exception):
    """Stands for the process dying: raised from inside the runner, nothing after it runs."""


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    conn = await connect(settings.nats_url, "test-sessions")
    await EventStore(conn, settings).ensure_stream()
    yield conn
    await conn.drain()


async def append_all(store: EventStore, events: list[tuple[str, Event]]) -> None:
    for subject, event in events:
        await store.append(subject, event)


async def stream_fold(nc: NATS, settings: Settings) -> dict[str, bytes]:
    return snapshot(fold([rec async for rec in EventStore(nc, settings).read(from_seq=1)]))


async def live_dump(nc: NATS, settings: Settings) -> dict[str, bytes]:
    js = nc.jetstream()
    return await (await SessionStore.open(js, await live_bucket(js, settings))).dump()


async def wait_lag_zero(nc: NATS, settings: Settings, timeout: float = 30.0) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        applied = await sessions_checkpoint(nc, settings)
        if applied is not None and applied == await EventStore(nc, settings).last_seq():
            return time.monotonic() - began
        await asyncio.sleep(0.02)
    raise AssertionError(f"lag did not reach 0 in {timeout}s")


READY_LIMIT = 60.0  # generous: CI runs on busy machines


@contextlib.asynccontextmanager
async def projection(settings: Settings) -> AsyncIterator[None]:
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_sessions(settings, stop, ready, options=FAST))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=READY_LIMIT, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # it failed: say why
    if not waiter.done():  # CI flake: a slow start went on unready and a query met no responder
        waiter.cancel()
        stop.set()
        await asyncio.wait_for(task, 15)
        raise AssertionError(f"the sessions projection was not ready within {READY_LIMIT} s")
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_replay_determinism_rebuild_equals_live(nc: NATS, settings: Settings) -> None:
    events = generate(seed=20261128, count=3000)
    store = EventStore(nc, settings)
    async with projection(settings):
        began = time.monotonic()
        await append_all(store, events[:1500])  # the runner consumes these live, as they land
        await append_all(store, events[1500:])
        appended = time.monotonic() - began
        catch_up = await wait_lag_zero(nc, settings)
        live = await live_dump(nc, settings)
        progress: list[tuple[int, int]] = []
        result = await rebuild_sessions(nc, settings, lambda done, total: progress.append((done, total)))
        rebuilt = await (await SessionStore.open(nc.jetstream(), result.bucket)).dump()
        assert result.events == 3000 and progress[-1] == (3000, 3000)
        assert rebuilt == live  # byte for byte, every key including the checkpoint
        assert live == await stream_fold(nc, settings)
        # the live runner follows the pointer to the rebuilt bucket and goes on from there
        more = generate(seed=99, count=200)
        await append_all(store, more)
        await wait_lag_zero(nc, settings)
        assert await live_bucket(nc.jetstream(), settings) == result.bucket
        assert await live_dump(nc, settings) == await stream_fold(nc, settings)
    print(
        f"\n3000 events appended in {appended:.2f}s; lag 0 {catch_up:.2f}s later;"
        f" rebuild {result.seconds:.2f}s"
    )


async def test_exactly_once_under_nak_restart_and_kill(nc: NATS, settings: Settings) -> None:
    events = generate(seed=4242, count=1200)
    await append_all(EventStore(nc, settings), events)
    writes: dict[str, list[int]] = {}
    watcher = await _watch_writes(nc, settings, writes)
    seen: list[int] = []

    def counting(hook: Callable[[str, int], Awaitable[None]] | None) -> Callable[[str, int], Awaitable[None]]:
        async def wrapped(point: str, seq: int) -> None:
            if point == "written":
                seen.append(seq)
            if hook is not None:
                await hook(point, seq)

        return wrapped

    try:
        # 1. killed between the KV write and the ack (and before the checkpoint)
        await _run_until(settings, counting(_raise_at("written", 300, Crash())), expect=Crash)
        # 2. a transient failure after the write: the batch's rest is nak'd and redelivered
        stop = asyncio.Event()
        failed: set[int] = set()

        async def nak_then_stop(point: str, seq: int) -> None:
            if point == "written" and seq in (450, 451) and seq not in failed:
                failed.add(seq)
                raise Unavailable("injected")
            if point == "written" and seq == 700:
                stop.set()  # 3. restart mid-batch

        await _run_until(settings, counting(nak_then_stop), stop=stop)
        assert failed == {450, 451}
        # 4. killed after the checkpoint, before the acks
        await _run_until(settings, counting(_raise_at("checkpointed", 900, Crash(), True)), expect=Crash)
        await _run_until(settings, counting(None), until_seq=len(events))
    finally:
        await watcher.stop()
    assert await live_dump(nc, settings) == await stream_fold(nc, settings)
    redelivered = len(seen) - len(set(seen))
    assert redelivered > 0 and set(seen) == set(range(1, len(events) + 1))
    for key, seqs in writes.items():
        assert seqs == sorted(set(seqs)), f"{key} went backwards or was written twice: {seqs}"
    rotations = sum(type(e).__name__ == "TokenRotated" for _, e in events)
    live = await live_dump(nc, settings)
    counted = [decode(v) for k, v in live.items() if k.startswith("s.")]
    assert sum(r.rotations for r in counted if isinstance(r, SessionRecord)) == rotations
    print(f"\n{len(events)} events, {redelivered} redeliveries applied as no-ops")


def _raise_at(
    point: str, seq: int, exc: Exception, at_least: bool = False
) -> Callable[[str, int], Awaitable[None]]:
    async def hook(p: str, s: int) -> None:
        if p == point and (s >= seq if at_least else s == seq):
            raise exc

    return hook


async def _run_until(
    settings: Settings,
    hook: Callable[[str, int], Awaitable[None]] | None,
    *,
    expect: type[Exception] | None = None,
    stop: asyncio.Event | None = None,
    until_seq: int | None = None,
) -> None:
    """One runner 'process': its own connection, closed abruptly (no drain) when it dies."""
    conn = await connect(settings.nats_url, "test-runner")
    stop = stop or asyncio.Event()
    runner = SessionsRunner(conn, settings, options=FAST, hook=hook)
    await runner.start()

    async def watch() -> None:
        while until_seq is not None and runner.applied < until_seq:
            await asyncio.sleep(0.02)
        if until_seq is not None:
            stop.set()

    watcher = asyncio.create_task(watch())
    try:
        if expect is not None:
            with pytest.raises(expect):
                await asyncio.wait_for(runner.run(stop), 30)
        else:
            await asyncio.wait_for(runner.run(stop), 30)
    finally:
        watcher.cancel()
        await conn.close()


async def _watch_writes(nc: NATS, settings: Settings, writes: dict[str, list[int]]) -> Any:
    """Every write to the live bucket, in order: a key's seqs must only ever go up.

    The bucket is created here keeping 64 revisions per key (if the runner has not
    made it yet), so a watcher that lags still sees each write, not only the latest;
    ``stop()`` waits until the watcher has read up to the bucket's last write.
    """
    js = nc.jetstream()
    name = await live_bucket(js, settings)
    with contextlib.suppress(APIError):  # made already (by a runner): as it is
        await js.create_key_value(KeyValueConfig(bucket=name, history=64, storage=StorageType.FILE))
    kv = (await SessionStore.open(js, name)).kv
    last_seen = 0

    async def record(entry: Any) -> None:
        nonlocal last_seen
        last_seen = max(last_seen, entry.revision or 0)
        if entry.value and entry.key != "checkpoint":
            writes.setdefault(entry.key, []).append(json.loads(entry.value)["seq"])

    watcher = await kv.watchall(include_history=True)

    async def pump() -> None:
        async for entry in watcher:
            if entry is not None:
                await record(entry)

    task = asyncio.create_task(pump())

    class Stopper:
        async def stop(self) -> None:
            last = (await js.stream_info(f"KV_{name}")).state.last_seq
            try:
                for _ in range(1000):  # 20 s at most
                    if last_seen >= last or task.done():
                        break
                    await asyncio.sleep(0.02)
                assert last_seen >= last, f"write watcher stopped at {last_seen} of {last}"
            finally:
                task.cancel()
                await watcher.stop()  # type: ignore[no-untyped-call]

    return Stopper()


@pytest.mark.parametrize("policy", ["family", "user"])
async def test_projection_agrees_with_the_ledger_on_every_token(
    services: Any, settings_for: Any, nc: NATS, policy: str
) -> None:
    settings = settings_for(reuse_policy=policy)
    await services.start(settings)
    rng = random.Random(31337)
    async with projection(settings), LedgerClient(await connect(settings.nats_url, "t"), owns=True) as client:
        refresh, access = await _random_history(client, rng)
        store = EventStore(nc, settings)
        keys = TokenKeys(b"x" * 32)
        forged = [f"rt1.{sid}.{gen}.{'A' * 43}" for sid, gen in rng.sample(list(refresh_sids(refresh)), 5)]
        forged += [
            str(keys.first(sid, rng.randbytes(32))) for sid, _ in rng.sample(list(refresh_sids(refresh)), 5)
        ]
        tokens = [*refresh, *forged, "rt1.garbage", "not a token"]
        rng.shuffle(tokens)
        checked = accepted = 0
        for token in tokens:
            await wait_lag_zero(nc, settings)
            before = await store.last_seq()
            answer = await client.introspect(token)
            try:
                await client.rotate(token)
                ok = True
            except LedgerError:
                ok = False
            assert answer.active == ok, (
                f"projection said {answer.active}, ledger {'accepted' if ok else 'refused'}"
            )
            if token in forged or not token.startswith("rt1.") or len(token) < 40:
                assert await store.last_seq() == before  # forgeries append nothing
            checked += 1
            accepted += ok
        await wait_lag_zero(nc, settings)
        for token in access:
            answer = await client.introspect(token)
            assert answer.active == await _ledger_accepts_access(store, token)
    assert checked > 100 and 0 < accepted < checked
    print(f"\n{checked} refresh tokens checked ({accepted} accepted), {len(access)} access tokens")


def refresh_sids(tokens: list[str]) -> set[tuple[str, int]]:
    return {(t.split(".")[1], int(t.split(".")[2])) for t in tokens}


async def _random_history(client: LedgerClient, rng: random.Random) -> tuple[list[str], list[str]]:
    """Logins, rotations, replays of old tokens, logouts and revoke-alls through the service."""
    refresh: list[str] = []
    access: list[str] = []
    current: dict[str, str] = {}
    for _ in range(160):
        roll = rng.random()
        try:
            if not current or roll < 0.25:
                pair = await client.start_session(f"u{rng.randrange(5)}", client_id="web", scopes=["read"])
            elif roll < 0.75:
                pair = await client.rotate(current[rng.choice(sorted(current))])
            elif roll < 0.85:
                await client.rotate(rng.choice(refresh))  # maybe a replay
                continue
            elif roll < 0.95:
                await client.logout(current.pop(rng.choice(sorted(current))))
                continue
            else:
                await client.revoke_user(f"u{rng.randrange(5)}")
                continue
        except LedgerError:
            continue
        current[pair.sid] = pair.refresh_token
        refresh.append(pair.refresh_token)
        access.append(pair.access_token)
    return refresh, access


async def _ledger_accepts_access(store: EventStore, token: str) -> bool:
    """The ledger's own state: the session's head is not terminal and no later revoke-all."""
    claims = jwt.decode(token, options={"verify_signature": False})
    family = await store.family(claims["sid"])
    cut = await store.user_cut(claims["sub"])
    return family is not None and not family.is_terminal and not (cut is not None and cut > claims["ssq"])


async def test_cli_status_lag_reaches_zero_and_queries(
    services: Any, settings: Settings, nc: NATS, capsys: pytest.CaptureFixture[str]
) -> None:
    await services.start(settings)
    url = ["--nats-url", settings.nats_url]
    client = LedgerClient(await connect(settings.nats_url, "t"), owns=True)
    pair = await client.start_session("alice", client_id="cli", scopes=["read", "write"])
    await append_all(EventStore(nc, settings), generate(seed=5, count=300))
    assert await asyncio.to_thread(cli_main, ["projections", "status", "--json", *url]) == 0
    before = _sessions_row(capsys.readouterr().out)
    assert before["lag"] is None or before["lag"] > 0  # nothing applied yet
    async with projection(settings):
        await wait_lag_zero(nc, settings)
        assert await asyncio.to_thread(cli_main, ["projections", "status", "--json", *url]) == 0
        after = _sessions_row(capsys.readouterr().out)
        assert after["lag"] == 0 and after["checkpoint"] == after["stream_last_seq"]

        assert await asyncio.to_thread(cli_main, ["sessions", "list", "--sub", "alice", *url]) == 0
        assert pair.sid in capsys.readouterr().out
        assert await asyncio.to_thread(cli_main, ["sessions", "show", pair.sid, "--json", *url]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["status"] == "active" and shown["scopes"] == ["read", "write"]
        assert await asyncio.to_thread(cli_main, ["introspect", pair.access_token, "--json", *url]) == 0
        intro = json.loads(capsys.readouterr().out)
        assert intro["active"] and intro["token_type"] == "access_token" and intro["sub"] == "alice"

        assert await asyncio.to_thread(cli_main, ["projections", "rebuild", "sessions", *url]) == 0
        out, err = capsys.readouterr()
        assert "rebuilt sessions" in out and "100.0%" in err
        await client.revoke_session(pair.sid)
        await wait_lag_zero(nc, settings)
        assert await asyncio.to_thread(cli_main, ["introspect", pair.refresh_token, "--json", *url]) == 1
        assert json.loads(capsys.readouterr().out) == {"active": False}
        assert (await client.list_sessions("alice")).sessions == ()
        assert (await client.get_session(pair.sid)).end_reason == "logout"
    await client.close()
    assert "sessions" in [c.name for c in COMPONENTS]


def _sessions_row(out: str) -> dict[str, Any]:
    rows = json.loads(out)["projections"]
    return next(r for r in rows if r["projection"] == "sessions")  # type: ignore[no-any-return]


async def test_unknown_session_is_not_found(settings: Settings, nc: NATS) -> None:
    async with projection(settings):
        client = LedgerClient(nc)
        with pytest.raises(LedgerError) as err:
            await client.get_session("A" * 22)
        assert err.value.code == "not_found", str(err.value)
        assert (await client.introspect("rt1." + "A" * 22 + ".0." + "B" * 43)).active is False


async def test_forged_access_token_is_inactive(client: LedgerClient, settings: Settings, nc: NATS) -> None:
    """Right kid, right claims, wrong key: inactive; the genuine token is active."""
    pair = await client.start_session("mallory-target", scopes=["read"])
    async with projection(settings):
        await wait_lag_zero(nc, settings)
        assert (await client.introspect(pair.access_token)).active
        header = jwt.get_unverified_header(pair.access_token)
        claims = jwt.decode(pair.access_token, options={"verify_signature": False})
        forged = jwt.encode(
            claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers=header
        )
        assert (await client.introspect(forged)).active is False
        bare = {k: v for k, v in header.items() if k != "alg"}
        none_alg = jwt.encode(claims, None, algorithm="none", headers=bare)
        assert (await client.introspect(none_alg)).active is False


async def test_crash_half_way_through_a_batch_write(nc: NATS, settings: Settings) -> None:
    """Some keys already hold the batch's end state, others none of it: the retry completes it."""
    recs = recorded(generate(seed=77, count=400))
    head, batch = recs[:200], recs[200:]
    js = nc.jetstream()
    store = await SessionStore.open(js, "SESSIONS_PARTIAL")
    await store.apply_batch(head)
    done = snapshot(fold(recs))
    already = sorted(k for k in done if k != "checkpoint")[::3]  # a third landed before the crash
    await store.put_many({k: done[k] for k in already})
    fresh = await SessionStore.open(js, "SESSIONS_PARTIAL")  # the restarted process: cold cache
    await fresh.apply_batch(batch)
    await fresh.apply_batch(batch[:50])  # and a redelivery of part of it, for good measure
    await fresh.save_checkpoint(recs[-1].seq)
    assert await fresh.dump() == done


async def test_sigkill_of_the_projection_process_mid_stream(nc: NATS, settings: Settings) -> None:
    """A real process, killed with SIGKILL while it applies events, restarted: nothing lost or doubled."""
    events = generate(seed=1234, count=2500)
    await append_all(EventStore(nc, settings), events[:500])
    writes: dict[str, list[int]] = {}
    first = await _spawn_projection(settings)
    watcher = None
    try:
        while await sessions_checkpoint(nc, settings) is None:
            await asyncio.sleep(0.02)
        watcher = await _watch_writes(nc, settings, writes)
        feeder = asyncio.create_task(append_all(EventStore(nc, settings), events[500:]))
        while (await sessions_checkpoint(nc, settings) or 0) < 1200:
            await asyncio.sleep(0.005)
        first.kill()  # SIGKILL: no ack, no checkpoint, no goodbye
        await asyncio.wait_for(first.wait(), 10)
        killed_at = await sessions_checkpoint(nc, settings)
        await feeder
        second = await _spawn_projection(settings)
        try:
            await wait_lag_zero(nc, settings)
        finally:
            second.terminate()
            await asyncio.wait_for(second.wait(), 15)
    finally:
        if first.returncode is None:
            first.kill()
        if watcher is not None:
            await watcher.stop()
    assert killed_at is not None and killed_at < len(events)
    assert await live_dump(nc, settings) == await stream_fold(nc, settings)
    for key, seqs in writes.items():
        assert seqs == sorted(set(seqs)), f"{key} went backwards or was written twice: {seqs}"


async def _spawn_projection(settings: Settings) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "session_ledger.cli",
        "projections",
        "run",
        "sessions",
        "--nats-url",
        settings.nats_url,
        "--data-dir",
        str(settings.data_dir),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    assert line.startswith(b"ready"), line
    return proc


async def test_expiry_without_any_event(services: Any, settings_for: Any, nc: NATS) -> None:
    """A session leaves 'active' at its idle expiry with no event written; the ledger agrees."""
    settings = settings_for(refresh_idle_ttl=timedelta(seconds=1), grace_window=timedelta(0))
    await services.start(settings)
    async with projection(settings), LedgerClient(await connect(settings.nats_url, "t"), owns=True) as client:
        pair = await client.start_session("eve", client_id="tv")
        await wait_lag_zero(nc, settings)
        assert [s.sid for s in (await client.list_sessions("eve")).sessions] == [pair.sid]
        assert (await client.introspect(pair.refresh_token)).active
        last = await EventStore(nc, settings).last_seq()
        await asyncio.sleep(max(0.0, (pair.refresh_expires_at - datetime.now(UTC)).total_seconds()) + 0.05)
        assert (await client.list_sessions("eve")).sessions == ()
        assert (await client.get_session(pair.sid)).status == "expired"
        assert (await client.introspect(pair.refresh_token)).active is False
        with pytest.raises(SessionExpired):
            await client.rotate(pair.refresh_token)
        assert await EventStore(nc, settings).last_seq() == last  # nothing was written at expiry
