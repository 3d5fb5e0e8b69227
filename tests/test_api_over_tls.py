"""The API contract tests, once more over TLS: each contract's SQLite world served by
``safereplay serve``'s uvicorn server over HTTPS, with a certificate the test makes
(``tls_fixtures``: a CA of its own and a certificate for 127.0.0.1), and a client
that verifies the server against that CA. The transport is the backend's business
only through the app, so one backend suffices here.

And the channel is what it says: a client that does not trust the test's CA is
refused, and plain HTTP on the same port gets no API answer.
"""

from __future__ import annotations

import ssl

import httpx
import pytest
from api_fixtures import ApiContract, ApiWorld, sqlite_settings
from test_api_builds import BuildsApiContract
from test_api_every_route import EveryRouteContract
from test_api_flags import FlagsApiContract
from test_api_jobs import JobsApiContract
from test_api_metrics import MetricsApiContract
from test_api_parked_audit import ParkedAuditApiContract
from test_api_reactions import ReactionsApiContract
from test_api_reactions import receiver as receiver  # the contract's fixture
from test_api_steps import StepApiContract
from test_api_templates import TemplatesApiContract
from test_conflicts_surface import ConflictsSurfaceContract
from test_slo import SLOContract


class TestChannelOverTLS(ApiContract):
    settings = staticmethod(sqlite_settings)
    over_tls = True

    def test_the_server_speaks_https_with_the_test_certificate(self, world: ApiWorld) -> None:
        url = str(world.client.base_url)
        assert url.startswith("https://127.0.0.1:")
        me = world.get("admin", "/api/me")
        assert me.status_code == 200 and me.json()["principal"] == "ada"
        # A client trusting the system's CAs only refuses the test's certificate.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(url + "/openapi.json", verify=ssl.create_default_context(), timeout=60)
        # Plain HTTP on the TLS port is no way in.
        plain = "http://" + url.removeprefix("https://")
        try:
            answer = httpx.get(plain + "/api/me", headers=world.headers("admin"), timeout=60)
        except httpx.TransportError:
            return
        assert answer.status_code == 400 and "principal" not in answer.text


class TestJobsApiOverTLS(JobsApiContract):
    settings = staticmethod(sqlite_settings)
    over_tls = True


class TestBuildsApiOverTLS(BuildsApiContract):
    settings = staticmethod(sqlite_settings)
    over_tls = True


class TestEveryRouteOverTLS(EveryRouteContract):
    settings = staticmethod(sqlite_settings)
    over_tls = True


class TestMetricsApiOverTLS(MetricsApiContract):
    settings = staticmethod(sqlite_settings)
    over_tls = True


class TestParkedAuditApiOverTLS(ParkedAuditApiContract):
    settings = staticmethod(sqlite_settings)
    over_tls = True


class TestReactionsApiOverTLS(ReactionsApiContract):
    settings = staticmethod(sqlite_settings)
    over_tls = True


class TestTemplatesApiOverTLS(TemplatesApiContract):
    settings = staticmethod(sqlite_settings)
    over_tls = True


class TestFlagsApiOverTLS(FlagsApiContract):
    settings = staticmethod(sqlite_settings)
    over_tls = True


class TestStepApiOverTLS(StepApiContract):
    settings = staticmethod(sqlite_settings)
    over_tls = True


class TestConflictsSurfaceOverTLS(ConflictsSurfaceContract):
    settings = staticmethod(sqlite_settings)
    over_tls = True


class TestSLOOverTLS(SLOContract):
    settings = staticmethod(sqlite_settings)
    over_tls = True
