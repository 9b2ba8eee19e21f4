"""Shared bench plumbing: repetitions, medians, ratios, the table and the JSON file."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ledger.config import Settings
from ledger.streaming.embedded import NatsServer, free_port
from session_ledger.cli.up import service_command


@dataclass
class Stat:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        return cls(statistics.median(values), min(values), max(values))


@dataclass
class Row:
    section: str
    name: str
    unit: str
    value: Stat
    baseline: str = ""
    base: Stat | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.base is None or self.base.median == 0:
            return None
        return self.value.median / self.base.median


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(_line(row), flush=True)
        return row

    def note(self, section: str, text: str) -> None:
        """A line under the table: a section skipped and why, or how to read its figures."""
        self.notes.append(f"{section}: {text}")
        print(f"{section:<10} note: {text}", flush=True)

    def table(self) -> str:
        head = _cols("section", "measure", "median", "[min..max]", "unit", "ratio", "target")
        notes = ["", *(f"note - {n}" for n in self.notes)] if self.notes else []
        return "\n".join([head, "-" * len(head), *(_line(r) for r in self.rows), *notes])

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = [{**asdict(r), "ratio": r.ratio} for r in self.rows]
        path.write_text(json.dumps(data, indent=2, default=str))


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _line(r: Row) -> str:
    spread = f"[{_fmt(r.value.low)}..{_fmt(r.value.high)}]"
    ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
    verdict = "" if r.met is None else ("MET" if r.met else "NOT MET")
    target = f"{r.target} {verdict}".strip()
    return _cols(r.section, r.name, _fmt(r.value.median), spread, r.unit, ratio, target)


def _cols(section: str, name: str, value: str, spread: str, unit: str, ratio: str, target: str) -> str:
    return f"{section:<10} {name:<44} {value:>10} {spread:>21} {unit:<8} {ratio:>7}  {target}"


async def repeat(fn: Callable[[], Awaitable[float]], reps: int) -> Stat:
    return Stat.of([await fn() for _ in range(reps)])


def repeat_sync(fn: Callable[[], float], reps: int) -> Stat:
    return Stat.of([fn() for _ in range(reps)])


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds the processes ``pids`` have used so far (Linux /proc), else None."""
    total = 0.0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return total


@contextmanager
def nats_server() -> Iterator[NatsServer]:
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        server = NatsServer(store_dir=Path(tmp) / "js", port=free_port()).start()
        try:
            yield server
        finally:
            server.stop()


@contextmanager
def service_processes(settings: Settings, count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Ledger service instances as separate processes, as they run in production.

    The command line carries the URL and the data dir; ``replicas`` goes by the environment
    (an R3 stream would otherwise be put back to R1 by the service's own stream check).
    """
    env = {**os.environ, "LEDGER_REPLICAS": str(settings.replicas)}
    procs = [
        subprocess.Popen(
            service_command(settings), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        for _ in range(count)
    ]
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)


async def wait_for_service(url: str, deadline_s: float = 30) -> None:
    from ledger.client import LedgerClient
    from ledger.domain.errors import Unavailable

    deadline = time.monotonic() + deadline_s
    async with await LedgerClient.connect(url) as client:
        while time.monotonic() < deadline:
            try:
                await client.start_session("bench-probe")
                return
            except Unavailable:
                await asyncio.sleep(0.1)
    raise RuntimeError("ledger service did not start")
