"""Executable docs: the README's Python example runs against a real ledger; CI runs its test line."""

from __future__ import annotations

import re
from pathlib import Path

from ledger.client import LedgerClient
from ledger.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


async def test_readme_python_example_runs(client: LedgerClient, settings: Settings, capsys) -> None:  # type: ignore[no-untyped-def]
    blocks = python_blocks()
    assert blocks, "README has a Python example"
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    await namespace["main"](settings.nats_url)  # type: ignore[operator]
    assert "revoked everywhere" in capsys.readouterr().out


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second() -> None:
    text = README.read_text()
    block = re.search(r"```bash\n(.*?)```", text, flags=re.S)
    assert block is not None and text.index(block.group(0)) < 200
    run, test = block.group(1).strip().splitlines()
    assert run.endswith("session-ledger up") and "pytest" in test
    ci = (README.parent / ".ci" / "run").read_text()
    assert "grep -m1 -E '^python3 -m venv \\.venv && .*pytest' README.md" in ci
