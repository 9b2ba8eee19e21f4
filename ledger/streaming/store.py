"""The event store on JetStream: append with optimistic concurrency, O(1) current state.

One stream holds every ledger event. A session family's events share the subject
prefix ``<p>.ev.s.<sid>.*``, so "the family's latest event" is one direct get and
"nobody extended the family since I read it" is one publish header
(``Nats-Expected-Last-Subject-Sequence`` with its ``-Subject`` filter).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import fields as dataclass_fields
from datetime import datetime
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from ledger.config import Settings
from ledger.contracts.subjects import Subjects
from ledger.domain.decide import Family, effective_cut
from ledger.domain.errors import ConcurrencyConflict, Unavailable
from ledger.domain.events import (
    Event,
    FamilyEvent,
    RecordedEvent,
    UserSessionsRevoked,
    decode_event,
    encode_event,
)
from ledger.eventstore.base import BaseEventStore
from ledger.retry import retry
from ledger.streaming.consumer import ordered_config
from ledger.telemetry import audit, traces

log = logging.getLogger("ledger.streaming.store")
WRONG_LAST_SEQUENCE = 10071
EXPECTED_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_SEQ_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
MSG_ID = "Nats-Msg-Id"
LOST_ACK = (nats.errors.TimeoutError, nats.errors.NoRespondersError)  # the append may have landed
MAX_BATCH = 16  # a family has five event subjects, a user one cut subject
SERVER_MULTI_LAST_MAX = 1024  # nats-server answers 413 "Too Many Results" past this many subjects
JOIN_LIMIT = SERVER_MULTI_LAST_MAX // MAX_BATCH  # reads joined into one batch direct get (64)
Found = tuple[bytes, int, str, str | None]  # data, stream sequence, subject, time stamp


class _Join:
    """The batch reads asked for during one event-loop turn, sent as one request."""

    def __init__(self) -> None:
        self.callers: list[tuple[list[str], asyncio.Future[tuple[_Found, int | None]]]] = []


class _Found:
    """A batch's messages by subject, and by prefix for ``<prefix>.*`` filters (built once)."""

    def __init__(self, found: list[Found]) -> None:
        self.exact = {m[2]: m for m in found}
        self.under: dict[str, list[Found]] = {}
        for m in found:
            self.under.setdefault(m[2].rsplit(".", 1)[0], []).append(m)

    def pick(self, filters: list[str]) -> list[Found]:
        picked: list[Found] = []
        for f in filters:
            if f.endswith(".*"):
                picked.extend(self.under.get(f[:-2], ()))
            elif (hit := self.exact.get(f)) is not None:
                picked.append(hit)
        return picked


def stream_config(settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=settings.stream,
        subjects=[Subjects(settings.subject_prefix).events],
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        duplicate_window=settings.duplicate_window.total_seconds(),
        deny_delete=True,
        deny_purge=True,
        allow_direct=True,
    )


def config_differs(current: StreamConfig, wanted: StreamConfig) -> bool:
    """True if any field ``wanted`` sets has another value on the server."""
    return any(
        getattr(current, f.name) != value
        for f in dataclass_fields(wanted)
        if (value := getattr(wanted, f.name)) is not None
    )


