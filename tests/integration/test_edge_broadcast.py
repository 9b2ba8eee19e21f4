"""The broadcaster against a real server: a broadcaster that dies between publishing a
notice and acking its source loses nothing and duplicates nothing (redelivery +
Nats-Msg-Id); notices carry a TTL of the longest access-token life."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from consumers.broadcast import DURABLE, Broadcaster, recorded_from
from ledger.client import LedgerClient
from ledger.contracts.notices import decode_notice, notice_for, notice_lifetime
from ledger.contracts.subjects import NOTICES_STREAM
from ledger.streaming.connection import connect
from tests.support.edge import reason_of, verifier


async def test_crash_between_publish_and_ack_loses_and_duplicates_nothing(
    client: LedgerClient, settings: Any
) -> None:
    pair = await client.start_session("nina")
    revocation = await client.revoke_session(pair.sid)
    nc = await connect(settings.nats_url, "doomed-broadcaster")
    doomed = Broadcaster(nc, settings, ack_wait=1.0)
    await doomed.setup()
    sub = await doomed.js.pull_subscribe_bind(durable=DURABLE, stream=settings.stream)
    (msg,) = await sub.fetch(1, timeout=5)
    notice = notice_for(recorded_from(msg))
    assert notice is not None and notice.revoke_seq == revocation.seq
    await doomed.publish(notice)
    await nc.close()  # dies before the ack

    nc2 = await connect(settings.nats_url, "next-broadcaster")
    try:
        survivor = Broadcaster(nc2, settings, ack_wait=1.0)
        await survivor.setup()
        stop = asyncio.Event()
        task = asyncio.create_task(survivor.run(stop))
        deadline = time.monotonic() + 15
        while survivor.published == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert survivor.published == 1  # the source was redelivered and handled again
        await asyncio.sleep(0.3)
        info = await survivor.js.consumer_info(settings.stream, DURABLE)
        assert info.num_ack_pending == 0 and info.num_pending == 0  # acked this time
        stream = await survivor.js.stream_info(NOTICES_STREAM)
        assert stream.state.messages == 1  # the server deduplicated the second publish
        stored = await survivor.js.get_last_msg(NOTICES_STREAM, f"ledger.revoked.session.{pair.sid}")
        assert decode_notice(stored.data or b"").event_id == notice.event_id
        ttl = int((stored.headers or {})["Nats-TTL"])
        assert abs(ttl - notice_lifetime(settings.access_ttl).total_seconds()) <= 5
        assert (
            stream.config.allow_msg_ttl
            and stream.config.max_age == notice_lifetime(settings.access_ttl).total_seconds()
        )
        stop.set()
        await asyncio.wait_for(task, 10)
    finally:
        await nc2.close()
    async with verifier(settings) as late:
        assert reason_of(late, pair.access_token) == "session_revoked"
