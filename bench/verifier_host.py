"""``python -m bench.verifier_host URL N``: N edge verifiers in one process until stdin closes."""

from __future__ import annotations

import asyncio
import sys

from consumers.edge.verifier import EdgeVerifier
from ledger.config import Settings


async def main(url: str, count: int) -> None:
    settings = Settings(nats_url=url)
    verifiers = [await EdgeVerifier(settings, verifier_id=f"bench-edge-{i}").start() for i in range(count)]
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for v in verifiers:
        await v.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
