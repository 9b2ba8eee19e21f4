"""The simulator serves the service's own command table (a copy of it had lost ``revoke``)."""

from __future__ import annotations

from datetime import UTC, datetime

from ledger.config import Settings
from session_ledger.sim.simulate import simulated_ledger


async def test_simulated_ledger_answers_every_command(settings: Settings) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    async with simulated_ledger(settings, lambda: start) as client:
        pair = await client.start_session("sim-user", client_id="web")
        rotated = await client.rotate(pair.refresh_token)
        revoked = await client.revoke_session(pair.sid)
        assert revoked.seq is not None and rotated.generation == 1
        assert (await client.revoke_user("sim-user")).seq is not None
        assert pair.access_expires_at.year == 2030  # the simulated clock, not the wall clock
