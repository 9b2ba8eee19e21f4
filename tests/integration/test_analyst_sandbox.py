"""Trust boundary, analyst role: ad-hoc SQL cannot reach the file system or reconfigure DuckDB.

Regression for the finding "analyst SQL reaches the file system": ``read_blob`` on the key
directory returned the master secret and ``read_text`` the private signing key, exit 0.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.service.keys import MASTER_FILE, load_or_create_master, load_or_create_signing_key
from projections.analytics.projection import AnalyticsDB
from session_ledger.cli import main


@pytest.fixture
def stack(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A data dir laid out like ``up``'s: the real key directory beside a real DuckDB file."""
    keys = tmp_path / "data" / "keys"
    secret = load_or_create_master(keys)
    load_or_create_signing_key(keys, "ES256", None)
    db = AnalyticsDB(tmp_path / "data" / "analytics.duckdb")
    db.close()
    return keys, db.path, secret


def attacks(keys: Path, tmp_path: Path) -> list[str]:
    pem = next(keys.glob("*.pem"))
    return [
        f"SELECT content FROM read_blob('{keys / MASTER_FILE}')",
        f"SELECT content FROM read_text('{pem}')",
        f"SELECT * FROM read_csv('{pem}', header=false)",
        f"SELECT * FROM glob('{keys}/*')",
        f"COPY (SELECT 1 AS x) TO '{tmp_path / 'out.csv'}'",
        f"ATTACH '{tmp_path / 'other.duckdb'}' AS other",
        f"EXPORT DATABASE '{tmp_path / 'export'}'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "SET memory_limit = '1GB'",
        "DROP TABLE events",
        "CREATE TABLE x (a INTEGER)",
    ]


def test_analyst_sql_cannot_read_the_key_directory(
    stack: tuple[Path, Path, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, db, secret = stack
    for sql in attacks(keys, tmp_path):
        assert main(["sql", sql, "--db", str(db), "--json"]) == 2, sql
        out, err = capsys.readouterr()
        assert "PRIVATE KEY" not in out + err and secret.hex() not in out + err, sql
    assert not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "other.duckdb").exists()
    assert not (tmp_path / "export").exists()


def test_analyst_sql_still_answers_reports(
    stack: tuple[Path, Path, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    _, db, _ = stack
    assert main(["sql", "SELECT count(*) AS n FROM events", "--db", str(db), "--json"]) == 0
    assert '"n": 0' in capsys.readouterr().out
    assert main(["report", "summary", "--db", str(db), "--json"]) == 0
