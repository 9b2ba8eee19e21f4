"""The streams the write side owns, created or brought to config by the ``ledger`` user only.

Edge verifiers and projections never create a stream (nats.conf denies it): they wait
until the service or the broadcaster has made them.
"""

from __future__ import annotations

import contextlib
import json

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BucketNotFoundError, NotFoundError

from ledger.config import Settings
from ledger.contracts.notices import notices_stream_config
from ledger.contracts.receipts import receipts_stream_config
from ledger.contracts.subjects import RATE_STREAM, Subjects, pointer_bucket, sessions_bucket
from ledger.streaming.store import EventStore, config_differs


async def ensure_stream(nc: NATS, config: StreamConfig, *, update: bool = True) -> None:
    """Create ``config``'s stream, or bring it to ``config`` when it differs (``update``)."""
    js = nc.jetstream()
    try:
        info = await js.stream_info(config.name or "")
    except NotFoundError:
        with contextlib.suppress(nats.js.errors.BadRequestError):  # created concurrently
            await js.add_stream(config)
        return
    if update and config_differs(info.config, config):
        await js.update_stream(config)


async def ensure_receipts_stream(nc: NATS, prefix: str = "ledger", replicas: int = 1) -> None:
    """Create the receipts stream if missing; never rewrite a config someone else chose."""
    await ensure_stream(nc, receipts_stream_config(prefix, replicas), update=False)


def kv_config(bucket: str, replicas: int = 1) -> KeyValueConfig:
    """The projections' buckets: the latest value per key only, on disk."""
    return KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE, replicas=replicas)


async def ensure_bucket(nc: NATS, bucket: str, replicas: int = 1) -> None:
    js = nc.jetstream()
    try:
        await js.key_value(bucket)
    except BucketNotFoundError:
        with contextlib.suppress(nats.js.errors.BadRequestError):  # created concurrently
            await js.create_key_value(kv_config(bucket, replicas))


RATE_MAX_AGE_S = 3600  # longer than any rate-limit window; counters of past windows then vanish


def rate_stream_request(prefix: str = "ledger", replicas: int = 1) -> dict[str, object]:
    """The gateways' rate counters: a NATS counter stream (``Nats-Incr``: one atomic round trip
    per count, shared by every gateway instance), in memory, latest value per subject only."""
    return {
        "name": RATE_STREAM, "subjects": [Subjects(prefix).rate], "storage": "memory",
        "num_replicas": replicas, "allow_msg_counter": True, "allow_direct": True,
        "max_msgs_per_subject": 1, "max_age": RATE_MAX_AGE_S * 1_000_000_000, "max_bytes": 64 * 1024 * 1024,
        "discard": "old",
    }  # fmt: skip


async def ensure_rate_stream(nc: NATS, prefix: str = "ledger", replicas: int = 1) -> None:
    """Created by the ledger, never by a gateway: a stream's subjects are its creator's choice.
    Raw API (nats-py's StreamConfig has no ``allow_msg_counter``); an existing stream is kept."""
    info = await nc.request(f"$JS.API.STREAM.INFO.{RATE_STREAM}", b"", timeout=5)
    if b'"config"' in info.data:
        return
    body = json.dumps(rate_stream_request(prefix, replicas)).encode()
    await nc.request(f"$JS.API.STREAM.CREATE.{RATE_STREAM}", body, timeout=5)


async def ensure_streams(nc: NATS, settings: Settings) -> None:
    """LEDGER (events), LEDGER_REVOCATIONS (notices), LEDGER_RECEIPTS (receipts) and the
    projections' three KV buckets: a projector may use them but never create a stream, whose
    subjects it could otherwise choose (``ledger.cmd.>`` would capture refresh tokens)."""
    await EventStore(nc, settings).ensure_stream()
    prefix, replicas = settings.subject_prefix, settings.replicas
    await ensure_stream(nc, notices_stream_config(settings.access_ttl, prefix, replicas))
    await ensure_receipts_stream(nc, prefix, replicas)
    for bucket in (pointer_bucket(settings.stream), *(sessions_bucket(settings.stream, n) for n in (1, 2))):
        await ensure_bucket(nc, bucket, replicas)
    await ensure_rate_stream(nc, prefix, replicas)
