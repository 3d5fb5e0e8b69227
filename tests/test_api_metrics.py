"""Issue #19 point 1 over HTTP: ``safereplay serve``'s ``/metrics``, on SQLite and PostgreSQL.

- a viewer scrapes the same figures ``safereplay metrics`` computes from the store,
  lag in seconds included (the server decodes with the application's key ring);
- without a token: 401; a principal without a grant: 403.
"""

from __future__ import annotations

import pytest
from api_fixtures import ApiContract, ApiWorld, postgres_settings, sqlite_settings
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from safereplay.domain import AutomationApp
from safereplay.domain.workload import record_workload
from safereplay.recovery.cli.app import app
from safereplay.recovery.operations.metrics import render_metrics

pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class MetricsApiContract(ApiContract):
    def test_a_viewer_scrapes_what_the_store_says(self, world: ApiWorld) -> None:
        admin = world.envs["admin"]
        runner = CliRunner()
        planned = runner.invoke(app, ["catch-up", "run_status", "-r", "a", "-w", "0"], env=admin)
        assert planned.exit_code == 0, planned.output
        worked = runner.invoke(app, ["worker", "--exit-when-idle"], env=admin)
        assert worked.exit_code == 0, worked.output
        with AutomationApp(world.settings) as application:
            record_workload(application, workflows=1, runs_per_workflow=2, seed=8)

        answer = world.get("viewer", "/metrics")
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/plain")
        served = scrape(answer.text)
        # vic views every projection, no reaction: the reactions' series are left out.
        assert served == scrape(render_metrics(world.context, reactions=False).decode())
        board = (("build", "1"), ("projection", "run_status"))
        assert served[("safereplay_projection_lag_seconds", board)] > 0
        assert served[("safereplay_projection_backlog_events", board)] > 0

    def test_a_scrape_needs_a_token_and_a_grant(self, world: ApiWorld) -> None:
        assert world.client.get("/metrics").status_code == 401
        assert world.get("stranger", "/metrics").status_code == 403


class TestSQLiteMetricsApi(MetricsApiContract):
    settings = staticmethod(sqlite_settings)


@pytest.mark.postgres
class TestPostgresMetricsApi(MetricsApiContract):
    settings = staticmethod(postgres_settings)
