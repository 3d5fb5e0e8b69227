"""Smoke run of the lease traffic benchmark: tiny N, two worker processes sharing a
rebuild in a database of its own; the counts it reads add up as docs/scale.md says."""

from __future__ import annotations

import importlib
import json
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

# benchmarks/ is a directory of scripts, not an installed package: import it from the
# repository root whichever way pytest was started.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
lease_traffic = importlib.import_module("benchmarks.lease_traffic")


@pytest.mark.postgres
def test_two_workers_share_a_rebuild_and_the_lease_rows_add_up(
    tmp_path: Path, postgres_dsn: str
) -> None:
    database = f"lease_smoke_{uuid.uuid4().hex[:8]}"
    out = tmp_path / "lease.json"
    try:
        code = lease_traffic.main(
            [
                *("--events", "3000", "--workers", "2", "--partitions", "2"),
                *("--dsn", postgres_dsn, "--database", database, "--schema", "smoke"),
                *("--data-dir", str(tmp_path / "data"), "--out", str(out)),
            ]
        )
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
    assert code == 0
    [run] = json.loads(out.read_text(encoding="utf-8"))["runs"]
    assert run["claims"] == 2 and run["batches"] >= 2
    done = [index for indexes in run["partitions_by_worker"] for index in indexes]
    assert sorted(done) == [0, 1], "each partition once"
    # Claims, finishes, and per batch a progress report and the fence's tally.
    assert run["lease_row_updates"] == 2 + 2 + 2 * run["batches"] + run["renewals_estimated"]
    assert run["transactions"] > 0 and run["job_row_reads"] >= run["batches"]
    roles = run["connections_per_worker"]["by_role"]
    # pg_stat_activity is sampled every 0.2 s: a connection that lives less than that
    # in a 3,000-event run may be missed (the clean-clone CI once missed the source's),
    # so only the recovery pool, open from sign-in to exit, must be seen.
    assert "recovery" in roles, roles
