"""The concurrency sweep's discipline (bench/sweep.py), without a server: every request presents
its chain's newest token, every level rotates all chains evenly; the peer skips with a note."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench import oidc_peer, sweep
from bench.common import Report


class Chains:
    """A fake rotation server: refuses any token that is not its chain's newest."""

    def __init__(self) -> None:
        self.newest: dict[str, int] = {}

    async def seed(self, n: int) -> list[str]:
        self.newest = {f"c{i}": 0 for i in range(n)}
        return [f"c{i}:0" for i in range(n)]

    async def rotate(self, token: str) -> str:
        chain, gen = token.split(":")
        if self.newest[chain] != int(gen):
            raise AssertionError(f"{token} is not the newest of {chain}")
        await asyncio.sleep(0)
        self.newest[chain] += 1
        return f"{chain}:{self.newest[chain]}"


@pytest.mark.parametrize("level", sweep.LEVELS)
async def test_each_request_presents_its_chains_newest_token(level: int) -> None:
    chains = Chains()
    target = sweep.Target("fake", chains.seed, chains.rotate, {})
    sample = await sweep.measure(target, level, 0.2)
    assert sample.ops_s >= 0 and "bench" in sample.cpu_ms  # a stalled CI box may answer none
    generations = list(chains.newest.values())
    assert len(generations) == sweep.CHAINS
    assert max(generations) - min(generations) <= 1  # round robin: all chains, evenly


def test_the_peer_is_skipped_with_the_setup_command_when_not_installed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(oidc_peer, "PEER_DIR", tmp_path)
    reason = oidc_peer.skip_reason()
    assert reason is not None and ("npm ci" in reason or "node" in reason)
    report = Report()
    report.note("oidc", f"skipped: {reason}")
    assert reason in report.table()


def test_ratios_are_paired_per_repetition() -> None:
    async def never(_: object) -> list[str]:
        raise AssertionError

    a = sweep.Target("a", never, never, {})
    b = sweep.Target("b", never, never, {})
    a.samples[64] = [sweep.Sample(ops, 1.0, {}) for ops in (100.0, 200.0, 300.0)]
    b.samples[64] = [sweep.Sample(ops, 1.0, {}) for ops in (50.0, 400.0, 150.0)]
    ratio = sweep.paired(a, 64, b, 64)
    assert (ratio.median, ratio.low, ratio.high) == (2.0, 0.5, 2.0)
