"""Test-only: run the analytics projection and die mid-batch (rows inserted, no COMMIT).

``python -m tests.support.crash_analytics AFTER NATS_URL DB BATCH``: exits 137 from
inside the transaction of batch AFTER + 1. This lived in the product CLI as a hidden
flag; a crash switch does not belong in what operators run.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from ledger.config import Settings
from projections.analytics.db import AnalyticsDB
from projections.analytics.projection import AnalyticsProjection


def crash_after(after: int) -> object:
    batches = 0

    def crash() -> None:
        nonlocal batches
        batches += 1
        if batches > after:
            os._exit(137)

    return crash


async def main(after: int, url: str, db_path: Path, batch: int) -> None:
    settings = Settings(nats_url=url)
    db = AnalyticsDB(db_path, grace_window_s=settings.grace_window.total_seconds())
    db.before_commit = crash_after(after)  # type: ignore[assignment]
    try:
        await AnalyticsProjection(settings, db, batch=batch).run(asyncio.Event())
    finally:
        db.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])))