class EventStore(BaseEventStore):
    """The JetStream adapter: one stream, CAS by publish headers, direct gets for reads."""

    def __init__(self, nc: NATS, settings: Settings) -> None:
        super().__init__(Subjects(settings.subject_prefix), settings.facts_cache)
        self.nc = nc
        self.js = nc.jetstream(timeout=settings.request_timeout)
        self.settings = settings
        self.timeout = settings.request_timeout
        self._direct = f"$JS.API.DIRECT.GET.{settings.stream}."
        self._batches: dict[str, tuple[list[Msg], asyncio.Future[Msg], int]] = {}
        self._batch_inbox: str | None = None
        self._batch_ids = 0
        self._join: _Join | None = None
        self._join_tasks: set[asyncio.Task[None]] = set()

    async def ensure_stream(self) -> None:
        """Create the stream, or bring an existing one to our config (idempotent).

        Updates only when the config differs, so read-only users (projections, whose
        nats.conf permissions allow stream info but not update) can call it too.
        """
        config = stream_config(self.settings)
        try:
            info = await self.js.stream_info(self.settings.stream)
        except NotFoundError:
            await self.js.add_stream(config)
        else:
            if config_differs(info.config, config):
                await self.js.update_stream(config)

    async def append(self, subject: str, event: Event, *, expect: tuple[str, int] | None = None) -> int:
        """Append one event; ``expect=(filter, seq)`` makes it a compare-and-set.

        ``Nats-Msg-Id`` is the event id, so a retry after a lost ack is deduplicated
        by the server and reported as success with the original sequence.
        """
        headers = {MSG_ID: event.event_id}
        if expect is not None:
            headers[EXPECTED_SEQ_SUBJECT], seq = expect[0], expect[1]
            headers[EXPECTED_SEQ] = str(seq)
        with traces.append_span(event.type) as span:
            seq = await self._append(subject, event, headers, expect)
            span.set_attribute("ledger.seq", seq)
        audit.appended(event, seq)
        return seq

    async def _append(
        self, subject: str, event: Event, headers: dict[str, str], expect: tuple[str, int] | None
    ) -> int:
        payload = encode_event(event)
        tries = 0

        async def send() -> Msg:
            nonlocal tries
            tries += 1
            return await self.nc.request(subject, payload, timeout=self.timeout, headers=headers)

        try:
            reply = await retry(send, on=LOST_ACK, attempts=3, delay=0.05, backoff=2.0, what="append")
        except LOST_ACK:
            raise Unavailable("event store did not acknowledge the append") from None
        except nats.errors.ConnectionClosedError:
            raise Unavailable("not connected to NATS") from None
        try:
            seq = self._ack_seq(reply, subject, expect)
        except ConcurrencyConflict:
            if tries == 1 or expect is None:
                raise
            return await self._landed_seq(event, expect[0])
        return seq

    async def _landed_seq(self, event: Event, filter_: str) -> int:
        """After a lost ack, the CAS check answers before dedup does: did our event land?"""
        rec = await self.last(filter_)
        if rec is not None and rec.event.event_id == event.event_id:
            return rec.seq
        raise ConcurrencyConflict(filter_, -1)

    @staticmethod
    def _ack_seq(reply: Msg, subject: str, expect: tuple[str, int] | None) -> int:
        ack: dict[str, Any] = json.loads(reply.data or b"{}")
        error = ack.get("error")
        if error is None and "seq" in ack:
            return int(ack["seq"])
        if error and error.get("err_code") == WRONG_LAST_SEQUENCE and expect is not None:
            raise ConcurrencyConflict(expect[0], expect[1])
        description = (error or {}).get("description", "no ack")
        raise Unavailable(f"append to {subject} refused: {description}")

    async def head(self, subject: str) -> tuple[RecordedEvent | None, int]:
        """The last *event* on ``subject`` (wildcards allowed) and the subject's last sequence.

        With one replica, a direct get (fast). With several, a direct get may be
        answered by a lagging follower, which could hide a just-committed rotation or
        revoke-all; decisions must read what the leader has, so ask the leader.
        Defence in depth: a message there that is not a ledger event (only a writer with
        the ledger's permissions could put one there) is skipped, not fatal; the sequence
        still counts it, so a compare-and-set on the subject goes through.
        """
        raw = await (self._leader_raw(subject) if self.settings.replicas > 1 else self._direct_raw(subject))
        if raw is None:
            return None, 0
        data, seq, found, stamp = raw
        try:
            return RecordedEvent(decode_event(data), seq, found, _parse_time(stamp)), seq
        except (ValidationError, ValueError):
            log.error("stream seq %d on %s is not a ledger event; skipped", seq, found)
            return await self._last_valid(subject, before=seq), seq

    async def last(self, subject: str) -> RecordedEvent | None:
        return (await self.head(subject))[0]

    async def _direct_raw(self, subject: str) -> tuple[bytes, int, str, str | None] | None:
        msg = await self._request(self._direct + subject, b"")
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == "404":
            return None
        if status is not None or not msg.data:
            raise Unavailable(f"direct get failed: {headers.get('Description', status)}")
        stamp = headers.get("Nats-Time-Stamp")
        return msg.data, int(headers["Nats-Sequence"]), headers["Nats-Subject"], stamp

    async def _leader_raw(self, subject: str) -> tuple[bytes, int, str, str | None] | None:
        api = f"$JS.API.STREAM.MSG.GET.{self.settings.stream}"
        msg = await self._request(api, json.dumps({"last_by_subj": subject}).encode())
        reply: dict[str, Any] = json.loads(msg.data or b"{}")
        if (error := reply.get("error")) is not None:
            if error.get("code") == 404:
                return None
            raise Unavailable(f"message get failed: {error.get('description')}")
        found = reply["message"]
        return base64.b64decode(found["data"]), int(found["seq"]), found["subject"], found.get("time")

    async def _last_valid(self, subject: str, *, before: int) -> RecordedEvent | None:
        """The newest decodable event on ``subject`` before ``before`` (a scan: the rare path)."""
        found: RecordedEvent | None = None
        async for rec in self._scan(subject, before):
            found = rec
        return found

    async def _scan(self, subject: str, before: int) -> AsyncIterator[RecordedEvent]:
        sub = await self.js.subscribe(
            subject, ordered_consumer=True, config=ordered_config(deliver_policy=DeliverPolicy.ALL),
            stream=self.settings.stream,
        )  # fmt: skip
        try:
            async for msg in sub.messages:
                seq = msg.metadata.sequence.stream
                if seq >= before:
                    return
                with contextlib.suppress(ValidationError, ValueError):
                    yield RecordedEvent(decode_event(msg.data), seq, msg.subject, msg.metadata.timestamp)
                if msg.metadata.num_pending == 0:
                    return
        finally:
            await sub.unsubscribe()

    async def family_and_cut(self, sid: str) -> tuple[Family | None, int | None, int | None]:
        """One batch direct get (``multi_last``) of the family's subjects and the user's cut
        subject: a point-in-time view under the stream's lock, with the sequence it is complete
        up to (``Nats-UpTo-Sequence``). Only with one replica (with several, a direct get may be
        answered by a lagging follower) and once the family's user is known; otherwise, or on
        anything unexpected (a message that is not an event), the two-read path."""
        sub = self.cached_sub(sid)
        if sub is None or self.settings.replicas > 1:
            return await super().family_and_cut(sid)
        family_filter, user_subject = self.subjects.family_filter(sid), self.subjects.user(sub)
        found, up_to = await self._joined_last([family_filter, user_subject])
        family_msgs = [m for m in found if m[2] != user_subject]
        if not family_msgs or up_to is None:
            return await super().family_and_cut(sid)
        data, seq, subject, stamp = max(family_msgs, key=lambda m: m[1])
        cut = next((m[1] for m in found if m[2] == user_subject), None)
        try:
            head = RecordedEvent(decode_event(data), seq, subject, _parse_time(stamp))
            cut_event = next((decode_event(m[0]) for m in found if m[2] == user_subject), None)
        except (ValidationError, ValueError):
            return await super().family_and_cut(sid)
        if not isinstance(head.event, FamilyEvent) or (
            cut_event is not None and not isinstance(cut_event, UserSessionsRevoked)
        ):
            return await super().family_and_cut(sid)
        if isinstance(cut_event, UserSessionsRevoked):  # "sign out the others" keeps one session
            cut = effective_cut(cut, cut_event.keep_sid, sid)
        started, start_seq = await self._facts_for(sid, head)
        return Family(started=started, start_seq=start_seq, head=head.event, head_seq=seq), cut, up_to

    async def user_cut(self, sub: str, sid: str | None = None) -> int | None:
        """The base class's answer, read through a joined batch get with one replica (the
        post-commit check of every rotation asks this: one request serves a loop turn's worth)."""
        if self.settings.replicas > 1:
            return await super().user_cut(sub, sid)
        subject = self.subjects.user(sub)
        found, _ = await self._joined_last([subject])
        if not found:
            return None
        data, seq, _, _ = found[0]
        try:
            event = decode_event(data)
        except (ValidationError, ValueError):
            event = None
        if not isinstance(event, UserSessionsRevoked):  # not a ledger event: the careful path
            return await super().user_cut(sub, sid)
        return seq if sid is None else effective_cut(seq, event.keep_sid, sid)

    async def _joined_last(self, filters: list[str]) -> tuple[list[Found], int | None]:
        """``_multi_last(filters)``, joined with the other such reads of this event-loop turn
        into one batch direct get: one consistent view (under the stream's lock, with the
        sequence it is complete up to) serves them all, and each caller gets its own subjects.
        Under load, rotations read and check in one request per turn instead of one each."""
        loop = asyncio.get_running_loop()
        join = self._join
        if join is None or len(join.callers) >= JOIN_LIMIT:
            join = self._join = _Join()
            loop.call_soon(self._send_join, join)
        answer: asyncio.Future[tuple[_Found, int | None]] = loop.create_future()
        join.callers.append((filters, answer))
        found, up_to = await answer
        return found.pick(filters), up_to

    def _send_join(self, join: _Join) -> None:
        if self._join is join:
            self._join = None
        task = asyncio.create_task(self._answer_join(join))
        self._join_tasks.add(task)
        task.add_done_callback(self._join_tasks.discard)

    async def _answer_join(self, join: _Join) -> None:
        wanted = list(dict.fromkeys(f for filters, _ in join.callers for f in filters))
        try:
            found, up_to = await self._multi_last(wanted, limit=MAX_BATCH * len(join.callers))
        except asyncio.CancelledError:
            for _, answer in join.callers:
                answer.cancel()
            raise
        except Exception as err:  # every caller hears it
            for _, answer in join.callers:
                if not answer.done():
                    answer.set_exception(err)
            return
        result = (_Found(found), up_to)
        for _, answer in join.callers:
            if not answer.done():
                answer.set_result(result)

    async def _multi_last(
        self, filters: list[str], *, limit: int = MAX_BATCH
    ) -> tuple[list[Found], int | None]:
        """The last message of every subject matching ``filters`` and the view's upper bound."""
        if self._batch_inbox is None:
            self._batch_inbox = self.nc.new_inbox()
            await self.nc.subscribe(f"{self._batch_inbox}.*", cb=self._on_batch_msg)
        self._batch_ids += 1
        token = str(self._batch_ids)
        msgs: list[Msg] = []
        done: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._batches[token] = (msgs, done, limit)
        try:
            request = json.dumps({"multi_last": filters}).encode()
            await self.nc.publish(self._direct.rstrip("."), request, reply=f"{self._batch_inbox}.{token}")
            end = await asyncio.wait_for(done, self.timeout)
        except TimeoutError:
            raise Unavailable("event store did not answer") from None
        except nats.errors.ConnectionClosedError:
            raise Unavailable("not connected to NATS") from None
        finally:
            self._batches.pop(token, None)
        headers = end.headers or {}
        status = headers.get("Status")
        if status == "404":
            return [], None
        if status != "204":
            raise Unavailable(f"batch direct get failed: {headers.get('Description', status)}")
        found = [
            (m.data, int((m.headers or {})["Nats-Sequence"]), (m.headers or {})["Nats-Subject"],
             (m.headers or {}).get("Nats-Time-Stamp"))
            for m in msgs
        ]  # fmt: skip
        upto = headers.get("Nats-UpTo-Sequence")
        return found, int(upto) if upto else None

    async def _on_batch_msg(self, msg: Msg) -> None:
        entry = self._batches.get(msg.subject.rsplit(".", 1)[-1])
        if entry is None:
            return
        msgs, done, limit = entry
        if (msg.headers or {}).get("Status") is None and len(msgs) < limit:
            msgs.append(msg)
        elif not done.done():
            done.set_result(msg)

    async def _request(self, subject: str, payload: bytes) -> Msg:
        try:
            return await self.nc.request(subject, payload, timeout=self.timeout)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            raise Unavailable("event store did not answer") from None
        except nats.errors.ConnectionClosedError:
            raise Unavailable("not connected to NATS") from None

    async def last_seq(self) -> int:
        info = await self.js.stream_info(self.settings.stream)
        return int(info.state.last_seq)

    async def read(self, *, from_seq: int = 1, follow: bool = False) -> AsyncIterator[RecordedEvent]:
        """Events in stream order from ``from_seq``; stops at the current end unless ``follow``."""
        end = await self.last_seq()
        if not follow and end < from_seq:
            return
        sub = await self.js.subscribe(
            self.subjects.events,
            ordered_consumer=True,
            config=ordered_config(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=from_seq),
            stream=self.settings.stream,
        )
        try:
            async for msg in sub.messages:
                meta = msg.metadata
                try:
                    event = decode_event(msg.data)
                except (ValidationError, ValueError):  # reported and skipped, never fatal
                    log.error(
                        "stream seq %d on %s is not a ledger event; skipped",
                        meta.sequence.stream,
                        msg.subject,
                    )
                else:
                    yield RecordedEvent(event, meta.sequence.stream, msg.subject, meta.timestamp)
                if not follow and meta.sequence.stream >= end:
                    return
        finally:
            await sub.unsubscribe()


def _parse_time(value: str | None) -> datetime | None:
    """Parse JetStream's RFC 3339 timestamps (nanoseconds, ``Z``) to an aware datetime."""
    if not value:
        return None
    head, _, frac = value.rstrip("Z").partition(".")
    try:
        return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")
    except ValueError:
        return None
