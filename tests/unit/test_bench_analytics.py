"""The analytics bench's growth figures, from the (events applied, seconds) marks of a run."""

from __future__ import annotations

import pytest

from bench.analytics import half_rates
from bench.analytics_ingest import window_rates


def _marks(rates: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Marks of batches of 20,000 events applied at the given events/s, one rate per stretch."""
    marks, n, t = [], 0, 0.0
    for events, rate in rates:
        for _ in range(events // 20_000):
            n, t = n + 20_000, t + 20_000 / rate
            marks.append((n, t))
    return marks


def test_halves_compare_the_two_halves_of_the_run() -> None:
    halves = half_rates(_marks([(500_000, 50_000.0), (500_000, 25_000.0)]))
    assert halves == pytest.approx((50_000.0, 25_000.0))


def test_a_checkpoint_in_one_window_moves_the_window_ratio_but_not_the_halves() -> None:
    """A 1 s pause (a WAL checkpoint) at 920k events lands in the last 10% before 1M only."""
    marks = _marks([(1_000_000, 50_000.0)])
    marks = [(n, t + (1.0 if n > 460_000 else 0.0) + (1.0 if n > 920_000 else 0.0)) for n, t in marks]
    windows = window_rates(marks, [100_000, 1_000_000])
    assert windows[1_000_000] / windows[100_000] < 0.75
    first, second = half_rates(marks) or (0.0, 0.0)
    assert second / first == pytest.approx(1.0, abs=0.01)


def test_too_few_marks_give_no_halves() -> None:
    assert half_rates([(20_000, 0.4)]) is None
