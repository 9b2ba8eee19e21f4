"""``python -m bench``: every figure beside the raw primitive it is built on, same run.

Options: --quick (shorter runs), --only SECTION[,SECTION], --out PATH (JSON results),
--ingest-events N (analytics growth curve length).
Sections "sweep" (rotation at 1/16/64 in flight, R1 and R3) and "oidc" (node-oidc-provider 9
side by side; needs `cd bench/peers/oidc && npm ci`, else skipped with a note) share one
interleaved run when both are chosen.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench import rotation
from bench.common import Report

SECTIONS = ["rotation", "cpu", "sweep", "oidc", "verify", "reach", "peer", "gateway", "analytics"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer/shorter repetitions")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections: {','.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=Path("bench/results/latest.json"))
    parser.add_argument(
        "--ingest-events",
        type=int,
        default=None,
        help="analytics: events ingested for the growth curve (default 1,000,000; --quick 200,000); "
        "10,000,000 needs ~6 GB of disk and tens of minutes",
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    reps, seconds = (3, 1.0) if args.quick else (5, 2.0)
    report = Report()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ledger-bench-data-") as tmp:
        data = Path(tmp)
        if "rotation" in only:
            asyncio.run(rotation.run(report, reps, seconds, data / "rotation"))
        if "cpu" in only:
            from bench import cpu

            asyncio.run(cpu.run(report, reps, 20 if args.quick else 40, data / "cpu"))
        if "sweep" in only or "oidc" in only:
            from bench import sweep

            sections = {"r3": "sweep" in only, "oidc": "oidc" in only}
            asyncio.run(sweep.run(report, reps, seconds, data / "sweep", **sections))
        if "verify" in only:
            from bench import verify

            verify.run(report, reps, seconds)
        if "reach" in only:
            from bench import reach

            asyncio.run(reach.run(report, reps, seconds, data / "reach"))
        if "peer" in only:
            from bench import peer

            asyncio.run(peer.run(report, reps, seconds, data / "peer"))
        if "gateway" in only:
            from bench import gateway

            asyncio.run(gateway.run(report, reps, seconds, data / "gateway"))
        if "analytics" in only:
            from bench import analytics

            asyncio.run(
                analytics.run(
                    report, quick=args.quick, data=data / "analytics", ingest_events=args.ingest_events
                )
            )
    print()
    print(report.table())
    report.write(args.out)
    print(f"\n{len(report.rows)} figures in {time.monotonic() - started:.0f}s; JSON: {args.out}")


if __name__ == "__main__":
    main()
